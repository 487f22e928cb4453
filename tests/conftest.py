"""Shared pytest set-up. The repository root and tests/ are on the import path through
pyproject.toml's `pythonpath`, so `import model` and `import data_utils` work from any folder."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# In this process TensorFlow keeps its own choice of CPU kernels, so that the seeded runs of the
# in-process tests follow the trajectories their thresholds were set on; the programs the tests start
# (train.py, scripts.*) run with the project's default, oneDNN's kernels (tools/tf_env.py).

# Split the CPU into 2 logical devices before TensorFlow initialises, so that MirroredStrategy's
# multi-device path (the GPU path) is tested on CPU. Tests that do not ask for a strategy run on the
# first device as usual.
import tensorflow as tf  # pylint: disable=g-import-not-at-top

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(scope="session")
def two_replicas():
  """One MirroredStrategy over the 2 logical CPUs for the whole test process: several strategies
  in one process would reuse collective instance keys, which TensorFlow rejects."""
  devices = [d.name for d in tf.config.list_logical_devices("CPU")[:2]]
  assert len(devices) == 2
  return tf.distribute.MirroredStrategy(devices)

