"""Checkpoints of an Estimator: save, restore, fall back past damaged ones, per-worker scratch,
the input pipeline's position. Orbit's Controller keeps this apart from the loops; so do we.

Files: `model_dir/ckpt-<global step>.{index,data-*}` written by tf.train.CheckpointManager, and its
state file `model_dir/checkpoint`. The checkpoint files are the truth: when the state file is missing
or unreadable, the newest readable `ckpt-N` on disk is restored (and the log says so), so that a
restart never begins again at step 0 over the files of an earlier run.

Network variables are stored by name (`network/<variable path>`, see `checkpoint_key`) rather than by
Keras' object-graph positions, so that a checkpoint can be read by name: for fine-tuning
(tools/recipe/fine_tune.py), for inference (`restore_network`) and to tell a checkpoint of another network
apart.
"""

import os
import re
import shutil

from absl import logging
import tensorflow as tf

from estimator.spec import NonFiniteLossError
from tools.common import one_line
from tools.common import UserError

CHECKPOINT_PREFIX = "ckpt"
# Errors of a checkpoint that cannot be read: a save killed half-way, a truncated or damaged file
# (IndexError: TensorFlow's "Read less bytes than requested").
UNREADABLE_ERRORS = (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.NotFoundError,
                     tf.errors.UnknownError, IndexError)
# Errors of a checkpoint that does not fit the network (another configuration or class count).
MISMATCH_ERRORS = (AssertionError, ValueError, tf.errors.InvalidArgumentError)
# Errors of a save that could not be written: disk full, file too big, permissions.
WRITE_ERRORS = (tf.errors.ResourceExhaustedError, tf.errors.OutOfRangeError,
                tf.errors.PermissionDeniedError, tf.errors.UnknownError, tf.errors.InternalError,
                tf.errors.FailedPreconditionError, OSError)


def network_variables(network):
  """{variable.path: variable} for every weight of `network` (trainable or not)."""
  return {v.path: v for v in network.weights}


def checkpoint_key(path):
  """The key under which `tf.train.Checkpoint(network=network_variables(...))` stores variable `path`."""
  escaped = path.replace(".", "..").replace("/", ".S")  # tf.train.Checkpoint's escaping of names
  return f"network/{escaped}/.ATTRIBUTES/VARIABLE_VALUE"


def checkpoint_step(path):
  """The global step of a checkpoint prefix `.../ckpt-<step>` (int), or None for another name."""
  match = re.fullmatch(rf"{CHECKPOINT_PREFIX}-(\d+)", os.path.basename(path or ""))
  return int(match.group(1)) if match else None


def checkpoints_on_disk(model_dir):
  """Prefixes of the `ckpt-<step>` checkpoints whose index file is in model_dir, oldest first."""
  prefixes = [p[:-len(".index")] for p in tf.io.gfile.glob(
      os.path.join(model_dir, f"{CHECKPOINT_PREFIX}-*.index"))]
  return sorted((p for p in prefixes if checkpoint_step(p) is not None), key=checkpoint_step)


_WARNED_NO_STATE = set()  # model_dirs warned about by candidate_checkpoints


def candidate_checkpoints(model_dir):
  """Checkpoint prefixes to restore, newest first: the state file's and every one on disk.

  Logs a warning (once per model_dir and process) when the state file is missing or unreadable while
  checkpoints exist.
  """
  state = tf.train.get_checkpoint_state(model_dir)
  listed = list(state.all_model_checkpoint_paths) if state else []
  on_disk = checkpoints_on_disk(model_dir)
  if on_disk and not listed and model_dir not in _WARNED_NO_STATE:
    _WARNED_NO_STATE.add(model_dir)
    logging.warning("%s: the checkpoint state file is missing or unreadable; recovering from the "
                    "checkpoint files themselves (%d found).", model_dir, len(on_disk))
  paths = {os.path.join(model_dir, os.path.basename(p)) for p in listed + on_disk}
  return sorted(paths, key=lambda p: checkpoint_step(p) or -1, reverse=True)


def latest_checkpoint(model_dir):
  """Prefix of the newest checkpoint of model_dir (state file or files on disk), or None."""
  candidates = candidate_checkpoints(model_dir)
  return candidates[0] if candidates else None


def restore_network(network, checkpoint_path, strict=True):
  """Reads `network`'s variables (by name) from `checkpoint_path`; nothing else is read.

  Inference needs no optimizer state, and a model trained in float16 has a loss-scale optimizer that a
  float32 inference scaffold does not.

  Raises:
    UserError: the checkpoint does not fit the network (another configuration or class count), or it
      cannot be read (deleted meanwhile, damaged).
  """
  checkpoint = tf.train.Checkpoint(network=network_variables(network))
  try:
    status = checkpoint.restore(checkpoint_path)  # a shape mismatch raises here
    if strict:
      status.assert_existing_objects_matched()  # a missing variable here
  except UNREADABLE_ERRORS as e:
    raise UserError(f"checkpoint {checkpoint_path} cannot be read ({one_line(e, 200)})") from e
  except MISMATCH_ERRORS as e:
    raise UserError(f"checkpoint {checkpoint_path} does not fit this network "
                    f"({one_line(e, 200)})") from e
  status.expect_partial()  # the optimizer's variables are left unread on purpose
  return status


class CheckpointKeeper:
  """Owns the checkpoints of one Estimator run: restore (with fallback), save, input position.

  Args:
    model_dir: str, the run's folder.
    objects: dict name -> trackable, what every checkpoint holds (network variables by name, the
      optimizer).
    keep_checkpoint_max: int >= 1, checkpoints kept in model_dir.
    task_id: None on the chief; a worker's index otherwise: every worker takes part in a save (reading
      ON_READ variables is a collective), non-chief workers into `model_dir/.worker_<id>`, removed
      after each save.
  """

  def __init__(self, model_dir, objects, keep_checkpoint_max=5, task_id=None):
    self.model_dir = model_dir
    self.objects = dict(objects)
    self.keep_checkpoint_max = keep_checkpoint_max
    self.task_id = task_id
    self.restored_path = None
    self._checkpoint = tf.train.Checkpoint(**self.objects)
    self._manager = None

  def restore_or_initialize(self, init_fn=None):
    """Restores the newest readable checkpoint of model_dir, else calls `init_fn()` (warm start).

    A checkpoint that cannot be read is skipped with a warning for the one before it. Returns the
    path restored, or None.

    Raises:
      UserError: a checkpoint of another network, or checkpoints none of which can be read.
    """
    candidates = candidate_checkpoints(self.model_dir)
    for path in candidates:
      try:
        self._checkpoint.restore(path).assert_existing_objects_matched()
      except UNREADABLE_ERRORS as e:
        logging.warning("Checkpoint %s is unreadable (%s: %s); trying the one before it.", path,
                        type(e).__name__, one_line(e, 200))
        continue
      except MISMATCH_ERRORS as e:
        raise UserError(f"model_dir={self.model_dir}: its checkpoint {os.path.basename(path)} does "
                        f"not fit this network ({one_line(e, 200)}); use a new model_dir or the "
                        f"configuration it was trained with", param="model_dir") from e
      logging.info("Restored %s (global step %s)%s.", path, checkpoint_step(path),
                   "" if path == candidates[0] else ", the newest readable checkpoint")
      self.restored_path = path
      return path
    if candidates:
      raise UserError(f"model_dir={self.model_dir}: none of its checkpoints can be read "
                      f"({', '.join(os.path.basename(p) for p in candidates)})", param="model_dir")
    if init_fn is not None:
      init_fn()
    return None

  def track_input(self, iterator):
    """Adds the input pipeline's position (`iterator`) to every later checkpoint, and restores it
    from the checkpoint restored at start, if any (once: a later pipeline starts fresh)."""
    self._checkpoint = tf.train.Checkpoint(**self.objects, input_pipeline=iterator)
    self._manager = None
    if self.restored_path:
      self._checkpoint.restore(self.restored_path).expect_partial()
      self.restored_path = None

  @property
  def latest(self):
    """Prefix of the newest checkpoint of model_dir, or None."""
    return latest_checkpoint(self.model_dir)

  def _directory(self):
    if self.task_id is None:
      return self.model_dir
    return os.path.join(self.model_dir, f".worker_{self.task_id}")

  def save(self, step, network_weights):
    """Writes the checkpoint of `step` (int); refuses non-finite weights, so the last good one stays.

    Args:
      step: the global step, the checkpoint's number.
      network_weights: the variables that must be finite.
    Raises:
      NonFiniteLossError: a weight is NaN or infinite.
      UserError: the checkpoint could not be written (disk full, ...); its temporary files are
        removed and the previous checkpoint is intact.
    """
    if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in network_weights):
      raise NonFiniteLossError(f"the weights became non-finite by step {step}; the latest "
                               f"checkpoint ({self.latest}) is the last good one")
    if self._manager is None:
      self._manager = tf.train.CheckpointManager(self._checkpoint, self._directory(),
                                                 max_to_keep=self.keep_checkpoint_max,
                                                 checkpoint_name=CHECKPOINT_PREFIX)
    try:
      path = self._manager.save(checkpoint_number=step)
    except WRITE_ERRORS as e:
      self._remove_temporaries()
      raise UserError(f"model_dir={self.model_dir}: could not write the checkpoint of step {step} "
                      f"({type(e).__name__}: {one_line(e, 300)}); the previous checkpoint "
                      f"({self.latest}) is intact", param="model_dir") from e
    if self.task_id is None:
      logging.info("Saved checkpoint %s.", path)
    else:
      shutil.rmtree(self._directory(), ignore_errors=True)
    return path

  def _remove_temporaries(self):
    """Removes the `*_temp` folders a failed save leaves (TensorFlow's sharded-save scratch)."""
    pattern = os.path.join(self._directory(), f"{CHECKPOINT_PREFIX}-*_temp*")
    for path in tf.io.gfile.glob(pattern):
      tf.io.gfile.rmtree(path) if tf.io.gfile.isdir(path) else tf.io.gfile.remove(path)
