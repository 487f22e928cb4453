r"""Trains and evaluates SqueezeNext: `python train.py --model_dir DIR`.

Without --train_file_pattern it trains on the built-in demo data (scikit-learn's handwritten digits,
written as JPEG class folders and converted to TFRecords on first use), with demo defaults for the image
size, class count and schedule; any flag overrides them. With ImageNet records:

  python train.py --model_dir runs/sqnxt23 --configuration v_1_0_SqNxt_23 \
      --train_file_pattern 'data/imagenet/train-*' --validation_file_pattern 'data/imagenet/validation-*' \
      --batch_size 1024 --num_gpus 8

This is the program: it reads the flags, resolves the params once (tools/params.py; logged and saved
in model_dir/params.json), and hands them to the library (tools/experiment.py, estimator/, model.py,
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

# Before TensorFlow: the project's TensorFlow defaults (oneDNN CPU kernels; tools/tf_env.py).
from tools import tf_env  # pylint: disable=unused-import,wrong-import-position,g-bad-import-order
from absl import flags  # pylint: disable=wrong-import-position
from absl import logging  # pylint: disable=wrong-import-position
import keras  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

import dataloader  # pylint: disable=wrong-import-position
import estimator as estimator_lib
import model
from tools import cli
from tools import demo_data
from tools import experiment
from tools import fine_tune
from tools import params as params_lib
from tools import records
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
  flags.DEFINE_string("model_dir", None, "Folder for checkpoints, TensorBoard logs and params.json.")
  flags.DEFINE_string("configuration", None,
                      f"Network, one of: {', '.join(model.CONFIGURATIONS)}. Default v_1_0_SqNxt_23.")
  flags.DEFINE_string("train_file_pattern", None,
                      "Glob of training TFRecords (e.g. 'data/train-*'). Unset: the built-in demo data.")
  flags.DEFINE_string("validation_file_pattern", None, "Glob of validation TFRecords.")
  flags.DEFINE_string("demo_data_dir", os.path.join(os.path.expanduser("~"), ".cache", "squeezenext",
                                                    "demo_data"),
                      "Where the demo data is made on first use and cached.")
  flags.DEFINE_integer("batch_size", None,
                       "Global batch (summed over replicas). Default 256, halved while an epoch has "
                       "fewer than 8 steps (at least 8); demo 64.")
  flags.DEFINE_float("num_epochs", None, "Epochs to train; converted to steps once. Default 120.")
  flags.DEFINE_integer("max_steps", None, "Steps to train (overrides --num_epochs).")
  flags.DEFINE_integer("num_examples_per_epoch", None,
                       "Training examples per epoch. Default: counted from the records (the builder's "
                       "manifest.json, else one counting pass).")
  flags.DEFINE_integer("image_size", None, "Input side in pixels. Default 227 (demo 64).")
  flags.DEFINE_integer("num_classes", None,
                       "Number of classes. Default: the lines of labels.txt beside the training "
                       "records, else the largest label in the records (a pass over them).")
  flags.DEFINE_string("image_key", None,
                      "The records' key of the encoded image. Default: image/encoded (ImageNet "
                      "schema), or image (TensorFlow Datasets) when the first record has that.")
  flags.DEFINE_string("label_key", None,
                      "The records' key of the int64 label. Default: image/class/label, or label.")
  flags.DEFINE_integer("label_offset", None,
                       "The record label of class 0. Default 1 (ImageNet's labels 1..1000), or 0 "
                       "when --num_classes is unset and some record has label 0.")
  flags.DEFINE_enum("preprocessing", None, dataloader.PREPROCESSINGS, "Preprocessing. Default caffe.")
  flags.DEFINE_float("base_learning_rate", None,
                     "Learning rate after warm-up. Default: the official 0.4 at batch 1024, scaled linearly.")
  flags.DEFINE_float("warmup_start_learning_rate", None,
                     "Learning rate at step 0. Default: the official 0.1 at batch 1024, scaled linearly.")
  flags.DEFINE_integer("warmup_steps", None,
                       "Warm-up steps (or --warmup_epochs). Default: --warmup_epochs' default.")
  flags.DEFINE_float("warmup_epochs", None,
                     "Warm-up in epochs of the training data. Default: the official 0.623 (780 steps "
                     "of 1,024 ImageNet images), at most 10% of the run.")
  flags.DEFINE_float("weight_decay", None, "L2 weight decay (Caffe's sense). Default 1e-4.")
  flags.DEFINE_float("bn_momentum", None, "BatchNorm moving-average fraction. Default 0.999 (prototxt).")
  flags.DEFINE_boolean("bn_synchronized", None,
                       "BatchNorm statistics over the global batch (all replicas). Default off.")
  flags.DEFINE_integer("eval_every_n_steps", None, "Evaluate every N steps (and at the end).")
  flags.DEFINE_integer("eval_every_n_secs", None, "Evaluate every N seconds (and at the end).")
  flags.DEFINE_boolean("output_train_images", None,
                       "Write training/validation images to TensorBoard. Default on.")
  flags.DEFINE_integer("image_summary_steps", None, "Interval of training-image summaries. Default 1000.")
  flags.DEFINE_integer("save_summary_steps", None, "Interval of scalar summaries. Default 100.")
  flags.DEFINE_integer("log_every_n_steps", None,
                       "Interval of progress lines in steps (0: none). Default 100.")
  flags.DEFINE_float("log_every_n_secs", None,
                     "A progress line at least every N seconds (0: by steps only); slow steps get "
                     "shorter loops. Default 60.")
  flags.DEFINE_integer("save_checkpoints_steps", None, "Checkpoint interval. Default 1000.")
  flags.DEFINE_integer("keep_checkpoint_max", None, "Checkpoints kept in model_dir. Default 5.")
  flags.DEFINE_integer("precise_bn_examples", None,
                       "Training examples over which the BatchNorm statistics are recomputed with "
                       "the current weights before each evaluation and the final checkpoint "
                       "('precise BN'). Default: an epoch, at least 2,048 and at most 8,192, at most max_steps batches; 0: off.")
  flags.DEFINE_boolean("allow_params_change", False,
                       "Resume a model_dir although network, image size, batch, schedule, classes or "
                       "preprocessing differ from its params.json.")
  flags.DEFINE_integer("steps_per_loop", None, "Steps per tf.function call. Default 100.")
  flags.DEFINE_string("fine_tune_ckpt", None,
                      "Warm-start from this checkpoint (prefix or directory) when model_dir has none.")
  flags.DEFINE_string("fine_tune_exclude", None,
                      "Regex of variable names not to warm-start (the classifier is skipped anyway "
                      "when the class count differs).")
  flags.DEFINE_integer("num_gpus", 0, "GPUs for MirroredStrategy (0 or 1: one device).")
  flags.DEFINE_integer("num_cpu_devices", 0,
                       "Split the CPU into N logical devices for MirroredStrategy (tests the "
                       "multi-device path without GPUs).")
  flags.DEFINE_enum("dtype", None, list(model.DTYPES),
                    "Compute dtype (mixed precision for 16-bit; float16 uses loss scaling). "
                    "Default: the faster one on this machine (bfloat16 on CPUs with AVX512-BF16 "
                    "or AMX and on GPUs of compute capability >= 8, else float32; logged), or "
                    "the earlier start's on a restart.")
  flags.DEFINE_boolean("xla", None, "Compile each replica's step with XLA. Default off.")
  flags.DEFINE_enum("grouped_conv", None, list(model.GROUPED_CONV_IMPLEMENTATIONS),
                    "Grouped convolutions (G network): block_diagonal (fast on CPUs), native "
                    "(cuDNN's grouped kernel), or auto (block_diagonal without a GPU). Default auto.")
  flags.DEFINE_integer("seed", None, "Random seed of the input pipeline and initialisation.")
  flags.DEFINE_boolean("deterministic", False,
                       "Reproducible training: seeds (--seed, default 0), deterministic ops and "
                       "input order. A run killed and restarted with "
                       "--checkpoint_input_pipeline ends with the weights of an uninterrupted one.")
  flags.DEFINE_boolean("checkpoint_input_pipeline", None,
                       "Also checkpoint the input pipeline's position, so that a restarted run "
                       "sees the batches an uninterrupted one would have seen.")
  flags.DEFINE_string("data_service_address", None,
                      "grpc://HOST:PORT of a tf.data service dispatcher (python -m "
                      "scripts.data_service) whose workers run the training input pipeline; "
                      "evaluation stays local. Unset: this process runs it.")
  flags.DEFINE_integer("collective_timeout_secs", 300,
                       "Multi-worker: a collective operation waiting longer than this for another "
                       "worker fails the run instead of hanging (0: no limit).")


# Flags that are parameters of tools/params.py (same names), read when the user set them.
PARAM_FLAGS = ("configuration", "batch_size", "num_epochs", "max_steps", "num_examples_per_epoch",
               "image_size", "num_classes", "image_key", "label_key", "label_offset",
               "preprocessing", "base_learning_rate", "warmup_start_learning_rate", "warmup_steps",
               "warmup_epochs", "weight_decay", "bn_momentum", "bn_synchronized", "eval_every_n_steps", "eval_every_n_secs",
               "image_summary_steps", "save_summary_steps", "log_every_n_steps", "log_every_n_secs",
               "save_checkpoints_steps", "keep_checkpoint_max", "steps_per_loop", "seed", "dtype",
               "xla", "output_train_images", "checkpoint_input_pipeline", "precise_bn_examples",
               "grouped_conv", "data_service_address")
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
  values = {name: FLAGS[name].value for name in PARAM_FLAGS if FLAGS[name].value is not None}
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
  """(data, demo): the run's file patterns, example count, classes and label map; demo is True for
  the built-in demo data (made on first use and cached)."""
  if FLAGS.train_file_pattern:
    return records_data(values), False
  logging.info("No --train_file_pattern: using the built-in demo data (handwritten digits) in %s.",
               FLAGS.demo_data_dir)
  try:
    demo = demo_data.make_demo_data(FLAGS.demo_data_dir)
  except UserError as e:
    raise UserError(str(e).replace("output_dir=", "--demo_data_dir=", 1)) from e
  data = dict(train_file_pattern=demo.train_pattern,
              validation_file_pattern=FLAGS.validation_file_pattern or demo.validation_pattern,
              num_examples_per_epoch=demo.num_train, label_map=demo.label_map)
  check_inputs(data)
  return data, True


def records_data(values):
  """The facts of --train_file_pattern's records that the run needs and the user did not give:
  their keys, classes and example count. One pass over the records at most, which also checks
  their labels; a restart reuses what its params.json holds for the same files (a count of
  ImageNet without a manifest reads all of it)."""
  data = dict(train_file_pattern=FLAGS.train_file_pattern,
              validation_file_pattern=FLAGS.validation_file_pattern)
  check_inputs(data)
  data["image_key"], data["label_key"] = record_keys(data, values)
  if (data["image_key"], data["label_key"]) == dataloader.TFDS_KEYS:
    data["label_offset"] = 0  # TensorFlow Datasets' labels are 0-based
  data.update(earlier_data_facts(data, values))
  count_needed = "num_examples_per_epoch" not in {**data, **values}
  if "num_classes" not in {**data, **values}:
    data.update(classes_beside(data["train_file_pattern"]))
  count, source = (records.manifest_count(FLAGS.train_file_pattern), "manifest") if (
      count_needed) else (None, None)
  classes_needed = "num_classes" not in {**data, **values}
  if classes_needed or (count_needed and count is None):
    scan = records.scan_labels(
        [p for p in (data["train_file_pattern"], data["validation_file_pattern"]) if p],
        data["label_key"])
    if classes_needed:
      data.update(classes_from_labels(scan, {**data, **values}))
    else:
      check_labels(scan, {**data, **values})
    count, source = scan.records[0], "counted"
  if count_needed:
    if not count:
      raise UserError(f"--train_file_pattern={FLAGS.train_file_pattern}: the matching files hold "
                      f"no record; nothing to train on")
    logging.info("%d training examples (%s) in %s.", count, source, FLAGS.train_file_pattern)
    data["num_examples_per_epoch"] = count
  return data


def earlier_data_facts(data, values):
  """{num_examples_per_epoch, num_classes, label_offset, label_map, batch_size} that an earlier
  start of --model_dir which saved a checkpoint used with the same file patterns and keys, less
  what the user sets now; or {}. Files changed under the same patterns are noticed when a
  builder's manifest.json counts them, not otherwise (the flags override)."""
  if (not os.path.exists(os.path.join(FLAGS.model_dir, params_lib.PARAMS_FILENAME))
      or estimator_lib.latest_checkpoint(FLAGS.model_dir) is None):
    return {}
  previous = params_lib.load_params(FLAGS.model_dir)
  run, read = previous.run, previous.input
  if (run.train_file_pattern, run.validation_file_pattern, read.image_key, read.label_key) != (
      data["train_file_pattern"], data["validation_file_pattern"], data["image_key"],
      data["label_key"]) or not run.num_examples_per_epoch:
    return {}
  now = records.manifest_count(data["train_file_pattern"])  # free with a builder's manifest
  if now is not None and now != run.num_examples_per_epoch:
    logging.info("The records changed since the earlier start (%d examples then, %d now).",
                 run.num_examples_per_epoch, now)
    return {}
  facts = dict(num_examples_per_epoch=run.num_examples_per_epoch,
               num_classes=previous.model.num_classes, label_offset=read.label_offset,
               label_map=run.label_map, batch_size=previous.recipe.batch_size)
  facts = {k: v for k, v in facts.items() if k not in values and v is not None}
  if facts:
    logging.info("From the earlier start's params.json (same file patterns; not counted again): "
                 "%s.",
                 ", ".join(f"{k} {v}" for k, v in facts.items()))
  return facts


def default_dtype():
  """The compute dtype of a run without --dtype: the earlier start's when --model_dir holds its
  params.json and a checkpoint (a restart computes as it began, so that it resumes bitwise), else
  model.default_dtype()'s for this machine; logged with the reason."""
  if (os.path.exists(os.path.join(FLAGS.model_dir, params_lib.PARAMS_FILENAME))
      and estimator_lib.latest_checkpoint(FLAGS.model_dir) is not None):
    dtype = params_lib.load_params(FLAGS.model_dir).model.dtype
    logging.info("Compute dtype %s: the earlier start's (--dtype sets another).", dtype)
    return dtype
  dtype, reason = model.default_dtype()
  logging.info("Compute dtype %s (--dtype sets another): %s.", dtype, reason)
  return dtype


def record_keys(data, values):
  """(image key, label key) of the training records, also found in the validation records."""
  keys = records.record_keys(data["train_file_pattern"], values.get("image_key"),
                             values.get("label_key"))
  if data["validation_file_pattern"]:
    try:
      records.record_keys(data["validation_file_pattern"], *keys)
    except UserError as e:
      raise UserError(f"--validation_file_pattern: {e}") from e
  if keys != dataloader.IMAGENET_KEYS:
    logging.info("The records' keys: image %s, label %s.", *keys)
  return keys


def check_labels(scan, known):
  """UserError before training when the scanned labels do not fit --num_classes and
  --label_offset (else the first batch fails after the model is built)."""
  offset = known.get("label_offset", 1)
  last = offset + known.get("num_classes", model.ModelParams.num_classes) - 1
  if scan.smallest < offset or scan.largest > last:
    raise UserError(f"--num_classes / --label_offset: the records' labels run from "
                    f"{scan.smallest} to {scan.largest}, outside {offset}..{last}")


def classes_beside(train_file_pattern):
  """{num_classes, label_map} from labels.txt beside the training records (labels 1..N), or {}."""
  label_map = dataloader.label_map_beside(train_file_pattern)
  if not tf.io.gfile.exists(label_map):
    return {}
  num_classes = len(dataloader.read_label_map(label_map))
  logging.info("num_classes %d: the classes of %s.", num_classes, label_map)
  return dict(num_classes=num_classes, label_map=label_map)


def classes_from_labels(scan, known):
  """{num_classes, label_offset} from the scanned labels: 0-based when a label 0 occurs, unless
  --label_offset (or the records' schema, in `known`) says otherwise."""
  offset = known.get("label_offset", 0 if scan.smallest == 0 else 1)
  num_classes = scan.largest - offset + 1
  if scan.smallest < offset or num_classes < 2:
    raise UserError(f"--train_file_pattern: the records' labels run from {scan.smallest} to "
                    f"{scan.largest}, which is not 2 or more classes from label_offset {offset}; "
                    "set --num_classes and --label_offset")
  logging.info("num_classes %d, label_offset %d: the records' labels run from %d to %d (no %s "
               "beside them; --num_classes and --label_offset set them).", num_classes, offset,
               scan.smallest, scan.largest, dataloader.LABEL_MAP_FILENAME)
  return dict(num_classes=num_classes, label_offset=offset)


def file_size(path):
  """Bytes of the file `path`; UserError naming it when it cannot be read (a dangling link)."""
  try:
    return tf.io.gfile.stat(path).length
  except tf.errors.OpError as e:
    raise UserError(f"{path} cannot be read: {one_line(e, 100)}") from e


def check_inputs(data):
  """Fails early on file patterns that match nothing; warns when validation shares training files."""
  files = {}
  for name in ("train_file_pattern", "validation_file_pattern"):
    if data.get(name):
      files[name] = set(tf.io.gfile.glob(data[name]))
      if not files[name]:
        raise UserError(f"--{name}={data[name]}: no file matches this pattern")
  if not data.get("validation_file_pattern"):
    beside = tf.io.gfile.glob(os.path.join(os.path.dirname(data["train_file_pattern"]),
                                           "validation-*"))
    logging.warning("No --validation_file_pattern: the run does not evaluate.%s", (
        f" {len(beside)} validation-* file(s) sit beside the training records: "
        f"--validation_file_pattern '{os.path.dirname(beside[0])}/validation-*'") if beside else "")
  empty = sorted(f for f in files.get("train_file_pattern", ()) if not file_size(f))
  if empty:
    logging.warning("%d of the training files are empty (0 bytes, e.g. %s): a failed write?",
                    len(empty), empty[0])
  shared = files.get("train_file_pattern", set()) & files.get("validation_file_pattern", set())
  if shared:
    logging.warning("The validation files share %d file(s) with the training files (e.g. %s): the "
                    "evaluation measures training data.", len(shared), sorted(shared)[0])


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
  check_model_dir(FLAGS.model_dir)
  strategy = make_strategy(FLAGS.num_gpus, FLAGS.num_cpu_devices, FLAGS.collective_timeout_secs)
  with contextlib.ExitStack() as held:  # the model_dir lock, let go at the end
    # A folder an earlier run used: a second process is refused before anything is built.
    locked = lock_model_dir(FLAGS.model_dir, estimator_lib.is_chief(strategy), held,
                            existing_only=True)
    if "dtype" not in values:
      values["dtype"] = default_dtype()
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
    logging.info("Starting at global step %d.", est.global_step)  # restores or warm-starts: may fail
    start_run(est, params, held, locked)  # only now, so that a user error leaves model_dir untouched
    report(est, run_training(est, params))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
