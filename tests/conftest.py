"""Shared pytest set-up: run from the repository root so `import model`, `import dataloader` work."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Split the CPU into 2 logical devices before TensorFlow initialises, so that MirroredStrategy's
# multi-device path (the GPU path) is tested on CPU (shared/DESIGN.md section 6). Tests that do not
# ask for a strategy run on the first device as usual.
import tensorflow as tf  # pylint: disable=g-import-not-at-top

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
