r"""Trains and evaluates SqueezeNext: `python train.py --model_dir DIR`.

Without --train_file_pattern it trains on the built-in demo data (scikit-learn's handwritten digits,
written as JPEG class folders and converted to TFRecords on first use), with demo defaults for the image
size, class count and schedule; any flag overrides them. With ImageNet records:

  python train.py --model_dir runs/sqnxt23 --configuration v_1_0_SqNxt_23 \
      --train_file_pattern 'data/imagenet/train-*' --validation_file_pattern 'data/imagenet/validation-*' \
      --batch_size 1024 --num_gpus 8

This is the only module that reads flags: it assembles one params dict (logged and saved as
model_dir/params.json) and hands it to the library (model.py, dataloader.py, tools/).
"""

import json
import math
import os

from absl import flags
from absl import logging
import keras
import tensorflow as tf

import dataloader
import model
from tools import cli
from tools import estimator as estimator_lib
from tools import fine_tune
from tools import optimizer as optimizer_lib
from tools import stats

FLAGS = flags.FLAGS

def define_flags():
  """Defines the CLI flags; only when run as a script, so that importing train.py (tests,
  notebooks, scripts/predict.py) defines no flag."""
  flags.DEFINE_string("model_dir", None, "Folder for checkpoints, TensorBoard logs and params.json.")
  flags.DEFINE_string("configuration", None,
                      f"Network, one of: {', '.join(model.CONFIGURATIONS)}. Default v_1_0_SqNxt_23.")
  flags.DEFINE_string("train_file_pattern", None,
                      "Glob of training TFRecords (e.g. 'data/train-*'). Unset: the built-in demo data.")
  flags.DEFINE_string("validation_file_pattern", None, "Glob of validation TFRecords.")
  flags.DEFINE_string("demo_data_dir", os.path.join(os.path.expanduser("~"), ".cache", "squeezenext",
                                                    "demo_data"),
                      "Where the demo data is made on first use and cached.")
  flags.DEFINE_integer("batch_size", None, "Global batch (summed over replicas). Default 256 (demo 64).")
  flags.DEFINE_float("num_epochs", None, "Epochs to train; converted to steps once. Default 120.")
  flags.DEFINE_integer("max_steps", None, "Steps to train (overrides --num_epochs).")
  flags.DEFINE_integer("num_examples_per_epoch", None,
                       "Training examples per epoch. Default 1,281,167 (ImageNet) or the demo's count.")
  flags.DEFINE_integer("image_size", None, "Input side in pixels. Default 227 (demo 64).")
  flags.DEFINE_integer("num_classes", None, "Number of classes. Default 1000 (demo 10).")
  flags.DEFINE_enum("preprocessing", None, dataloader.PREPROCESSINGS, "Preprocessing. Default caffe.")
  flags.DEFINE_float("base_learning_rate", None,
                     "Learning rate after warm-up. Default: the official 0.4 at batch 1024, scaled linearly.")
  flags.DEFINE_float("warmup_start_learning_rate", None,
                     "Learning rate at step 0. Default: the official 0.1 at batch 1024, scaled linearly.")
  flags.DEFINE_integer("warmup_steps", None,
                       "Warm-up steps. Default: the official 780 at batch 1024, scaled inversely.")
  flags.DEFINE_float("weight_decay", None, "L2 weight decay (Caffe's sense). Default 1e-4.")
  flags.DEFINE_float("bn_momentum", None, "BatchNorm moving-average fraction. Default 0.999 (prototxt).")
  flags.DEFINE_boolean("bn_synchronized", None,
                       "BatchNorm statistics over the global batch (all replicas). Default off.")
  flags.DEFINE_integer("eval_every_n_steps", None, "Evaluate every N steps (and at the end).")
  flags.DEFINE_integer("eval_every_n_secs", None, "Evaluate every N seconds (and at the end).")
  flags.DEFINE_boolean("output_train_images", True, "Write training/validation images to TensorBoard.")
  flags.DEFINE_integer("image_summary_steps", None, "Interval of training-image summaries. Default 1000.")
  flags.DEFINE_integer("save_summary_steps", None, "Interval of scalar summaries. Default 100.")
  flags.DEFINE_integer("log_every_n_steps", None, "Interval of progress lines. Default 100.")
  flags.DEFINE_integer("save_checkpoints_steps", None, "Checkpoint interval. Default 1000.")
  flags.DEFINE_integer("keep_checkpoint_max", 5, "Checkpoints kept in model_dir.")
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
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                    "Compute dtype (mixed precision for 16-bit; float16 uses loss scaling).")
  flags.DEFINE_boolean("xla", False, "Compile each replica's step with XLA.")
  flags.DEFINE_integer("seed", None, "Random seed of the input pipeline and initialisation.")
  flags.DEFINE_boolean("deterministic", False,
                       "Reproducible training: seeds (--seed, default 0), deterministic ops and "
                       "input order. A run killed and restarted with "
                       "--checkpoint_input_pipeline ends with the weights of an uninterrupted one.")
  flags.DEFINE_boolean("checkpoint_input_pipeline", False,
                       "Also checkpoint the input pipeline's position, so that a restarted run "
                       "sees the batches an uninterrupted one would have seen.")
  flags.DEFINE_integer("collective_timeout_secs", 300,
                       "Multi-worker: a collective operation waiting longer than this for another "
                       "worker fails the run instead of hanging (0: no limit).")

# Defaults for ImageNet training with the official recipe (shared/DESIGN.md sections 3-5), and the
# demo's overrides (small images, 10 digit classes, a short schedule that reaches >= 97% top-1).
IMAGENET_DEFAULTS = dict(
    configuration="v_1_0_SqNxt_23", batch_size=256, num_epochs=120.0, image_size=227,
    num_classes=1000, preprocessing="caffe", num_examples_per_epoch=optimizer_lib.IMAGENET_TRAIN_EXAMPLES,
    eval_every_n_steps=10000, save_checkpoints_steps=1000, save_summary_steps=100,
    log_every_n_steps=100, image_summary_steps=1000, steps_per_loop=100)
DEMO_DEFAULTS = dict(
    batch_size=64, num_epochs=50.0, image_size=64, num_classes=10, base_learning_rate=0.2,
    warmup_start_learning_rate=0.02, warmup_steps=50, seed=0, bn_momentum=0.9, eval_every_n_steps=200,
    save_checkpoints_steps=200, save_summary_steps=20, log_every_n_steps=50, image_summary_steps=200,
    steps_per_loop=20)


def _flag_values():
  """The flags the user set, as a dict of the params they define (unset flags are left out)."""
  names = ["configuration", "batch_size", "num_epochs", "max_steps", "num_examples_per_epoch",
           "image_size", "num_classes", "preprocessing", "base_learning_rate",
           "warmup_start_learning_rate", "warmup_steps", "weight_decay", "bn_momentum", "bn_synchronized",
           "eval_every_n_steps", "eval_every_n_secs", "image_summary_steps", "save_summary_steps",
           "log_every_n_steps", "save_checkpoints_steps", "steps_per_loop", "seed"]
  values = {name: FLAGS[name].value for name in names if FLAGS[name].value is not None}
  values.update(dtype=FLAGS.dtype, keep_checkpoint_max=FLAGS.keep_checkpoint_max, xla=FLAGS.xla,
                output_train_images=FLAGS.output_train_images,
                checkpoint_input_pipeline=FLAGS.checkpoint_input_pipeline)
  if FLAGS.deterministic:  # the input pipeline's order too, and a seed for everything
    values.update(deterministic_training=True, seed=values.get("seed", 0))
  return values


# Runner settings whose defaults do not depend on the data set.
RUN_DEFAULTS = dict(dtype="float32", keep_checkpoint_max=5, xla=False, output_train_images=True,
                    eval_every_n_secs=0, checkpoint_input_pipeline=False)


def resolve_params(user, data):
  """Assembles the run's params once: defaults < demo defaults < user flags, then derived values.

  Args:
    user: dict of the values the user set (flag names).
    data: dict with train_file_pattern, validation_file_pattern and, for the demo, its
      num_examples_per_epoch; `data["demo"]` is True for the built-in demo.
  Returns:
    The flat params dict (JSON values): network, input, recipe (batch_size, learning rates, warm-up,
    max_steps, momentum, weight decay) and runner intervals.
  Raises:
    UserError for an unknown configuration or values out of range.
  """
  params = dict(model.DEFAULT_MODEL_PARAMS)
  params.update(dataloader.DEFAULT_INPUT_PARAMS)
  params.update(RUN_DEFAULTS)
  params.update(IMAGENET_DEFAULTS)
  if data.get("demo"):
    params.update(DEMO_DEFAULTS, num_examples_per_epoch=data["num_examples_per_epoch"])
  params.update({k: v for k, v in data.items() if k != "demo"})
  params.update(user)
  model.get_config(params["configuration"])  # raises UserError naming the accepted names
  # The recipe: the official solver scaled to this batch (DESIGN.md section 5), then the user's values.
  recipe = optimizer_lib.scale_recipe(params["batch_size"])
  for field in ("base_learning_rate", "warmup_start_learning_rate", "warmup_steps", "momentum",
                "weight_decay", "poly_power"):
    params.setdefault(field, getattr(recipe, field))
  if "max_steps" not in user:
    params["max_steps"] = math.ceil(
        params["num_epochs"] * params["num_examples_per_epoch"] / params["batch_size"])
  if params["max_steps"] < 1:
    raise cli.UserError(f"--max_steps={params['max_steps']}: expected at least 1 step")
  return params


def _data_sources():
  """File patterns of the run: the user's, or the demo data (made on first use and cached)."""
  if FLAGS.train_file_pattern:
    validation = FLAGS.validation_file_pattern
    return dict(train_file_pattern=FLAGS.train_file_pattern, validation_file_pattern=validation)
  from scripts import make_demo_data  # pylint: disable=import-outside-toplevel
  logging.info("No --train_file_pattern: using the built-in demo data (handwritten digits) in %s.",
               FLAGS.demo_data_dir)
  demo = make_demo_data.make_demo_data(FLAGS.demo_data_dir)
  return dict(demo=True, train_file_pattern=demo.train_pattern,
              validation_file_pattern=FLAGS.validation_file_pattern or demo.validation_pattern,
              num_examples_per_epoch=demo.num_train, label_map=demo.label_map)


def make_strategy(num_gpus, num_cpu_devices, collective_timeout_secs=0):
  """The distribution strategy: TF_CONFIG -> MultiWorkerMirrored; several GPUs (or logical CPU
  devices) -> Mirrored (NCCL all-reduce on GPUs); else the default one-device strategy.

  Raises UserError when more GPUs are asked for than are visible.
  """
  if "TF_CONFIG" in os.environ:
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL
                      if num_gpus else tf.distribute.experimental.CommunicationImplementation.AUTO)
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation, timeout_seconds=collective_timeout_secs or None))
  if num_cpu_devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(num_cpu_devices)])
  gpus = tf.config.list_physical_devices("GPU")
  if num_gpus > len(gpus):
    raise cli.UserError(f"--num_gpus={num_gpus}: only {len(gpus)} GPU(s) visible")
  if num_gpus > 1:
    return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(num_gpus)])
  return tf.distribute.get_strategy()


def check_scale(params, strategy):
  """Checks that the global batch divides over the replicas and logs the scale of the run."""
  replicas = strategy.num_replicas_in_sync
  if params["batch_size"] % replicas:
    raise cli.UserError(f"--batch_size={params['batch_size']} does not divide over {replicas} "
                        f"replicas; use a multiple of {replicas}")
  steps_per_epoch = params["num_examples_per_epoch"] / params["batch_size"]
  logging.info("Scale: %d replica(s), global batch %d, per-replica batch %d, %.1f steps per epoch, "
               "%d steps in all (%.2f epochs).", replicas, params["batch_size"],
               params["batch_size"] // replicas, steps_per_epoch, params["max_steps"],
               params["max_steps"] / steps_per_epoch)


def check_inputs(params):
  """Fails early, before anything is written, on file patterns that match nothing."""
  for flag in ("train_file_pattern", "validation_file_pattern"):
    pattern = params.get(flag)
    if pattern and not tf.io.gfile.glob(pattern):
      raise cli.UserError(f"--{flag}={pattern}: no file matches this pattern")


class ModelStatsHook(estimator_lib.Hook):
  """Writes the per-layer statistics table (tools/stats.py) to model_dir/model_stats.csv at begin;
  the successor of the seed's ModelStats SessionRunHook."""

  def begin(self, estimator):
    if not estimator.is_chief:
      return
    rows, totals = stats.model_statistics(estimator.scaffold.network)
    stats.write_csv(rows, os.path.join(estimator.model_dir, "model_stats.csv"))
    logging.info("Model statistics: %s (model_stats.csv).",
                 "  ".join(f"{k}={v:,}" for k, v in totals.items()))


def build_estimator(params, model_dir, strategy=None, init_fn=None):
  """The SqueezeNext Estimator for `params` (see resolve_params) on `strategy`."""
  config = estimator_lib.RunConfig(
      strategy=strategy, save_checkpoints_steps=params["save_checkpoints_steps"],
      keep_checkpoint_max=params["keep_checkpoint_max"],
      save_summary_steps=params["save_summary_steps"],
      image_summary_steps=params["image_summary_steps"] if params["output_train_images"] else 0,
      summary_images_fn=(lambda f: dataloader.add_mean(f["image"][:3], params))
      if params["output_train_images"] else None,
      log_step_count_steps=params["log_every_n_steps"], steps_per_loop=params["steps_per_loop"],
      jit_compile=params["xla"], checkpoint_input_pipeline=params["checkpoint_input_pipeline"])
  scaffold_fn = model.scaffold_fn
  if init_fn is not None:
    def scaffold_fn(p):
      scaffold = model.scaffold_fn(p)
      scaffold.init_fn = init_fn
      return scaffold
  return estimator_lib.Estimator(model.model_fn, model_dir, params, scaffold_fn, config)


def train_and_evaluate(est, params):
  """Trains `est` to params["max_steps"], evaluating every eval_every_n_steps / _secs and at the end.

  Returns the final evaluation's results, or {} when there is no validation_file_pattern.
  """
  train_input_fn = lambda ctx: dataloader.input_fn(params["train_file_pattern"], True, params, ctx)
  train_spec = estimator_lib.TrainSpec(train_input_fn, params["max_steps"], hooks=(ModelStatsHook(),))
  if not params.get("validation_file_pattern"):
    est.train(train_input_fn, params["max_steps"], hooks=train_spec.hooks)
    return {}
  eval_input_fn = lambda ctx: dataloader.input_fn(params["validation_file_pattern"], False, params, ctx)
  eval_spec = estimator_lib.EvalSpec(eval_input_fn, every_n_steps=params.get("eval_every_n_steps", 0),
                                     every_n_secs=params.get("eval_every_n_secs", 0))
  return estimator_lib.train_and_evaluate(est, train_spec, eval_spec)


def write_params(params, model_dir):
  """Saves params as model_dir/params.json (written to a temporary name, then renamed)."""
  path = os.path.join(model_dir, "params.json")
  with open(path + ".tmp", "w") as f:
    json.dump(params, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def check_model_dir(model_dir):
  """Fails early when a local model_dir cannot be created or written (a file, no permission)."""
  if "://" in model_dir:  # a remote file system: its own errors tell
    return
  existing = os.path.abspath(model_dir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise cli.UserError(f"--model_dir={model_dir}: {existing} is not a writable folder")


# Errors that mean another worker of a multi-worker run is gone (killed, preempted, unreachable).
LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                      tf.errors.AbortedError, tf.errors.CancelledError)


def run_training(est, params):
  """train_and_evaluate with the run's failures as one-line errors; returns the final results."""
  try:
    with dataloader.user_errors_from_data():  # a bad record: one line naming the file
      return train_and_evaluate(est, params)
  except estimator_lib.NonFiniteLossError as e:
    raise cli.UserError(f"training stopped: {e}") from e
  except LOST_WORKER_ERRORS as e:
    if "TF_CONFIG" not in os.environ:
      raise
    raise cli.UserError(
        f"lost contact with another worker ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
        f"restart all workers to resume from the last checkpoint "
        f"({est.latest_checkpoint()})") from e


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments {argv[1:]}; all options are --flags")
  check_model_dir(FLAGS.model_dir)
  strategy = make_strategy(FLAGS.num_gpus, FLAGS.num_cpu_devices, FLAGS.collective_timeout_secs)
  params = resolve_params(_flag_values(), _data_sources())
  if params["seed"] is not None:  # initialisation, and the input pipeline through params
    keras.utils.set_random_seed(params["seed"])
  if FLAGS.deterministic:
    tf.config.experimental.enable_op_determinism()
  check_inputs(params)
  check_scale(params, strategy)
  init_fn = None
  if FLAGS.fine_tune_ckpt:
    init_fn = fine_tune.make_init_fn(FLAGS.fine_tune_ckpt, FLAGS.fine_tune_exclude)
  logging.info("Params:\n%s", json.dumps(params, indent=2, sort_keys=True))
  est = build_estimator(params, FLAGS.model_dir, strategy, init_fn)
  logging.info("Starting at global step %d.", est.global_step)  # restores or warm-starts: may fail
  tf.io.gfile.makedirs(FLAGS.model_dir)  # only now, so that a user error leaves model_dir untouched
  write_params(params, FLAGS.model_dir)
  results = run_training(est, params)
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


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("model_dir")
  cli.run(main)
