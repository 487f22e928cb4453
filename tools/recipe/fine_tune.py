"""Fine-tuning: the TF1 `Scaffold(init_fn=...)` warm start, on TF2 checkpoints.

`make_init_fn(checkpoint, exclude)` returns a `Scaffold.init_fn` that the Estimator runs once, when
model_dir holds no checkpoint yet (a restarted fine-tuning run resumes from its own checkpoints instead).
It copies every network variable whose name and shape match a variable of the source checkpoint, skips
the classifier when the class count differs (its shape does) and whatever `exclude` names; the global
step and the optimizer state start fresh.

`source_values(checkpoint, values)` gives what the run takes from the source model_dir's
params.json when the user sets none (INHERITED): the network, so that its weights are restored at
all, and the input it learned on (an imported ImageNet model: 224 pixels, the torchvision
preprocessing).
"""

import os
import re

from absl import logging
import tensorflow as tf

from estimator.checkpoints import checkpoint_key
from tools.recipe import params as params_lib
from tools.common import UserError

# What a fine-tuning run takes from the source's params.json unless the user sets it.
INHERITED = ("configuration", "image_size", "preprocessing", "mean_rgb", "std_rgb")


def source_values(checkpoint, values):
  """{name: value} of INHERITED that the params.json of `checkpoint`'s model_dir (the directory
  itself, or the folder of a checkpoint prefix) holds and `values` (the user's {name: value}) does
  not set; {} when there is no params.json there. Logged."""
  folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
  if not os.path.exists(os.path.join(folder, params_lib.PARAMS_FILENAME)):
    return {}
  source = params_lib.load_params(folder).flat()
  inherited = {k: source[k] for k in INHERITED if k not in values and source.get(k) is not None}
  if inherited:
    logging.info("Fine-tune: from %s (set none of them to keep them): %s.",
                 os.path.join(folder, params_lib.PARAMS_FILENAME),
                 ", ".join(f"{k} {v}" for k, v in inherited.items()))
  return inherited


def resolve_checkpoint(path, param="fine_tune_ckpt"):
  """A checkpoint prefix for `path`: a prefix (`.../ckpt-100`) or a directory (its newest checkpoint).

  Raises UserError naming `param` when there is no readable checkpoint there.
  """
  prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
  if not prefix or not tf.io.gfile.exists(prefix + ".index"):
    raise UserError(f"{param}={path}: no checkpoint there (expected a checkpoint prefix such as "
                    f"model_dir/ckpt-1000, or a directory holding one)", param=param)
  return prefix


def plan_warm_start(network, prefix, exclude=None):
  """Which variables of `network` the checkpoint at `prefix` can initialise.

  Args:
    network: the keras.Model to warm-start.
    prefix: checkpoint prefix written by the Estimator (estimator/checkpoints.py) (network variables keyed by name).
    exclude: optional regular expression; variables whose path matches it are skipped.
  Returns:
    (restore, skipped): a list of (variable, checkpoint key) and a list of (variable path, reason).
  """
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  restore, skipped = [], []
  for variable in network.weights:
    key = checkpoint_key(variable.path)
    if exclude and re.search(exclude, variable.path):
      skipped.append((variable.path, f"excluded by {exclude!r}"))
    elif key not in shapes:
      skipped.append((variable.path, "not in the checkpoint"))
    elif list(shapes[key]) != list(variable.shape):
      skipped.append((variable.path, f"shape {list(variable.shape)} != checkpoint's {shapes[key]}"))
    else:
      restore.append((variable, key))
  return restore, skipped


def make_init_fn(checkpoint, exclude=None):
  """A `Scaffold.init_fn` that warm-starts the network from `checkpoint` (prefix or directory).

  Raises (when run) UserError if no variable matches: the checkpoint is of another architecture.
  """
  prefix = resolve_checkpoint(checkpoint)

  def init_fn(scaffold):
    restore, skipped = plan_warm_start(scaffold.network, prefix, exclude)
    if not restore:
      raise UserError(f"fine_tune_ckpt={checkpoint}: no variable of this network matches the "
                      f"checkpoint by name and shape (is it a checkpoint of another architecture?)",
                      param="fine_tune_ckpt")
    reader = tf.train.load_checkpoint(prefix)
    for variable, key in restore:
      variable.assign(reader.get_tensor(key))
    for path, reason in skipped:
      logging.info("Fine-tune: skipped %s (%s).", path, reason)
    logging.info("Fine-tune: restored %d variables from %s, skipped %d; the global step and the "
                 "optimizer state start fresh.", len(restore), prefix, len(skipped))

  return init_fn
