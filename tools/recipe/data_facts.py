"""What a run's records hold, for the parameters the user did not give: their keys, classes, label
offset and example count, or what an earlier start of the same model_dir found in the same files.

`resolve_data(train_file_pattern, validation_file_pattern, user, model_dir)` is what train.py calls
before `tools.recipe.params.resolve_params(user, data)`; a notebook or a fork calls the same:

  data = data_facts.resolve_data("data/train-*", "data/validation-*", user={}, model_dir="runs/a")
  params = params_lib.resolve_params({}, data)

It reads the records at most once (tools/datasets/records.py's scans): the example count comes from a
builder's manifest.json when there is one, the classes from labels.txt beside the records when there
is one, and one pass over the labels gives whatever is still missing (and checks them). Errors are
UserErrors naming the parameters (the programs show them as flags).
"""

import os

from absl import logging
import tensorflow as tf

import dataloader
import estimator as estimator_lib
import model
from tools.recipe import hardware
from tools.recipe import params as params_lib
from tools.datasets import records
from tools.common import one_line
from tools.common import UserError


def resolve_data(train_file_pattern, validation_file_pattern, user, model_dir=None):
  """The data facts of the records that `tools.recipe.params.resolve_params` needs and `user` lacks.

  Args:
    train_file_pattern: str, glob of the training TFRecords.
    validation_file_pattern: str or None, glob of the validation TFRecords.
    user: {param: value} the user set (keys, num_classes, label_offset, num_examples_per_epoch...).
    model_dir: an earlier start's folder, whose params.json is reused for the same files; or None.
  Returns:
    {train_file_pattern, validation_file_pattern, image_key, label_key, and what was found of
    label_offset, num_classes, label_map, num_examples_per_epoch, batch_size}.
  Raises:
    UserError: a pattern matches nothing, unknown record keys, labels that do not fit, no record.
  """
  data = dict(train_file_pattern=train_file_pattern,
              validation_file_pattern=validation_file_pattern)
  check_inputs(data)
  data["image_key"], data["label_key"] = record_keys(data, user)
  if (data["image_key"], data["label_key"]) == dataloader.TFDS_KEYS:
    data["label_offset"] = 0  # TensorFlow Datasets' labels are 0-based
  if model_dir:
    data.update(earlier_data_facts(data, user, model_dir))
  count_needed = "num_examples_per_epoch" not in {**data, **user}
  if "num_classes" not in {**data, **user}:
    data.update(classes_beside(train_file_pattern))
  count, source = (records.manifest_count(train_file_pattern), "manifest") if (
      count_needed) else (None, None)
  classes_needed = "num_classes" not in {**data, **user}
  if classes_needed or (count_needed and count is None):
    scan = records.scan_labels([p for p in (train_file_pattern, validation_file_pattern) if p],
                               data["label_key"])
    if classes_needed:
      data.update(classes_from_labels(scan, {**data, **user}))
    else:
      check_labels(scan, {**data, **user})
    count, source = scan.records[0], "counted"
  if count_needed:
    if not count:
      raise UserError(f"train_file_pattern={train_file_pattern}: the matching files hold no "
                      f"record; nothing to train on", param="train_file_pattern")
    logging.info("%d training examples (%s) in %s.", count, source, train_file_pattern)
    data["num_examples_per_epoch"] = count
  return data


def evaluation_params(model_dir, validation_file_pattern, user):
  """The Params of an evaluation of `model_dir` (train.py --mode evaluate): its params.json, the
  validation records (`validation_file_pattern`, else params.json's) and their keys, and the
  values the user set (e.g. batch_size, image_size, preprocessing).

  Raises:
    UserError: no params.json, no validation records, unknown record keys, a bad value.
  """
  saved = params_lib.load_params(model_dir)
  pattern = validation_file_pattern or saved.run.validation_file_pattern
  if not pattern:
    raise UserError(f"--mode evaluate needs --validation_file_pattern ({model_dir}'s "
                    f"params.json names no validation records)")
  check_inputs({"validation_file_pattern": pattern})
  keys = records.record_keys(pattern, user.get("image_key"), user.get("label_key"))
  flat = {**saved.flat(), "validation_file_pattern": pattern, "image_key": keys[0],
          "label_key": keys[1], **({"label_offset": 0} if keys == dataloader.TFDS_KEYS else {})}
  params = params_lib.Params.from_flat({**flat, **user})
  model.get_config(params.model.configuration)
  dataloader.check_input_params(params.input)
  return params


def default_dtype(model_dir):
  """The compute dtype of a run that sets none: the earlier start's when `model_dir` holds its
  params.json and a checkpoint (a restart computes as it began, so that it resumes bitwise), else
  hardware.default_dtype()'s for this machine; logged with the reason."""
  if (os.path.exists(os.path.join(model_dir, params_lib.PARAMS_FILENAME))
      and estimator_lib.latest_checkpoint(model_dir) is not None):
    dtype = params_lib.load_params(model_dir).model.dtype
    logging.info("Compute dtype %s: the earlier start's (--dtype sets another).", dtype)
    return dtype
  dtype, reason = hardware.default_dtype()
  logging.info("Compute dtype %s (--dtype sets another): %s.", dtype, reason)
  return dtype


def earlier_data_facts(data, user, model_dir):
  """{num_examples_per_epoch, num_classes, label_offset, label_map, batch_size} that an earlier
  start of `model_dir` which saved a checkpoint used with the same file patterns and keys, less
  what `user` sets now; or {}. Files changed under the same patterns are noticed when a builder's
  manifest.json counts them, not otherwise (the user's values override)."""
  if (not os.path.exists(os.path.join(model_dir, params_lib.PARAMS_FILENAME))
      or estimator_lib.latest_checkpoint(model_dir) is None):
    return {}
  previous = params_lib.load_params(model_dir)
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
  facts = {k: v for k, v in facts.items() if k not in user and v is not None}
  if facts:
    logging.info("From the earlier start's params.json (same file patterns; not counted again): "
                 "%s.", ", ".join(f"{k} {v}" for k, v in facts.items()))
  return facts


def record_keys(data, user):
  """(image key, label key) of the training records, also found in the validation records."""
  keys = records.record_keys(data["train_file_pattern"], user.get("image_key"),
                             user.get("label_key"))
  if data["validation_file_pattern"]:
    try:
      records.record_keys(data["validation_file_pattern"], *keys)
    except UserError as e:
      raise UserError(f"validation_file_pattern: {e}", param="validation_file_pattern") from e
  if keys != dataloader.IMAGENET_KEYS:
    logging.info("The records' keys: image %s, label %s.", *keys)
  return keys


def check_labels(scan, known):
  """UserError before training when the scanned labels (records.LabelScan) do not fit num_classes
  and label_offset of `known` (else the first batch fails after the model is built)."""
  offset = known.get("label_offset", 1)
  last = offset + known.get("num_classes", model.ModelParams.num_classes) - 1
  if scan.smallest < offset or scan.largest > last:
    raise UserError(f"num_classes / label_offset: the records' labels run from {scan.smallest} "
                    f"to {scan.largest}, outside {offset}..{last}",
                    param=("num_classes", "label_offset"))


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
  label_offset (or the records' schema, in `known`) says otherwise."""
  offset = known.get("label_offset", 0 if scan.smallest == 0 else 1)
  num_classes = scan.largest - offset + 1
  if scan.smallest < offset or num_classes < 2:
    raise UserError(f"train_file_pattern: the records' labels run from {scan.smallest} to "
                    f"{scan.largest}, which is not 2 or more classes from label_offset {offset}; "
                    "set num_classes and label_offset",
                    param=("train_file_pattern", "num_classes", "label_offset"))
  logging.info("num_classes %d, label_offset %d: the records' labels run from %d to %d (no %s "
               "beside them; num_classes and label_offset set them).", num_classes, offset,
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
        raise UserError(f"{name}={data[name]}: no file matches this pattern", param=name)
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
