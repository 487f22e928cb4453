"""Shared pytest set-up. The repository root and tests/ are on the import path through
pyproject.toml's `pythonpath`, so `import model` and `import data_utils` work from any folder."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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


# The longest tests first (measured: 50-110 s each on 2 cores), so that `-n 2`'s two workers end
# together instead of one running a long test alone at the end. The rest keep their order.
_LONGEST_FIRST = (
    "test_precise_bn.py::test_a_short_run_from_scratch_on_photos_evaluates_as_it_trains",
    "test_reliability.py::test_a_dead_worker_stops_the_other_and_both_resume_in_lock_step",
    "test_reliability.py::test_killed_three_times_ends_with_the_uninterrupted_weights",
    "test_reliability.py::test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one",
    "test_train.py::test_two_replicas_match_one_device",
    "test_bad_input.py::test_disk_full_while_saving_keeps_the_previous_checkpoint",
    "test_reliability.py::test_sigterm_writes_a_checkpoint_and_the_next_start_resumes",
)


def pytest_collection_modifyitems(items):
  """Puts `_LONGEST_FIRST` at the front of the run, in that order."""
  def rank(item):
    return next((i for i, name in enumerate(_LONGEST_FIRST) if item.nodeid.endswith(name)),
                len(_LONGEST_FIRST))
  items.sort(key=rank)
