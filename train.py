r"""Trains and evaluates SqueezeNext: `python train.py --model_dir DIR`.

Without --train_file_pattern it trains on the built-in demo data (scikit-learn's handwritten digits,
written as JPEG class folders and converted to TFRecords on first use), with demo defaults for the image
size, class count and schedule; any flag overrides them. With ImageNet records:

  python train.py --model_dir runs/sqnxt23 --configuration v_1_0_SqNxt_23 \
      --train_file_pattern 'data/imagenet/train-*' --validation_file_pattern 'data/imagenet/validation-*' \
      --batch_size 1024 --num_gpus 8

Evaluation only (one exact pass through the newest checkpoint, with its params.json; nothing is
trained or checkpointed), e.g. of weights imported with scripts/import_weights.py:

  python train.py --model_dir runs/sqnxt23_w1 --mode evaluate \
      --validation_file_pattern 'data/imagenet/validation-*'

This is the program: it reads the flags, resolves the params once (tools/recipe/params.py; logged and saved
in model_dir/params.json), and hands them to the library (tools/recipe/experiment.py, estimator/, model.py,
dataloader.py). Flag names are the params' names.
"""

import contextlib
import json
import os
import signal
import socket
import sys


def _interrupted(signum, frame):
  """Ctrl-C before training starts: leave quietly (status 130); `finally` blocks still clean up."""
  del signum, frame
  print("interrupted", file=sys.stderr, flush=True)
  raise SystemExit(130)


if __name__ == "__main__":  # before the slow imports, so that an early Ctrl-C is quiet too
  signal.signal(signal.SIGINT, _interrupted)

# Before TensorFlow: the project's TensorFlow defaults (oneDNN CPU kernels; tools/cli/tf_env.py).
from tools.cli import tf_env  # pylint: disable=unused-import,wrong-import-position,g-bad-import-order
from absl import flags  # pylint: disable=wrong-import-position
from absl import logging  # pylint: disable=wrong-import-position
import keras  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

import dataloader  # pylint: disable=wrong-import-position
import estimator as estimator_lib
from tools.cli import flags as cli
from tools.recipe import data_facts
from tools.datasets import demo_data
from tools.recipe import experiment
from tools.recipe import fine_tune
from tools.recipe import params as params_lib
from tools.common import acquire_lock
from tools.common import LockHeld
from tools.common import one_line
from tools.common import release_lock
from tools.common import UserError

FLAGS = flags.FLAGS

def define_flags():
  """Defines the CLI flags (once; importing train.py defines none, so tests and notebooks can
  import it next to other programs and call `define_flags()` then `main`)."""
  if "model_dir" in FLAGS:
    return
  # The parameters' flags, from their declarations (tools/common.param in the params sections).
  cli.define_param_flags(params_lib.flag_fields(), params_lib.flag_help)
  # The program's own flags.
  flags.DEFINE_string("model_dir", None, "Folder for checkpoints, TensorBoard logs and params.json.")
  flags.DEFINE_string("demo_data_dir", os.path.join(os.path.expanduser("~"), ".cache", "squeezenext",
                                                    "demo_data"),
                      "Where the demo data is made on first use and cached.")
  flags.DEFINE_boolean("allow_params_change", False,
                       "Resume a model_dir although network, image size, batch, schedule, classes or "
                       "preprocessing differ from its params.json.")
  flags.DEFINE_enum("mode", "train", ["train", "evaluate"],
                    "train: train, evaluating on the way (resumes from --model_dir). evaluate: one "
                    "exact pass of --validation_file_pattern (default: params.json's) through "
                    "--model_dir's newest checkpoint with its params.json; writes no checkpoint.")
  flags.DEFINE_string("fine_tune_ckpt", None,
                      "Warm-start from this checkpoint (prefix or directory) when model_dir has none; "
                      "--configuration, --image_size and --preprocessing default to its params.json's.")
  flags.DEFINE_string("fine_tune_exclude", None,
                      "Regex of variable names not to warm-start (the classifier is skipped anyway "
                      "when the class count differs).")
  flags.DEFINE_integer("num_gpus", 0, "GPUs for MirroredStrategy (0 or 1: one device).")
  flags.DEFINE_integer("num_cpu_devices", 0,
                       "Split the CPU into N logical devices for MirroredStrategy (tests the "
                       "multi-device path without GPUs).")
  flags.DEFINE_boolean("deterministic", False,
                       "Reproducible training: seeds (--seed, default 0), deterministic ops and "
                       "input order. A run killed and restarted with "
                       "--checkpoint_input_pipeline ends with the weights of an uninterrupted one.")
  flags.DEFINE_integer("collective_timeout_secs", 300,
                       "Multi-worker: a collective operation waiting longer than this for another "
                       "worker fails the run instead of hanging (0: no limit).")


# Other numeric flags and their checks: (test, what is expected).
PROGRAM_CHECKS = {"num_gpus": (lambda v: v >= 0, "a number >= 0"),
                  "num_cpu_devices": (lambda v: v >= 0, "a number >= 0"),
                  "collective_timeout_secs": (lambda v: v >= 0, "a number of seconds >= 0")}
# Bytes of host memory one image of side S needs in a training step, per pixel of the input:
# activations, their gradients and BatchNorm's saved inputs (measured order of magnitude for
# 1.0-SqNxt-23 at 227: about 40x the float32 input). Refuses sizes that cannot fit at all.
TRAIN_BYTES_PER_INPUT_BYTE = 40


def user_values():
  """{param: value} of the parameter flags the user set, checked (UserError names the flag)."""
  values = {f.name: FLAGS[f.name].value for f in params_lib.flag_fields()
            if FLAGS[f.name].value is not None}
  if FLAGS.deterministic:  # the input pipeline's order too, and a seed for everything
    values.update(deterministic_training=True, seed=values.get("seed", 0))
  for name, (test, expected) in PROGRAM_CHECKS.items():
    if not test(FLAGS[name].value):
      raise UserError(f"--{name}={FLAGS[name].value}: expected {expected}")
  params_lib.check_values(values)
  if values.get("data_service_address"):
    check_data_service(values)
  return values


def check_data_service(values):
  """UserError unless a dispatcher answers at --data_service_address and the run can use it."""
  address = values["data_service_address"]
  if values.get("checkpoint_input_pipeline") or values.get("deterministic_training"):
    raise UserError(f"--data_service_address={address}: the service's workers shuffle on their own; "
                    "it cannot be combined with --checkpoint_input_pipeline or --deterministic")
  host, _, port = address.removeprefix("grpc://").rpartition(":")
  try:
    socket.create_connection((host or "localhost", int(port)), timeout=10).close()
  except (OSError, ValueError) as e:
    raise UserError(f"--data_service_address={address}: no dispatcher answers there "
                    f"({one_line(e, 100)}); expected grpc://HOST:PORT of "
                    "`python -m scripts.data_service dispatcher`") from e


def data_sources(values):
  """(data, demo): the run's file patterns, example count, classes and label map
  (tools/recipe/data_facts.py); demo is True for the built-in demo data (made on first use and cached)."""
  if FLAGS.train_file_pattern:
    return data_facts.resolve_data(FLAGS.train_file_pattern, FLAGS.validation_file_pattern, values,
                                   FLAGS.model_dir), False
  logging.info("No --train_file_pattern: using the built-in demo data (handwritten digits) in %s.",
               FLAGS.demo_data_dir)
  try:
    demo = demo_data.make_demo_data(FLAGS.demo_data_dir)
  except UserError as e:
    raise UserError(str(e).replace("output_dir=", "--demo_data_dir=", 1)) from e
  data = dict(train_file_pattern=demo.train_pattern,
              validation_file_pattern=FLAGS.validation_file_pattern or demo.validation_pattern,
              num_examples_per_epoch=demo.num_train, label_map=demo.label_map)
  data_facts.check_inputs(data)
  return data, True


# Gradients are all-reduced in packs of up to this many bytes: one collective launch for SqueezeNext's
# hundreds of small tensors instead of one each (the value TensorFlow's CommunicationOptions
# documentation gives as its example).
ALL_REDUCE_BYTES_PER_PACK = 50 * 2**20


def make_strategy(num_gpus, num_cpu_devices, collective_timeout_secs=0):
  """The distribution strategy: TF_CONFIG -> MultiWorkerMirrored; several GPUs (or logical CPU
  devices) -> Mirrored (NCCL all-reduce on GPUs); else the default one-device strategy.

  Raises UserError for a bad TF_CONFIG or more GPUs than are visible.
  """
  if "TF_CONFIG" in os.environ:
    address = check_tf_config(os.environ["TF_CONFIG"])
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL
                      if num_gpus else tf.distribute.experimental.CommunicationImplementation.AUTO)
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation, bytes_per_pack=ALL_REDUCE_BYTES_PER_PACK,
        timeout_seconds=collective_timeout_secs or None)
    try:
      return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except tf.errors.UnknownError as e:  # this task's server cannot start, e.g. its port is taken
      raise UserError(f"TF_CONFIG: this task cannot serve at {address} "
                      f"({one_line(e, 100)}); is the port in use by another process?") from e
  if num_cpu_devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) < num_cpu_devices:  # once
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(num_cpu_devices)])
  gpus = tf.config.list_physical_devices("GPU")
  if num_gpus > len(gpus):
    raise UserError(f"--num_gpus={num_gpus}: only {len(gpus)} GPU(s) visible")
  if num_gpus > 1:
    return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(num_gpus)])
  return tf.distribute.get_strategy()


def check_tf_config(text):
  """This task's HOST:PORT in TF_CONFIG (`text`); UserError unless it is JSON with a cluster of
  workers and a task inside it."""
  try:
    config = json.loads(text)
    cluster, task = config["cluster"], config["task"]
    members = cluster[task["type"]]
    index = int(task["index"])
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"TF_CONFIG={text[:200]!r}: expected JSON like {{\"cluster\": {{\"worker\": "
                    f"[\"host1:port\", ...]}}, \"task\": {{\"type\": \"worker\", \"index\": 0}}}} "
                    f"({type(e).__name__}: {e})") from e
  if not 0 <= index < len(members):
    raise UserError(f"TF_CONFIG: task index {index} is outside the {len(members)} "
                    f"{task['type']}(s) of the cluster")
  return members[index]


def check_scale(params, strategy):
  """Checks the batch over the replicas and its memory, and logs the scale of the run."""
  replicas = strategy.num_replicas_in_sync
  batch = params.batch_size
  if batch % replicas:
    raise UserError(f"--batch_size={batch} does not divide over {replicas} replicas; use a "
                    f"multiple of {replicas}")
  size = params.model.image_size
  needed = batch // replicas * size * size * 3 * 4 * TRAIN_BYTES_PER_INPUT_BYTE
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if not tf.config.list_physical_devices("GPU") and needed > memory:
    raise UserError(f"--image_size={size}: a training step at batch {batch // replicas} per "
                    f"replica needs about {needed / 2**30:.0f} GiB, this machine has "
                    f"{memory / 2**30:.0f} GiB; use a smaller --image_size or --batch_size")
  steps_per_epoch = params.run.num_examples_per_epoch / batch
  logging.info("Scale: %d replica(s), global batch %d, per-replica batch %d, %.1f steps per epoch, "
               "%d steps in all (%.2f epochs).", replicas, batch, batch // replicas,
               steps_per_epoch, params.recipe.max_steps, params.recipe.max_steps / steps_per_epoch)


def check_model_dir(model_dir):
  """Fails early when a local model_dir cannot be created or written (a file, no permission)."""
  if "://" in model_dir:  # a remote file system: its own errors tell
    return
  existing = os.path.abspath(model_dir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"--model_dir={model_dir}: {existing} is not a writable folder")


# Errors that mean another worker of a multi-worker run is gone (killed, preempted, unreachable).
LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                      tf.errors.AbortedError, tf.errors.CancelledError)


def run_training(est, params):
  """experiment.run with the run's failures as one-line errors; returns the final results."""
  try:
    with dataloader.user_errors_from_data():  # a bad record: one line naming the file
      return experiment.run(est, params)
  except estimator_lib.NonFiniteLossError as e:
    raise UserError(f"training stopped: {e}") from e
  except tf.errors.ResourceExhaustedError as e:
    raise UserError(f"out of memory ({one_line(e, 200)}); use a smaller --batch_size or "
                    f"--image_size") from e
  except LOST_WORKER_ERRORS as e:
    if "TF_CONFIG" not in os.environ:
      raise
    raise UserError(
        f"lost contact with another worker ({type(e).__name__}: {one_line(e, 160)}); restart all "
        f"workers to resume from the last checkpoint ({est.latest_checkpoint()})") from e


def lock_model_dir(model_dir, chief, held, existing_only=False):
  """Takes the chief's lock on model_dir for the life of the run; returns True if a lock is held.

  Nothing is locked on other workers or remote folders. `held`, a contextlib.ExitStack, lets the
  lock go when it closes. With `existing_only`, only a lock file that an earlier run left is taken
  (nothing is created): a second process on a folder in use is refused before it builds anything.
  """
  path = os.path.join(model_dir, ".lock")
  if not chief or "://" in model_dir or (existing_only and not os.path.exists(path)):
    return False
  try:
    held.callback(release_lock, acquire_lock(path))
  except LockHeld as e:
    raise UserError(f"--model_dir={model_dir} is in use by {e}; wait for it to end or use "
                    f"another --model_dir") from e
  return True


def start_run(est, params, held, locked):
  """Creates model_dir, takes its lock unless `locked`, and saves params.json (the chief).

  A folder that cannot be written (a full disk, a quota) is a one-line error.
  """
  try:
    tf.io.gfile.makedirs(FLAGS.model_dir)
    if not locked:
      lock_model_dir(FLAGS.model_dir, est.is_chief, held)
    if est.is_chief:  # an earlier start that saved no checkpoint trained nothing to keep apart
      params_lib.save_params(params, FLAGS.model_dir, sys.argv,
                             FLAGS.allow_params_change or est.latest_checkpoint() is None)
  except (OSError, tf.errors.OpError) as e:
    raise UserError(f"--model_dir={FLAGS.model_dir}: cannot write there ({one_line(e, 200)})") from e


def report(est, results):
  """Prints the final line: the evaluation, or how the run stopped; logs the skipped records."""
  skipped = dataloader.SKIPPED_RECORDS
  if skipped.count:
    logging.warning("Skipped %d record(s) whose image could not be decoded: %s", skipped.count,
                    ", ".join(f"{name}: {n}" for name, n in sorted(skipped.by_file.items())))
  if est.stopped_by_signal:
    print(f"Stopped at step {est.global_step} by a signal; checkpoint written; run the same "
          f"command to resume.", flush=True)
  elif results:
    print(f"Final evaluation at step {results['global_step']}: top-1 {results['top_1_accuracy']:.4f}  "
          f"top-5 {results['top_5_accuracy']:.4f}  loss {results['loss']:.4f}  "
          f"on {results['num_examples']} examples", flush=True)
  else:
    print(f"Trained to step {est.global_step}; no evaluation (no --validation_file_pattern).",
          flush=True)


def evaluate_only(values):
  """--mode evaluate: evaluates --model_dir's newest checkpoint and prints the result line."""
  if FLAGS.fine_tune_ckpt:
    raise UserError("--fine_tune_ckpt warm-starts a training; --mode evaluate reads --model_dir's "
                    "own checkpoint")
  params = data_facts.evaluation_params(FLAGS.model_dir, FLAGS.validation_file_pattern, values)
  strategy = make_strategy(FLAGS.num_gpus, FLAGS.num_cpu_devices, FLAGS.collective_timeout_secs)
  est = experiment.build_estimator(params, FLAGS.model_dir, strategy)
  with dataloader.user_errors_from_data():  # a bad record: one line naming the file
    results = experiment.evaluate(est, params)
  print(f"Evaluation at step {results['global_step']} ({params.input.preprocessing} "
        f"preprocessing, {params.model.image_size} px): top-1 {results['top_1_accuracy']:.4f}  "
        f"top-5 {results['top_5_accuracy']:.4f}  loss {results['loss']:.4f}  on "
        f"{results['num_examples']} examples", flush=True)


def main(argv):
  if len(argv) > 1:
    extra = argv[1:]
    shown = " ".join(extra[:2]) + (f" ... ({len(extra)} in all)" if len(extra) > 2 else "")
    raise UserError(f"unexpected arguments {shown}; all options are --flags, and a file pattern "
                    "is quoted so that the shell does not expand it (--train_file_pattern "
                    "'data/train-*')")
  if not FLAGS.model_dir:
    raise UserError("--model_dir is required: the folder for checkpoints, logs and params.json")
  values = user_values()
  if FLAGS.mode == "evaluate":
    return evaluate_only(values)
  if FLAGS.fine_tune_ckpt:  # the source's network and input unless set
    values = {**fine_tune.source_values(FLAGS.fine_tune_ckpt, values), **values}
  check_model_dir(FLAGS.model_dir)
  strategy = make_strategy(FLAGS.num_gpus, FLAGS.num_cpu_devices, FLAGS.collective_timeout_secs)
  with contextlib.ExitStack() as held:  # the model_dir lock, let go at the end
    # A folder an earlier run used: a second process is refused before anything is built.
    locked = lock_model_dir(FLAGS.model_dir, estimator_lib.is_chief(strategy), held,
                            existing_only=True)
    if "dtype" not in values:
      values["dtype"] = data_facts.default_dtype(FLAGS.model_dir)
    params = params_lib.resolve_params(values, *data_sources(values))
    if params.input.seed is not None:  # initialisation, and the input pipeline through params
      keras.utils.set_random_seed(params.input.seed)
    if FLAGS.deterministic:
      tf.config.experimental.enable_op_determinism()
    check_scale(params, strategy)
    init_fn = None
    if FLAGS.fine_tune_ckpt:
      init_fn = fine_tune.make_init_fn(FLAGS.fine_tune_ckpt, FLAGS.fine_tune_exclude)
    logging.info("Params:\n%s", json.dumps(params.to_dict(), indent=2, sort_keys=True))
    logging.info(params_lib.describe_schedule(params))
    est = experiment.build_estimator(params, FLAGS.model_dir, strategy, init_fn)
    est.restore()  # from model_dir's newest checkpoint, or warm-started: may fail
    logging.info("Starting at global step %d.", est.global_step)
    start_run(est, params, held, locked)  # only now, so that a user error leaves model_dir untouched
    report(est, run_training(est, params))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
