"""The run's parameters, in four sections, each with its defaults in one place:

  model   model.ModelParams        network, classes, image size, compute dtype, BatchNorm
  input   dataloader.InputParams   preprocessing and tf.data settings
  recipe  tools.recipe.optimizer.Recipe   batch, learning rates, warm-up, steps, momentum, weight decay
  run     RunParams (here)         data, schedule of evaluations/checkpoints/summaries, runner options

`resolve_params(user, data, demo)` assembles them once: section defaults < the demo's defaults (for the
built-in demo only) < what the data says (file patterns, example count, label map) < the user's
values; then derived values (steps from epochs, the recipe scaled to the batch, the warm-up in
epochs). Each layer receives its section: `input_fn` the input, `build_network` the model, the
optimizer the recipe; `model_fn(features, labels, mode, params)` the whole `Params`.
`model_dir/params.json` holds the sections and the history of the starts of the run.
"""

import dataclasses
import json
import math
import os
import time

from absl import logging

import dataloader
import model
from tools.recipe import optimizer as optimizer_lib
from tools.common import atomic_write
from tools.common import check_param
from tools.common import param
from tools.common import UserError

PARAMS_FILENAME = "params.json"


@dataclasses.dataclass(frozen=True)
class RunParams:
  """What to train on and how the runner schedules its work (intervals in steps; 0 disables).

  Attributes:
    train_file_pattern / validation_file_pattern: globs of TFRecords (validation may be None).
    label_map: path of labels.txt, or None (found beside the records by inference).
    num_examples_per_epoch: training records per epoch; None: counted from the data by the program.
    num_epochs: epochs to train (converted to recipe.max_steps once).
    eval_every_n_steps / eval_every_n_secs: evaluation schedule (also at the end).
    save_checkpoints_steps, keep_checkpoint_max, save_summary_steps, image_summary_steps,
      log_every_n_steps, log_every_n_secs, steps_per_loop: runner intervals (estimator.RunConfig).
    output_train_images: TensorBoard image summaries.
    xla: compile each replica's step with XLA.
    checkpoint_input_pipeline: checkpoint the input pipeline's position too.
    precise_bn_examples: training examples over which the BatchNorm population statistics are
      recomputed before each evaluation and the final checkpoint (0: off; None: an epoch, at least
      2,048 and at most 8,192 as pycls, and no more batches than the run has steps).
  """
  train_file_pattern: str | None = param(None, "Glob of training TFRecords (e.g. 'data/train-*').",
                                         default_text="the built-in demo data")
  validation_file_pattern: str | None = param(None, "Glob of validation TFRecords.",
                                              default_text="none (no evaluation)")
  label_map: str | None = param(None, "labels.txt of the classes.", flag=False)
  num_examples_per_epoch: int | None = param(
      None, "Training examples per epoch.", minimum=1,
      default_text="counted from the records (the builder's manifest.json, else one counting pass)")
  num_epochs: float = param(120.0, "Epochs to train; converted to steps once.",
                            check=((lambda v: v > 0), "a number of epochs > 0"))
  eval_every_n_steps: int = param(10000, "Evaluate every N steps (and at the end).", minimum=0)
  eval_every_n_secs: int = param(0, "Evaluate every N seconds (and at the end).", minimum=0)
  save_checkpoints_steps: int = param(1000, "Checkpoint interval.", minimum=0)
  keep_checkpoint_max: int = param(5, "Checkpoints kept in model_dir.", minimum=1)
  save_summary_steps: int = param(100, "Interval of scalar summaries.", minimum=0)
  image_summary_steps: int = param(1000, "Interval of training-image summaries.", minimum=0)
  log_every_n_steps: int = param(100, "Interval of progress lines in steps (0: none).", minimum=0)
  log_every_n_secs: float = param(60.0, "A progress line at least every N seconds (0: by steps "
                                  "only); slow steps get shorter loops.", minimum=0)
  steps_per_loop: int = param(100, "Steps per tf.function call.", minimum=1)
  output_train_images: bool = param(True, "Write training/validation images to TensorBoard.")
  xla: bool = param(False, "Compile each replica's step with XLA.")
  checkpoint_input_pipeline: bool = param(
      False, "Also checkpoint the input pipeline's position, so that a restarted run sees the "
      "batches an uninterrupted one would have seen.")
  precise_bn_examples: int | None = param(
      None, "Training examples over which the BatchNorm statistics are recomputed with the current "
      "weights before each evaluation and the final checkpoint ('precise BN'); 0: off.", minimum=0,
      default_text="an epoch, at least 2,048 and at most 8,192, at most max_steps batches")

SECTIONS = {"model": model.ModelParams, "input": dataloader.InputParams,
            "recipe": optimizer_lib.Recipe, "run": RunParams}
# The global batch when the user gives none: the seed repository's single-GPU batch, halved (down
# to MIN_DEFAULT_BATCH_SIZE) while an epoch of the data has fewer than MIN_STEPS_PER_EPOCH steps:
# on 49 photos a batch of 256 repeats every image 5 times in each batch.
DEFAULT_BATCH_SIZE = 256
MIN_DEFAULT_BATCH_SIZE = 8
MIN_STEPS_PER_EPOCH = 8
# pycls' precise-BN sample (NUM_SAMPLES_PRECISE = 8192), or an epoch of a smaller data set but at
# least 2,048 examples (several augmented passes): measured on 400 photos at batch 32, 13 batches
# left evaluation 0.1 below training in one of three seeds, 64 batches did not.
PRECISE_BN_EXAMPLES = 8192
MIN_PRECISE_BN_EXAMPLES = 2048
# A warm-up takes at most this share of the run (the official one is 0.5% of it).
MAX_WARMUP_SHARE = 0.1
# The built-in demo (handwritten digits): small images, 10 classes, a short schedule that reaches
# >= 97% top-1 in a few minutes on 2 CPU cores.
DEMO_DEFAULTS = dict(
    batch_size=64, num_epochs=50.0, image_size=64, num_classes=10, base_learning_rate=0.2,
    warmup_start_learning_rate=0.02, seed=0, eval_every_n_steps=200, save_checkpoints_steps=200,
    save_summary_steps=20, log_every_n_steps=50, image_summary_steps=200, steps_per_loop=20)


@dataclasses.dataclass(frozen=True)
class Params:
  """The four sections (module docstring). `params.batch_size` is the global batch."""
  model: model.ModelParams
  input: dataloader.InputParams
  recipe: optimizer_lib.Recipe
  run: RunParams

  @property
  def batch_size(self):
    """int, the global batch (examples per optimizer step, summed over replicas)."""
    return self.recipe.batch_size

  def to_dict(self):
    """{section: {name: value}}, JSON values."""
    return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

  def flat(self):
    """{name: value} over all sections (names are unique across sections)."""
    return {k: v for section in self.to_dict().values() for k, v in section.items()}

  def replace_model(self, **changes):
    """A copy with model fields changed (e.g. dtype="float32" for inference)."""
    return dataclasses.replace(self, model=dataclasses.replace(self.model, **changes))

  @classmethod
  def from_flat(cls, values):
    """Params from {name: value}; names of no section are ignored, missing ones take defaults."""
    sections = {}
    for name, section in SECTIONS.items():
      fields = {f.name for f in dataclasses.fields(section)}
      sections[name] = section(**{k: v for k, v in values.items() if k in fields})
    return cls(**sections)

  @classmethod
  def from_dict(cls, data):
    """Params from `to_dict()`'s form, or from the flat params.json of earlier versions."""
    if all(isinstance(data.get(name), dict) for name in SECTIONS):
      return cls.from_flat({k: v for name in SECTIONS for k, v in data[name].items()})
    return cls.from_flat(data)


# ------------------------------------------------------------------------------------------------
# The declarations (tools/common.param) of every section's fields, and what follows from them.

def fields():
  """{name: dataclasses.Field} of every parameter of every section (names are unique)."""
  return {f.name: f for section in SECTIONS.values() for f in dataclasses.fields(section)}


def flag_fields():
  """The declared fields that are program flags (metadata flag=True), in section order."""
  return [f for f in fields().values() if f.metadata["flag"]]


def meaning_names():
  """Names of the parameters whose change gives another run: a resume with other values is refused
  unless asked (max_steps is not among them, nor the warm-up derived from it: training a finished
  run further is common; the change is logged)."""
  return [name for name, f in fields().items() if f.metadata["meaning"]]


def flag_help(field):
  """--help text of a declared field: its help, then its default (computed or the value), and
  the demo's default when it has one."""
  default = field.metadata["default_text"] or (
      "on" if field.default is True else "off" if field.default is False else f"{field.default:g}"
      if isinstance(field.default, float) else str(field.default))
  demo = f"; demo {DEMO_DEFAULTS[field.name]:g}" if field.name in DEMO_DEFAULTS else ""
  return f"{field.metadata['help']} Default: {default}{demo}."


def check_values(values):
  """Raises UserError naming the first value of `values` ({name: value}) out of its declared
  range; names that are not parameters are not checked."""
  declared = fields()
  for name, value in values.items():
    if name in declared:
      check_param(declared[name], value)


# ------------------------------------------------------------------------------------------------
# Resolution.

def _warmup_steps(values, steps_per_epoch):
  """The warm-up in steps: the user's steps, else epochs (default the official recipe's 0.623), at
  most MAX_WARMUP_SHARE of the run."""
  if "warmup_steps" in values and "warmup_epochs" in values:
    raise UserError("warmup_steps and warmup_epochs both set: give one of them",
                    param="warmup_steps")
  if "warmup_steps" in values:
    return int(values["warmup_steps"])
  epochs = values.get("warmup_epochs", optimizer_lib.OFFICIAL_WARMUP_EPOCHS)
  steps = round(epochs * steps_per_epoch)
  return min(steps, math.floor(MAX_WARMUP_SHARE * values["max_steps"]))


def default_batch_size(num_examples):
  """The global batch for `num_examples` training examples when the user gives none (int): 256,
  halved while an epoch has fewer than 8 steps, at least 8 (constants above); logged when smaller
  than 256."""
  batch = DEFAULT_BATCH_SIZE
  while batch > MIN_DEFAULT_BATCH_SIZE and num_examples < MIN_STEPS_PER_EPOCH * batch:
    batch //= 2
  if batch < DEFAULT_BATCH_SIZE:
    logging.info("Global batch %d: the default %d, halved while an epoch of %d examples has "
                 "fewer than %d steps, down to %d (batch_size sets it).", batch, DEFAULT_BATCH_SIZE,
                 num_examples, MIN_STEPS_PER_EPOCH, MIN_DEFAULT_BATCH_SIZE)
  return batch


def resolve_params(user, data, demo=False):
  """Assembles the run's Params once (module docstring).

  Args:
    user: {name: value} of what the user set (flag names = parameter names), checked here.
    data: {name: value} the data gives: train_file_pattern, validation_file_pattern,
      num_examples_per_epoch (int; required unless in `user`), label_map.
    demo: the built-in demo data set: its defaults apply under the user's values.
  Returns:
    Params, with recipe.max_steps and the warm-up derived.
  Raises:
    UserError: a value out of range, an unknown configuration or preprocessing, both warm-up forms.
  """
  check_values(user)
  values = {**(DEMO_DEFAULTS if demo else {})}
  values.update({k: v for k, v in data.items() if v is not None})
  values.update(user)
  if "batch_size" not in values:
    values["batch_size"] = default_batch_size(values["num_examples_per_epoch"])
  model.get_config(values.get("configuration", model.ModelParams.configuration))
  defaults = RunParams()
  steps_per_epoch = values["num_examples_per_epoch"] / values["batch_size"]
  if "max_steps" not in values:
    values["max_steps"] = math.ceil(values.get("num_epochs", defaults.num_epochs) * steps_per_epoch)
  elif "num_epochs" in user:
    logging.warning("max_steps=%d is given: num_epochs=%g is not used.", values["max_steps"],
                    user["num_epochs"])
  check_values({"max_steps": values["max_steps"]})
  scaled = optimizer_lib.scale_recipe(values["batch_size"])  # the official solver at this batch
  for field in ("base_learning_rate", "warmup_start_learning_rate", "momentum", "weight_decay",
                "poly_power"):
    values.setdefault(field, getattr(scaled, field))
  values["warmup_steps"] = _warmup_steps(values, steps_per_epoch)
  if values.get("precise_bn_examples") is None:  # never more batches than the run has steps
    values["precise_bn_examples"] = min(PRECISE_BN_EXAMPLES, max(
        MIN_PRECISE_BN_EXAMPLES, values["num_examples_per_epoch"]),
        values["max_steps"] * values["batch_size"])
  values["deterministic_training"] = bool(values.get("deterministic_training"))
  params = Params.from_flat(values)
  dataloader.check_input_params(params.input)
  return params


def describe_schedule(params):
  """One line: the resolved warm-up, learning rates and schedule, for the log at start."""
  r, run = params.recipe, params.run
  steps_per_epoch = run.num_examples_per_epoch / r.batch_size
  warmup = (f"{r.warmup_start_learning_rate:g} -> {r.base_learning_rate:g} over {r.warmup_steps} "
            f"warm-up steps ({r.warmup_steps / steps_per_epoch:.3f} epochs)" if r.warmup_steps
            else f"{r.base_learning_rate:g} without warm-up")
  return (f"Schedule: {r.max_steps} steps ({r.max_steps / steps_per_epoch:.2f} epochs of "
          f"{run.num_examples_per_epoch} examples at global batch {r.batch_size}); learning rate "
          f"{warmup}, then poly decay with power {r.poly_power:g} to 0 at step {r.max_steps}; "
          f"momentum {r.momentum:g}, weight decay {r.weight_decay:g}.")


# ------------------------------------------------------------------------------------------------
# params.json.

def _read_json(model_dir):
  path = os.path.join(model_dir, PARAMS_FILENAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not readable JSON ({e})") from e


def load_params(model_dir):
  """The Params saved in model_dir/params.json (this version's sections or an earlier flat form).

  Raises:
    UserError: no such folder, no params.json, bad JSON, or no network described in it.
  """
  if not os.path.isdir(model_dir):
    raise UserError(f"model_dir={model_dir}: no such folder", param="model_dir")
  data = _read_json(model_dir)
  if data is None:
    raise UserError(f"model_dir={model_dir}: no {PARAMS_FILENAME}; expected a folder written by "
                    f"train.py", param="model_dir")
  flat = data if "model" not in data else data["model"]
  missing = [k for k in ("configuration", "num_classes", "image_size") if k not in flat]
  if missing:
    raise UserError(f"{os.path.join(model_dir, PARAMS_FILENAME)}: missing {', '.join(missing)}; "
                    f"expected params written by train.py")
  return Params.from_dict(data)


def changes(old, new):
  """{name: (old value, new value)} of the meaning parameters that differ between two Params."""
  a, b = old.flat(), new.flat()
  return {k: (a.get(k), b.get(k)) for k in meaning_names() if a.get(k) != b.get(k)}


def save_params(params, model_dir, argv, allow_changes=False):
  """Writes model_dir/params.json (atomically): the sections and the history of starts.

  Args:
    params: the Params of this start.
    model_dir: an existing local folder.
    argv: list of str, the command line of this start (kept in the history).
    allow_changes: accept a resume whose meaning parameters differ from the saved ones.
  Raises:
    UserError: the saved params differ in meaning and allow_changes is False (nothing written).
  """
  data = _read_json(model_dir) or {}
  history = data.get("history", [])
  if data:
    previous = Params.from_dict(data)
    differences = changes(previous, params)
    old, new = previous.recipe, params.recipe
    changed = [f"{name} {a} -> {b}" for name, a, b in (
        ("max_steps", old.max_steps, new.max_steps),
        ("warm-up steps", old.warmup_steps, new.warmup_steps)) if a != b]
    if changed:
      logging.warning("The schedule changed: %s.", ", ".join(changed))
    if differences and not allow_changes:
      listed = ", ".join(f"{k} {a} -> {b}" for k, a, b in
                         ((k, *v) for k, v in sorted(differences.items())))
      raise UserError(f"model_dir={model_dir}: this run was started with other parameters "
                      f"({listed}); use a new model_dir, the same values, or allow_params_change "
                      f"to go on with the new ones", param="model_dir")
  history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(argv)})
  atomic_write(os.path.join(model_dir, PARAMS_FILENAME),
               json.dumps({**params.to_dict(), "history": history}, indent=2, sort_keys=True))
