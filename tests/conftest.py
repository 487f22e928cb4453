"""Shared pytest set-up. The repository root and tests/ are on the import path through
pyproject.toml's `pythonpath`, so `import model` and `import data_utils` work from any folder."""
import gc
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# In this process TensorFlow keeps its own choice of CPU kernels, so that the seeded runs of the
# in-process tests follow the trajectories their thresholds were set on; the programs the tests start
# (train.py, scripts.*) run with the project's default, oneDNN's kernels (tools/cli/tf_env.py).

# The slowest tests (or xdist groups), slowest first: `-n 2` hands them out before the others, so
# that the short tests fill the end of the run instead of a long one running alone (xdist's
# loadgroup scheduling keeps the collection order when --no-loadscope-reorder is given, see
# pyproject.toml). A test's name is matched by its start, without its "@group" suffix.
SLOWEST_FIRST = (
    "test_reliability.py::test_killed_and_preempted_runs_end_with_the_uninterrupted_weights",
    "test_reliability.py::test_a_dead_worker_stops_the_other_and_both_resume_in_lock_step",
    "test_predict_export.py::",  # one xdist group: a trained model, its export and predict runs
    "test_import_weights.py::test_fine_tuning_an_imported_model",  # its own xdist group
    "test_import_weights.py::",  # one xdist group: the imported fixture, evaluate, export
    "test_user_faults.py::",  # one xdist group (most of it): the process of train.py's cases
    "test_precise_bn.py::test_a_short_run_from_scratch_on_photos_evaluates_as_it_trains",
    "test_train.py::test_two_replicas_match_one_device",
    "test_data_service.py::",  # one xdist group: the dispatcher and workers
    "test_train.py::test_train_resume_summaries_and_exact_evaluation",  # group resumed_run
    "test_train.py::test_fine_tune_restores_everything_but_the_classifier",
    "test_model.py::",  # one xdist group: the official networks
    "test_benchmark.py::test_train_and_inference_run_end_to_end",
    "test_benchmark.py::test_complexity_matches_the_official_figures",
    "test_precise_bn.py::test_one_and_two_replicas_give_the_same_statistics",
)


def _rank(item):
  name = item.nodeid.split("tests/", 1)[-1]
  return next((i for i, prefix in enumerate(SLOWEST_FIRST) if name.startswith(prefix)),
              len(SLOWEST_FIRST))


def pytest_collection_modifyitems(items):
  items.sort(key=_rank)  # stable: the collection order within a rank


def _runs_tests(config):
  """False for the xdist controller, which hands the tests to its workers and runs none."""
  return hasattr(config, "workerinput") or not config.getoption("numprocesses", default=None)


def pytest_configure(config):
  # Split the CPU into 2 logical devices before TensorFlow initialises, so that MirroredStrategy's
  # multi-device path (the GPU path) is tested on CPU. Tests that do not ask for a strategy run on
  # the first device as usual. Not in the xdist controller: it would import TensorFlow (seconds)
  # before it starts the workers.
  if _runs_tests(config):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(scope="session")
def two_replicas():
  """One MirroredStrategy over the 2 logical CPUs for the whole test process: several strategies
  in one process would reuse collective instance keys, which TensorFlow rejects."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  devices = [d.name for d in tf.config.list_logical_devices("CPU")[:2]]
  assert len(devices) == 2
  return tf.distribute.MirroredStrategy(devices)


@pytest.fixture(autouse=True)
def _collect_input_pipelines():
  """Frees each test's leftover tf.data iterators while its output is still captured.

  A pipeline that raised stays referenced by the exception's traceback (through the iterator's own
  frame) until the garbage collector breaks the cycle; its prefetching threads keep decoding until
  then. A test that feeds undecodable JPEGs would otherwise let libjpeg's messages ("Unsupported
  marker type ...") reach the suite's output after the test, outside pytest's capture.
  """
  yield
  gc.collect()
