"""Inference with a trained model: restore, preprocess, classify files, export (SavedModel, TFLite,
ONNX), and run TFLite files with LiteRT and ONNX files with ONNX Runtime. scripts/predict.py and
scripts/export.py are its programs.

A model_dir written by train.py holds params.json and checkpoints. `load_trained_model` restores the
network of its newest checkpoint through the one restore path of the project,
`estimator.Estimator.predict_function` (network variables only, by name, in float32), with the label
map found in this order: an explicit path; `params.run.label_map` (the demo sets it); labels.txt
beside the training or validation records; labels.txt in model_dir.

Images go through exactly the evaluation preprocessing of training,
`dataloader.preprocess_image(..., training=False)` (caffe: resize to round(S * 256 / 227) square,
central S x S crop, RGB mean subtracted; inception: short side to S / 0.875, central crop;
torchvision: Pillow's resize of the short side to ceil(S / 0.875), central crop, ImageNet mean/std).

Predictions (`Classifier.predict_batch`, the PREDICT branch of model.model_fn) for N images and K
classes: top_1 int32 [N]; top_5 int32 [N, min(5, K)] (best first); probabilities float32 [N, K];
logits float32 [N, K].

An export folder (`export_saved_model`) holds the SavedModel with two signatures, both returning
those outputs (with a label map also top_1_name string [N] and top_5_names string [N, min(5, K)]):

  serving_default       image_bytes: string [N], encoded JPEG, PNG, GIF or BMP images of any size;
                        the evaluation preprocessing runs in the graph. One undecodable image fails
                        the whole request (a graph has no per-element error).
  serving_preprocessed  images: float32 [N, S, S, 3], already preprocessed.

and assets.extra/params.json, assets.extra/labels.txt (when a label map was found), the TFLite files
(`TFLITE_FILENAMES`: the serving_preprocessed signature), ONNX_FILENAME (the same signature in ONNX,
`convert_onnx`; tf2onnx, onnx and onnxruntime are optional packages, ONNX_REQUIREMENTS) and the
marker EXPORT_MARKER that tells an export written here from any other folder: only such a folder is
ever replaced (`check_export_dir`).

`evaluate_export` measures what each artefact of an export keeps on validation records: top-1,
top-5, top-1 agreement and largest logit difference with the SavedModel, size (bytes) and latency
(milliseconds per image, batch 1); scripts/export.py prints it and writes it as ACCURACY_FILENAME
into the export folder.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib
import json
import os
import re
import shutil
import time
import warnings

from absl import logging
import keras
import numpy as np
import tensorflow as tf

import dataloader
import estimator as estimator_lib
import model
from estimator.checkpoints import checkpoint_step
from tools.recipe import experiment
from tools.recipe import params as params_lib
from tools.common import atomic_path
from tools.common import atomic_write
from tools.common import IMAGE_EXTENSIONS
from tools.common import one_line
from tools.common import UserError

TOP_K = 5
SERVING_DEFAULT = "serving_default"
SERVING_PREPROCESSED = "serving_preprocessed"
ASSETS_EXTRA = "assets.extra"
# Written into every export folder; its presence is what allows `overwrite` to replace the folder.
EXPORT_MARKER = "squeezenext_export.json"
# TFLite variants: None is float32; QUANTIZATIONS are the others.
QUANTIZATIONS = ("float16", "dynamic_range", "int8")
TFLITE_FILENAMES = {None: "model.tflite", "float16": "model_float16.tflite",
                    "dynamic_range": "model_dynamic_range.tflite", "int8": "model_int8.tflite"}
DEFAULT_REPRESENTATIVE_EXAMPLES = 100
# The evaluation preprocessing draws nothing from its seed; a constant one keeps stateful random ops
# out of the traced (and exported) graphs.
_EVAL_SEED = (0, 0)


# ------------------------------------------------------------------------------------------------
# Restoring a model.


@dataclasses.dataclass
class Classifier:
  """What predict_files needs of a model: its params, label map and a batch classifier.

  Attributes:
    params: tools.recipe.params.Params (model.dtype float32); model.image_size is S.
    label_map: list of dataloader.LabelEntry (entry i is class_idx i), or None.
    label_map_path: str or None, where label_map was read from.
    source: str, what was loaded (a checkpoint or a .tflite file), for messages.
  """
  params: params_lib.Params
  label_map: list | None
  label_map_path: str | None
  source: str

  @property
  def image_size(self):
    """int, the side S of the network's input [N, S, S, 3]."""
    return int(self.params.model.image_size)

  def predict_batch(self, images):
    """float32 numpy [N, S, S, 3] (preprocessed) -> dict of numpy predictions (module docstring)."""
    raise NotImplementedError


@dataclasses.dataclass
class TrainedModel(Classifier):
  """A model_dir's network restored by Estimator.predict_function (see load_trained_model).

  Attributes (besides Classifier's):
    model_dir: str.
    network: the restored keras.Model with its BatchNorms folded (model.fold_batch_norm):
      float32 [N, S, S, 3] -> logits float32 [N, K].
    predict: tf.function float32 [N, S, S, 3] -> dict of prediction tensors (module docstring).
    checkpoint_path: str, the checkpoint restored; global_step: int, its step.
  """
  model_dir: str = ""
  network: keras.Model | None = None
  predict: object = None
  checkpoint_path: str = ""
  global_step: int = 0

  def predict_batch(self, images):
    return {k: v.numpy() for k, v in self.predict(tf.constant(images, tf.float32)).items()}


def find_label_map(model_dir, params, path=None):
  """Path of the label map to use, or None (search order in the module docstring).

  Args:
    model_dir: str, the folder searched last.
    params: tools.recipe.params.Params.
    path: optional explicit path; it must exist.
  Raises:
    UserError (param label_map): an explicit path that does not exist.
  """
  if path:
    if not tf.io.gfile.exists(path):
      raise UserError(f"label_map={path}: no such file", param="label_map")
    return path
  candidates = [params.run.label_map]
  for pattern in (params.run.train_file_pattern, params.run.validation_file_pattern):
    if pattern:
      candidates.append(dataloader.label_map_beside(pattern))
  candidates.append(os.path.join(model_dir, dataloader.LABEL_MAP_FILENAME))
  return next((c for c in candidates if c and tf.io.gfile.exists(c)), None)


def read_label_map(path, num_classes):
  """dataloader.read_label_map(path), or None for path None.

  Raises:
    UserError: a bad file, or one whose class count is not num_classes.
  """
  if not path:
    return None
  entries = dataloader.read_label_map(path)
  if len(entries) != num_classes:
    raise UserError(f"label_map={path}: has {len(entries)} classes but the model has "
                    f"{num_classes}; pass the right one", param="label_map")
  logging.log_first_n(logging.INFO, "Class names from %s.", 1, path)  # once, not per artefact
  return entries


def load_trained_model(model_dir, label_map=None, checkpoint_path=None):
  """Restores the network of model_dir's newest checkpoint (or `checkpoint_path`) in float32.

  Args:
    model_dir: folder written by train.py (params.json, ckpt-*).
    label_map: optional path of a labels.txt; default: found by `find_label_map`.
    checkpoint_path: optional checkpoint prefix; default the newest (a checkpoint deleted meanwhile
      by a running training is replaced by the newest one then, in predict_function).
  Returns:
    TrainedModel.
  Raises:
    UserError: no params.json, no checkpoint, a checkpoint of another network, or a bad label map.
  """
  # Inference runs in float32 whatever the training dtype was: the variables are float32, and CPUs,
  # TF Serving and TFLite run float32 best.
  params = params_lib.load_params(model_dir).replace_model(dtype="float32")
  label_map_path = find_label_map(model_dir, params, label_map)
  entries = read_label_map(label_map_path, params.model.num_classes)
  est = estimator_lib.Estimator(model.model_fn, model_dir, params, experiment.scaffold_fn)
  _, path = est.predict_function(checkpoint_path)  # restores the network
  m, size = params.model, params.model.image_size
  # model_fn's PREDICT branch on the network with its BatchNorms folded (fast at batch 1).
  scaffold = estimator_lib.Scaffold(model.fold_batch_norm(
      est.scaffold.network, m.configuration, m.num_classes, size))
  predict = tf.function(
      lambda images: model.model_fn({"image": images}, None, estimator_lib.ModeKeys.PREDICT,
                                    params, scaffold).predictions, autograph=False,
      input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
  step = checkpoint_step(path)
  logging.info("Restored %s (step %s; %s, %d classes, %d x %d input, %s preprocessing).", path,
               step, m.configuration, m.num_classes, size, size, params.input.preprocessing)
  return TrainedModel(params, entries, label_map_path, path, model_dir=model_dir,
                      network=scaffold.network, predict=predict, checkpoint_path=path,
                      global_step=step)


def preprocess_fn(params):
  """The evaluation preprocessing of training as a tf.function: string scalar (encoded JPEG, PNG,
  GIF or BMP) -> float32 [S, S, 3], mean-subtracted RGB. `params`: tools.recipe.params.Params.

  Raises tf.errors.InvalidArgumentError (when called) for bytes that are not such an image.
  """
  seed = tf.constant(_EVAL_SEED, tf.int32)
  size = params.model.image_size
  preprocess = lambda image_bytes: dataloader.preprocess_image(image_bytes, False, params.input,
                                                               size, seed=seed)
  return tf.function(preprocess, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


# ------------------------------------------------------------------------------------------------
# Files in, results out.


def display_path(path):
  """`path` (str or bytes) as printable str: bytes that are not UTF-8 shown as \\xNN."""
  return os.fsencode(path).decode("utf-8", "backslashreplace")


def list_images(paths):
  """Expands folders (recursively, sorted, by tools.common.IMAGE_EXTENSIONS); keeps files as given.

  Args:
    paths: list of str or bytes (os.fsencode) paths; returned as str (undecodable bytes of a file
      name kept as surrogates, as os.listdir gives them).
  Returns:
    list of str. A path that does not exist is kept, so that it gets its own error.
  Raises:
    UserError: a folder with no image in it.
  """
  images = []
  for path in map(os.fsdecode, paths):
    if not os.path.isdir(path):
      images.append(path)
      continue
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
      raise UserError(f"folder {display_path(path)} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    images.extend(found)
  return images


@dataclasses.dataclass
class ImageResult:
  """The outcome for one image: `predictions` (dict of numpy values of one example, keys as
  Classifier.predict_batch) or `error` (str, one line), the other one None."""
  path: str
  predictions: dict | None = None
  error: str | None = None


def _read_and_preprocess(path, preprocess):
  """(float32 [S, S, 3] numpy, None) or (None, error message) for one image file."""
  try:
    os.fsencode(path).decode("utf-8")
  except UnicodeDecodeError:
    return None, "file name is not valid UTF-8"
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except (FileNotFoundError, tf.errors.NotFoundError):
    return None, "no such file"
  except (OSError, tf.errors.OpError) as e:
    return None, f"cannot read: {one_line(e)}"
  if not data:
    return None, "empty file (0 bytes)"
  try:
    return preprocess(tf.constant(data)).numpy(), None
  except tf.errors.OpError as e:
    return None, f"cannot decode image: {one_line(e)}"


def predict_files(classifier, paths, batch_size=64, num_threads=0):
  """Classifies image files in batches; yields one ImageResult per path, in the order of `paths`.

  Images are read and preprocessed on a thread pool (TensorFlow's kernels release the GIL) while the
  previous batch runs through the network. A file that is missing, empty, not decodable or whose
  name is not valid UTF-8 gets its own error; the others are classified.

  Args:
    classifier: a Classifier (TrainedModel or LiteModel).
    paths: list of image file paths (str or bytes; see list_images).
    batch_size: int >= 1, images per forward pass.
    num_threads: int >= 0, preprocessing threads (0: one per core).
  Raises:
    UserError: batch_size < 1 or num_threads < 0.
  """
  if batch_size < 1:
    raise UserError(f"batch_size={batch_size}: expected at least 1", param="batch_size")
  if num_threads < 0:
    raise UserError(f"num_threads={num_threads}: expected 0 (one per core) or more",
                    param="num_threads")
  paths = [os.fsdecode(p) for p in paths]
  preprocess = preprocess_fn(classifier.params).get_concrete_function()  # traced before the threads
  chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
  with concurrent.futures.ThreadPoolExecutor(num_threads or os.cpu_count() or 1) as pool:
    submit = lambda chunk: [pool.submit(_read_and_preprocess, p, preprocess) for p in chunk]
    pending = collections.deque(submit(c) for c in chunks[:2])  # the next batch is read meanwhile
    for i, chunk in enumerate(chunks):
      outcomes = [future.result() for future in pending.popleft()]
      if i + 2 < len(chunks):
        pending.append(submit(chunks[i + 2]))
      yield from _predict_chunk(classifier, chunk, outcomes)


def _predict_chunk(classifier, paths, outcomes):
  images = [image for image, _ in outcomes if image is not None]
  batch = classifier.predict_batch(np.stack(images)) if images else {}
  row = 0
  for path, (image, error) in zip(paths, outcomes):
    if image is None:
      yield ImageResult(path, error=error)
    else:
      yield ImageResult(path, predictions={k: v[row] for k, v in batch.items()})
      row += 1


def top_classes(predictions, label_map=None):
  """The top-5 of one image's predictions: list of min(5, K) dicts, best first, with class_idx
  (int), probability (float in 0..1) and, with a label map, name (synset or folder name) and
  text."""
  classes = []
  for idx in predictions["top_5"][:TOP_K]:
    entry = {"class_idx": int(idx), "probability": float(predictions["probabilities"][idx])}
    if label_map:
      entry.update(name=label_map[idx].name, text=label_map[idx].text)
    classes.append(entry)
  return classes


def format_json(result, label_map=None):
  """One JSON line for an ImageResult:
  {"image": path, "top_5": [{"class_idx", "probability", "name", "text"}, ...]} or
  {"image": path, "error": message}; paths not valid UTF-8 shown with \\xNN."""
  if result.error is not None:
    return json.dumps({"image": display_path(result.path), "error": result.error})
  return json.dumps({"image": display_path(result.path),
                     "top_5": top_classes(result.predictions, label_map)})


def format_text(result, label_map=None):
  """Human-readable lines for an ImageResult: the path, then one line per class of the top-5
  (`rank. probability class_idx name (text)`), or `path: error: message`."""
  path = display_path(result.path)
  if result.error is not None:
    return f"{path}: error: {result.error}"
  lines = [path]
  for rank, c in enumerate(top_classes(result.predictions, label_map), 1):
    name = ""
    if "name" in c:
      name = c["name"] if c["text"] in ("", c["name"]) else f"{c['name']} ({c['text']})"
    lines.append(f"  {rank}. {c['probability']:8.4f}  {c['class_idx']:4d}  {name}".rstrip())
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# SavedModel export.


def serving_functions(trained):
  """The two signature functions of the SavedModel for a TrainedModel.

  Returns:
    (from_bytes, from_images): from_bytes(image_bytes: string [N]) and from_images(images: float32
    [N, S, S, 3]) -> dict of outputs: top_1 int32 [N], top_5 int32 [N, min(5, K)], probabilities
    and logits float32 [N, K]; with a label map also top_1_name string [N] and top_5_names string
    [N, min(5, K)].
  """
  size = trained.image_size
  preprocess = preprocess_fn(trained.params)
  names = None
  if trained.label_map:
    names = tf.constant([entry.name for entry in trained.label_map])  # [K]

  def from_images(images):
    outputs = dict(trained.predict(images))
    if names is not None:
      outputs["top_1_name"] = tf.gather(names, outputs["top_1"])  # [N]
      outputs["top_5_names"] = tf.gather(names, outputs["top_5"])  # [N, min(5, K)]
    return outputs

  def from_bytes(image_bytes):
    images = tf.map_fn(preprocess, image_bytes,  # [N, S, S, 3]
                       fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
    return from_images(images)

  return from_bytes, from_images


def _refusal(export_dir, reason):
  return UserError(f"export_dir={export_dir}: {reason}; refusing to replace it", param="export_dir")


def _check_replaceable(export_dir):
  """Raises UserError unless export_dir is an export folder of this project and nothing more."""
  if os.path.islink(export_dir) or not os.path.isdir(export_dir):
    raise _refusal(export_dir, "not a folder (a file or a symbolic link)")
  if not os.path.isfile(os.path.join(export_dir, EXPORT_MARKER)):
    raise _refusal(export_dir, f"holds no {EXPORT_MARKER}, so it is not an export written by "
                   f"scripts/export.py")
  top = os.path.normpath(export_dir)
  for root, folders, files in os.walk(top):
    where = os.path.relpath(root, top)
    if root != top and EXPORT_MARKER in files:
      raise _refusal(export_dir, f"holds another export ({where})")
    if params_lib.PARAMS_FILENAME in files and where != ASSETS_EXTRA:
      raise _refusal(export_dir, f"holds a model_dir ({where}/{params_lib.PARAMS_FILENAME})")
    if "checkpoint" in files or any(re.fullmatch(r"ckpt-.*\.index", f) for f in files):
      raise _refusal(export_dir, f"holds checkpoints (in {where})")
    numbered = sorted(f for f in folders if f.isdigit())
    if numbered:
      raise _refusal(export_dir, f"holds numbered versions ({os.path.join(where, numbered[0])})")


def check_export_dir(export_dir, overwrite=False):
  """Checks that export_dir may be written: it must not exist, or with `overwrite` it must be an
  export folder of this project (EXPORT_MARKER at its top) and hold no model_dir, checkpoints,
  numbered versions or other export.

  Raises:
    UserError (param export_dir): one line saying why not.
  """
  if not export_dir:
    raise UserError("export_dir=: missing; name the folder to write", param="export_dir")
  if not os.path.lexists(export_dir):
    return
  if not overwrite:
    raise UserError(f"export_dir={export_dir}: already exists; choose a new folder, or pass "
                    f"overwrite to replace an earlier export", param="export_dir")
  _check_replaceable(export_dir)


def next_version_dir(export_base):
  """export_base/<next free integer version> (TF Serving's layout: the largest version + 1, or 1).

  Raises:
    UserError (param export_base): export_base is a file, or a model_dir (params.json or
      checkpoints in it).
  """
  if not os.path.exists(export_base):
    return os.path.join(export_base, "1")
  if not os.path.isdir(export_base):
    raise UserError(f"export_base={export_base}: not a folder", param="export_base")
  names = os.listdir(export_base)
  if params_lib.PARAMS_FILENAME in names or "checkpoint" in names or any(
      re.fullmatch(r"ckpt-.*\.index", n) for n in names):
    raise UserError(f"export_base={export_base}: is a model_dir (params.json or checkpoints); "
                    f"choose a folder for exports only", param="export_base")
  versions = [int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(export_base, n))]
  return os.path.join(export_base, str(max(versions, default=0) + 1))


def _write_export(trained, folder):
  """Writes the SavedModel, assets.extra and the marker of `trained` into the new `folder`."""
  size = trained.image_size
  from_bytes, from_images = serving_functions(trained)
  archive = keras.export.ExportArchive()
  archive.track(trained.network)
  archive.add_endpoint(SERVING_DEFAULT, from_bytes,
                       input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
  archive.add_endpoint(SERVING_PREPROCESSED, from_images,
                       input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32,
                                                      name="images")])
  archive.write_out(folder, verbose=False)
  extra = os.path.join(folder, ASSETS_EXTRA)
  os.makedirs(extra, exist_ok=True)
  atomic_write(os.path.join(extra, params_lib.PARAMS_FILENAME),
               json.dumps(trained.params.to_dict(), indent=2, sort_keys=True))
  if trained.label_map_path:
    shutil.copy(trained.label_map_path, os.path.join(extra, dataloader.LABEL_MAP_FILENAME))
  marker = {"model_dir": os.path.abspath(trained.model_dir), "checkpoint": trained.checkpoint_path,
            "global_step": trained.global_step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "signatures": [SERVING_DEFAULT, SERVING_PREPROCESSED]}
  atomic_write(os.path.join(folder, EXPORT_MARKER), json.dumps(marker, indent=2))


def export_saved_model(trained, export_dir, overwrite=False):
  """Writes the export folder of `trained` (module docstring) to export_dir; returns export_dir.

  The folder is written under a temporary name and renamed when complete; with `overwrite`, an
  earlier export there (see check_export_dir) is replaced only then.

  Args:
    trained: TrainedModel.
    export_dir: local folder; see check_export_dir.
    overwrite: replace an earlier export of this project.
  Raises:
    UserError (param export_dir): export_dir exists and may not be replaced.
  """
  check_export_dir(export_dir, overwrite)
  previous = None
  try:
    with atomic_path(export_dir) as temporary:
      _write_export(trained, temporary)
      if os.path.lexists(export_dir):
        check_export_dir(export_dir, overwrite)  # again: it may have changed meanwhile
        previous = f"{export_dir.rstrip('/')}.old-{os.getpid()}"
        os.rename(export_dir, previous)
  except BaseException:
    if previous and not os.path.lexists(export_dir):
      os.rename(previous, export_dir)
    raise
  if previous:
    shutil.rmtree(previous)
  logging.info("Wrote the SavedModel %s (signatures %s, %s; step %s).", export_dir, SERVING_DEFAULT,
               SERVING_PREPROCESSED, trained.global_step)
  return export_dir


# ------------------------------------------------------------------------------------------------
# TFLite: conversion, and running with LiteRT.


def representative_images(params, num_examples=DEFAULT_REPRESENTATIVE_EXAMPLES, file_pattern=None):
  """The first `num_examples` images of `file_pattern` (default: the training records) through
  the evaluation preprocessing (the input of an int8 model's calibration): float32 numpy
  [n, S, S, 3], n <= num_examples.

  Raises:
    UserError: no records (file_pattern, else params.run.train_file_pattern, unset or matching no
      file: an imported model has none), or num_examples < 1.
  """
  if num_examples < 1:
    raise UserError(f"representative_examples={num_examples}: expected at least 1",
                    param="representative_examples")
  if file_pattern:
    if not tf.io.gfile.glob(file_pattern):
      raise UserError(f"representative_file_pattern={file_pattern}: matches no file",
                      param="representative_file_pattern")
    pattern = file_pattern
  else:
    pattern = params.run.train_file_pattern
    if not pattern or not tf.io.gfile.glob(pattern):
      raise UserError(f"quantize=int8: its calibration reads the training records, and the "
                      f"model's train_file_pattern={pattern} matches no file; pass "
                      f"representative_file_pattern", param="quantize")
  m = params.model
  dataset = dataloader.input_fn(pattern, False, params.input, m.image_size, 1, m.num_classes)
  with dataloader.user_errors_from_data():
    images = [features["image"][0].numpy() for features, _ in dataset.take(num_examples)]
  if not images:
    raise UserError(f"quantize=int8: no readable training record in {pattern}", param="quantize")
  return np.stack(images)


def convert_tflite(saved_model_dir, quantization=None, representative=None):
  """The serving_preprocessed signature of a SavedModel as TFLite flatbuffer bytes.

  Args:
    saved_model_dir: written by export_saved_model.
    quantization: None (float32); "float16" (weights in float16, about 2x smaller, float compute);
      "dynamic_range" (8-bit weights, float activations, about 4x smaller); "int8" (full integer:
      weights and activations int8, input images and float outputs int8 with the quantization
      parameters of the model's input/output tensors; top_1 and top_5 stay int32).
    representative: for "int8", float32 numpy [n, S, S, 3] calibration images
      (representative_images).
  Raises:
    UserError: the converter failed (the SavedModel itself is complete).
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                       signature_keys=[SERVING_PREPROCESSED])
  if quantization is not None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == "float16":
    converter.target_spec.supported_types = [tf.float16]
  elif quantization == "int8":
    converter.representative_dataset = lambda: ({"images": image[np.newaxis]}
                                                 for image in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
  try:
    with warnings.catch_warnings():
      # The int8 calibration of TensorFlow's converter runs TensorFlow's own tf.lite.Interpreter,
      # which warns that it is deprecated; the converter has no LiteRT option. Our models run in
      # LiteRT's interpreter (load_lite_model).
      warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated")
      return converter.convert()
  except Exception as e:  # the converter raises unrelated types (ConverterError, ValueError, ...)
    raise UserError(f"TFLite conversion ({quantization or 'float32'}) of {saved_model_dir} failed "
                    f"({type(e).__name__}: {one_line(e)}); the SavedModel is complete") from e


def write_tflite(saved_model_dir, quantization=None, representative=None):
  """Converts (convert_tflite) and writes saved_model_dir/TFLITE_FILENAMES[quantization]
  atomically; returns its path."""
  content = convert_tflite(saved_model_dir, quantization, representative)
  path = atomic_write(os.path.join(saved_model_dir, TFLITE_FILENAMES[quantization]), content)
  logging.info("Wrote %s (%s, %.1f KiB).", path, quantization or "float32", len(content) / 1024)
  write_tflite_metadata(path)
  return path


def app_metadata(classifier):
  """What an app needs besides the model file to feed it: preprocessing, image_size (pixels),
  mean_rgb and std_rgb (the input is (0..255 RGB - mean_rgb) / std_rgb per channel) and labels
  (class names in class_idx order, or None), of a Classifier. Written beside the .tflite files and
  into model.onnx's metadata."""
  mean, std = dataloader.normalization(classifier.params.input)
  return {"preprocessing": classifier.params.input.preprocessing,
          "image_size": classifier.image_size,
          "mean_rgb": list(mean), "std_rgb": list(std),
          "labels": [e.name for e in classifier.label_map] if classifier.label_map else None}


def write_tflite_metadata(tflite_path):
  """Writes `<model>.json` beside a .tflite file of an export folder (atomically): what an app needs
  to feed it. Keys: model, quantization ("float32", "float16", ...), input {dtype, shape, scale,
  zero_point} (scale 0 and zero point 0 for float inputs: real = scale * (q - zero_point)), and
  those of app_metadata. Returns the JSON file's path."""
  lite = load_lite_model(tflite_path)
  details = lite.runner.get_input_details()["images"]
  scale, zero_point = details["quantization"]
  name = os.path.basename(tflite_path)
  metadata = {
      "model": name,
      "quantization": next((q or "float32" for q, f in TFLITE_FILENAMES.items() if f == name), None),
      "input": {"dtype": np.dtype(details["dtype"]).name, "shape": [int(d) for d in details["shape"]],
                "scale": float(scale), "zero_point": int(zero_point)},
      **app_metadata(lite),
  }
  return atomic_write(os.path.splitext(tflite_path)[0] + ".json", json.dumps(metadata, indent=2))


@dataclasses.dataclass
class LiteModel(Classifier):
  """A .tflite file of export_saved_model run by LiteRT's interpreter (see load_lite_model).

  Attributes (besides Classifier's):
    runner: the interpreter's serving_preprocessed SignatureRunner.
  """
  runner: object = None

  def model_input(self, images):
    """float32 numpy [N, S, S, 3] (preprocessed) -> the model's input: the same images, or for an
    integer input (int8) quantized with its scale and zero point (round, clip to the type)."""
    details = self.runner.get_input_details()["images"]
    images = np.asarray(images, np.float32)
    if np.issubdtype(details["dtype"], np.integer):
      scale, zero_point = details["quantization"]
      info = np.iinfo(details["dtype"])
      images = np.clip(np.round(images / scale + zero_point), info.min, info.max)
    return images.astype(details["dtype"])

  def invoke(self, model_input):
    """Runs the interpreter on a model_input; returns its raw outputs (dict of numpy)."""
    return self.runner(images=model_input)

  def predict_batch(self, images):
    """Quantizes the images for an integer input (model_input) and dequantizes integer float
    outputs (probabilities, logits), so the result has the dtypes of the module docstring."""
    outputs = self.invoke(self.model_input(images))
    output_details = self.runner.get_output_details()
    result = {}
    for name, value in outputs.items():
      scale, zero_point = output_details[name]["quantization"]
      if name in ("probabilities", "logits") and scale:
        value = (value.astype(np.float32) - zero_point) * np.float32(scale)
      result[name] = value
    return result


def load_lite_model(tflite_path, model_dir=None, label_map=None, num_threads=None):
  """Loads a .tflite file written by export for LiteRT (ai_edge_litert.interpreter.Interpreter).

  Args:
    tflite_path: a TFLITE_FILENAMES file of an export folder.
    model_dir: optional model_dir of the params and label map; default the export folder's
      assets.extra (params.json, labels.txt).
    label_map: optional labels.txt (else searched as find_label_map says, model_dir last).
    num_threads: interpreter threads (None: LiteRT's default).
  Returns:
    LiteModel.
  Raises:
    UserError: the file cannot be loaded, no params are found, or its input or class count differs
      from the params'.
  """
  params, params_dir = _artefact_params(tflite_path, "tflite", ".tflite", model_dir)
  try:
    runner = _signature_runner(tflite_path, num_threads)
  except (ValueError, RuntimeError) as e:
    raise UserError(f"tflite={tflite_path}: cannot be loaded ({one_line(e)})",
                    param="tflite") from e
  shape = list(runner.get_input_details()["images"]["shape"][1:])
  classes = runner.get_output_details()["probabilities"]["shape"][-1]
  entries, label_map_path = _artefact_label_map(tflite_path, "tflite", params, params_dir,
                                                (shape, classes), label_map)
  return LiteModel(params, entries, label_map_path, tflite_path, runner=runner)


def _artefact_params(path, param, kind, model_dir):
  """(params, params_dir) for a model file of an export folder (.tflite, .onnx): the params.json of
  model_dir, else of the export folder's assets.extra, in float32.

  Raises:
    UserError (param): the file is missing, a folder or unreadable; no params.json is found.
  """
  if not os.path.isfile(path) or not os.access(path, os.R_OK):
    reason = (f"is a folder, not a {kind} file" if os.path.isdir(path) else
              "cannot be read (permission denied)" if os.path.exists(path) else "no such file")
    raise UserError(f"{param}={path}: {reason}", param=param)
  params_dir = model_dir or os.path.join(os.path.dirname(os.path.abspath(path)), ASSETS_EXTRA)
  try:
    return params_lib.load_params(params_dir).replace_model(dtype="float32"), params_dir
  except UserError as e:
    if model_dir:
      raise
    raise UserError(f"{param}={path}: no params.json in {params_dir} (not in an export "
                    f"folder?); pass model_dir", param=param) from e


def _artefact_label_map(path, param, params, params_dir, contract, label_map=None):
  """(label map entries or None, its path or None) of a model file once its `contract` (image
  shape [S, S, 3] as a list, number of classes) is checked against the params.

  Raises:
    UserError (param): the file takes other images or gives other classes; a bad label map.
  """
  shape, classes = contract
  m = params.model
  if list(shape) != [m.image_size, m.image_size, 3] or classes != m.num_classes:
    raise UserError(f"{param}={path}: takes {list(shape)} images into {classes} classes, but the "
                    f"params of {params_dir} say {m.image_size}x{m.image_size}x3 and "
                    f"{m.num_classes}", param=param)
  label_map_path = find_label_map(params_dir, params, label_map)
  return read_label_map(label_map_path, m.num_classes), label_map_path


def _signature_runner(tflite_path, num_threads):
  """The serving_preprocessed SignatureRunner of a .tflite file. LiteRT applies its XNNPACK delegate
  by default; on a model that delegate cannot prepare (seen: the int8 model of a briefly trained
  tiny network), the built-in kernels run it instead, with a warning. Raises ValueError or
  RuntimeError for a file LiteRT cannot load."""
  from ai_edge_litert import interpreter as litert  # pylint: disable=import-outside-toplevel
  interpreter = litert.Interpreter(model_path=tflite_path, num_threads=num_threads)
  try:
    interpreter.allocate_tensors()
  except RuntimeError as e:
    if "XNNPACK" not in str(e):
      raise
    logging.warning("%s: LiteRT's XNNPACK delegate cannot run this model (%s); using the built-in "
                    "kernels, which are slower.", tflite_path, one_line(e, 120))
    interpreter = litert.Interpreter(
        model_path=tflite_path, num_threads=num_threads,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
  return interpreter.get_signature_runner(SERVING_PREPROCESSED)


# ------------------------------------------------------------------------------------------------
# ONNX: conversion with tf2onnx, and running with ONNX Runtime (optional packages).

ONNX_FILENAME = "model.onnx"
# The optional packages of ONNX export and ONNX Runtime, pinned together.
ONNX_REQUIREMENTS = "requirements-onnx.txt"
# Opset 17 (ONNX 1.12, 2022) has every op of this network (Conv, MaxPool, GlobalAveragePool, MatMul,
# Softmax, TopK, ArgMax, Gather). Runtimes and converters (OpenVINO, TensorRT, CoreML's) lag behind
# ONNX's newest opset; an older one keeps the file readable by more of them, and a newer one adds
# nothing this network uses.
ONNX_OPSET = 17
# The symbolic first dimension (the batch) of the ONNX model's input and outputs.
ONNX_BATCH = "batch"


def require_packages(names, what, param=None):
  """Imports optional packages of ONNX_REQUIREMENTS; returns their modules, in order.

  Args:
    names: module names, e.g. ("tf2onnx", "onnx").
    what: the start of the message, e.g. "ONNX conversion".
    param: the UserError's param.
  Raises:
    UserError: some are not installed ("<what> needs the optional package(s) ...: pip install -r
      requirements-onnx.txt").
  """
  modules, missing = [], []
  for name in names:
    try:
      modules.append(importlib.import_module(name))
    except ImportError:
      missing.append(name)
  if missing:
    raise UserError(f"{what} needs the optional package{'s' * (len(missing) > 1)} "
                    f"{', '.join(missing)}, not installed here: pip install -r "
                    f"{ONNX_REQUIREMENTS}", param=param)
  return modules


@contextlib.contextmanager
def _tensorflow_warnings_hidden():
  """Hides TensorFlow's Python warnings (tf2onnx freezes graphs through TF1 functions that TF marks
  deprecated, one warning each); restores the level after."""
  logger = tf.get_logger()
  level = logger.level
  logger.setLevel("ERROR")
  try:
    yield
  finally:
    logger.setLevel(level)


def convert_onnx(saved_model_dir):
  """The serving_preprocessed signature of an export folder's SavedModel as an ONNX model.

  The contract of the TFLite files: input `images` float32 [batch, S, S, 3], preprocessed (RGB
  minus mean, as scripts.predict does); outputs the signature's (top_1 int32 [batch], top_5 int32
  [batch, min(5, K)], probabilities and logits float32 [batch, K], with a label map top_1_name and
  top_5_names strings). `batch` (ONNX_BATCH) is symbolic: any batch size runs. The model's
  metadata_props hold app_metadata's keys, JSON-encoded.

  tf2onnx reads the SavedModel as `python -m tf2onnx.convert --saved-model` does (tf_loader, which
  freezes the signature's captured tensors, such as the class names, into constants), not through
  tf2onnx.convert.from_keras, which fails on Keras 3 models (onnx/tensorflow-onnx#2329, #2348;
  PR #2398 is unmerged). tf2onnx 1.17.0 is the first release that accepts TensorFlow 2.21's protobuf
  and numpy 2 (requirements-onnx.txt).

  Args:
    saved_model_dir: an export folder (export_saved_model).
  Returns:
    onnx.ModelProto, checked by onnx.checker (every op defined by ONNX at ONNX_OPSET).
  Raises:
    UserError: tf2onnx or onnx is not installed, or the conversion failed (the SavedModel is
      complete).
  """
  tf2onnx, onnx = require_packages(("tf2onnx", "onnx"), "ONNX conversion", param="onnx")
  classifier = export_classifier(saved_model_dir)
  try:
    with _tensorflow_warnings_hidden():
      graph_def, inputs, outputs, renames = tf2onnx.tf_loader.from_saved_model(
          saved_model_dir, None, None, tag=["serve"], signatures=[SERVING_PREPROCESSED],
          return_tensors_to_rename=True)
      proto, _ = tf2onnx.convert.from_graph_def(
          graph_def, name=SERVING_PREPROCESSED, input_names=inputs, output_names=outputs,
          tensors_to_rename=renames, opset=ONNX_OPSET)
    for value in [*proto.graph.input, *proto.graph.output]:
      value.type.tensor_type.shape.dim[0].dim_param = ONNX_BATCH  # tf2onnx names it unk__<n>
    onnx.helper.set_model_props(proto, {key: json.dumps(value) for key, value
                                        in app_metadata(classifier).items()})
    # tf2onnx keeps an op it cannot convert as it is (continue_on_error); the checker refuses it.
    onnx.checker.check_model(proto, full_check=True)
  except Exception as e:  # tf2onnx and onnx raise unrelated types (ValueError, ValidationError)
    raise UserError(f"ONNX conversion of {saved_model_dir} failed ({type(e).__name__}: "
                    f"{one_line(e)}); the SavedModel is complete", param="onnx") from e
  return proto


def write_onnx(saved_model_dir):
  """Converts (convert_onnx) and writes saved_model_dir/ONNX_FILENAME atomically; returns its
  path."""
  content = convert_onnx(saved_model_dir).SerializeToString()
  path = atomic_write(os.path.join(saved_model_dir, ONNX_FILENAME), content)
  logging.info("Wrote %s (ONNX opset %d, %.1f KiB).", path, ONNX_OPSET, len(content) / 1024)
  return path


@dataclasses.dataclass
class OnnxModel(Classifier):
  """A model.onnx of an export folder run by ONNX Runtime on the CPU (see load_onnx_model).

  Attributes (besides Classifier's):
    session: the onnxruntime.InferenceSession.
  """
  session: object = None

  def model_input(self, images):
    """float32 numpy [N, S, S, 3] (preprocessed) -> the model's input (the same, float32)."""
    return np.asarray(images, np.float32)

  def invoke(self, model_input):
    """Runs the session on a model_input; returns its outputs (dict of numpy; strings as str)."""
    names = [output.name for output in self.session.get_outputs()]
    return dict(zip(names, self.session.run(names, {"images": model_input})))

  def predict_batch(self, images):
    return self.invoke(self.model_input(images))


def load_onnx_model(onnx_path, model_dir=None, label_map=None, num_threads=None):
  """Loads a model.onnx written by export for ONNX Runtime (CPUExecutionProvider).

  Args:
    onnx_path: the ONNX_FILENAME file of an export folder (or one with its contract).
    model_dir, label_map: as load_lite_model's.
    num_threads: intra-op threads (None: ONNX Runtime's default, one per core).
  Returns:
    OnnxModel.
  Raises:
    UserError (param onnx): onnxruntime is not installed; the file is missing or cannot be loaded;
      no params are found; its input is not `images` [batch, S, S, 3] into K classes of the params.
  """
  ort, = require_packages(("onnxruntime",), f"onnx={onnx_path}: running it", param="onnx")
  params, params_dir = _artefact_params(onnx_path, "onnx", ".onnx", model_dir)
  options = ort.SessionOptions()
  options.intra_op_num_threads = num_threads or 0  # 0: ONNX Runtime's default
  options.inter_op_num_threads = 1  # the graph is one chain: no parallel branches to run
  try:
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
  except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base
    raise UserError(f"onnx={onnx_path}: cannot be loaded ({one_line(e)})", param="onnx") from e
  inputs = {i.name: i.shape for i in session.get_inputs()}
  outputs = {o.name: o.shape for o in session.get_outputs()}
  if list(inputs) != ["images"] or "probabilities" not in outputs:
    raise UserError(f"onnx={onnx_path}: has inputs {list(inputs)} and outputs {list(outputs)}, "
                    f"not those of an export (images -> top_1, top_5, probabilities, logits)",
                    param="onnx")
  entries, label_map_path = _artefact_label_map(
      onnx_path, "onnx", params, params_dir, (inputs["images"][1:], outputs["probabilities"][-1]),
      label_map)
  return OnnxModel(params, entries, label_map_path, onnx_path, session=session)


# ------------------------------------------------------------------------------------------------
# What an export keeps: accuracy, size and speed of each artefact on the validation records.

ACCURACY_FILENAME = "accuracy.json"
DEFAULT_LATENCY_RUNS = 50
DEFAULT_MAX_TOP1_DROP = 1.0  # percentage points of top-1 accuracy
SAVED_MODEL_ROW = "SavedModel"
# The files of the SavedModel proper in an export folder (what TF Serving loads).
_SAVED_MODEL_PARTS = ("saved_model.pb", "fingerprint.pb", "variables", "assets")


@dataclasses.dataclass
class SavedModelClassifier(Classifier):
  """The serving_preprocessed signature of an export folder's SavedModel (load_saved_model).

  Attributes (besides Classifier's):
    signature: the concrete function images float32 [N, S, S, 3] -> dict of outputs.
  """
  signature: object = None

  def model_input(self, images):
    """float32 numpy [N, S, S, 3] -> the signature's input tensor."""
    return tf.constant(images, tf.float32)

  def invoke(self, model_input):
    """Runs the signature on a model_input; returns its outputs (dict of tensors)."""
    return self.signature(images=model_input)

  def predict_batch(self, images):
    outputs = self.invoke(self.model_input(images))
    return {k: v.numpy() for k, v in outputs.items()}


def export_classifier(export_dir):
  """The params and label map of an export folder's assets.extra, without its model: a Classifier
  (for app_metadata).

  Raises:
    UserError (param export_dir): no params.json in assets.extra; a bad label map.
  """
  extra = os.path.join(export_dir, ASSETS_EXTRA)
  try:
    params = params_lib.load_params(extra).replace_model(dtype="float32")
  except UserError as e:
    raise UserError(f"export_dir={export_dir}: not an export folder ({one_line(e)})",
                    param="export_dir") from e
  label_map_path = find_label_map(extra, params)
  entries = read_label_map(label_map_path, params.model.num_classes)
  return Classifier(params, entries, label_map_path, export_dir)


def load_saved_model(export_dir):
  """Loads the SavedModel of an export folder (export_saved_model) with its assets.extra params
  and label map; returns a SavedModelClassifier.

  Raises:
    UserError (param export_dir): no params.json in assets.extra, or no SavedModel there.
  """
  info = export_classifier(export_dir)
  try:
    loaded = tf.saved_model.load(export_dir)
  except (OSError, tf.errors.OpError) as e:
    raise UserError(f"export_dir={export_dir}: not an export folder ({one_line(e)})",
                    param="export_dir") from e
  return SavedModelClassifier(info.params, info.label_map, info.label_map_path, export_dir,
                              signature=loaded.signatures[SERVING_PREPROCESSED])


def folder_size(path):
  """Total size in bytes of the files under `path` (a file: its own size)."""
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def saved_model_size(export_dir):
  """Size in bytes of the SavedModel of an export folder: saved_model.pb, fingerprint.pb,
  variables/ and assets/ (not the TFLite files, assets.extra or the marker beside them)."""
  return sum(folder_size(os.path.join(export_dir, part)) for part in _SAVED_MODEL_PARTS
             if os.path.exists(os.path.join(export_dir, part)))


def median_latency_ms(call, runs):
  """Median wall time in milliseconds of `runs` calls of `call()` (after one untimed warm-up)."""
  call()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1000.0


def check_validation_pattern(file_pattern):
  """Returns file_pattern when it matches a file.

  Raises:
    UserError (param validation_file_pattern): it is empty or matches no file.
  """
  if not file_pattern or not tf.io.gfile.glob(file_pattern):
    raise UserError(f"validation_file_pattern={file_pattern}: matches no file; expected the "
                    f"TFRecords of the validation images", param="validation_file_pattern")
  return file_pattern


@dataclasses.dataclass
class ArtefactRow:
  """One row of the accuracy table of an export (evaluate_export).

  Attributes:
    artefact: str, "SavedModel", "TFLite <float32|float16|dynamic_range|int8>" or "ONNX".
    file: str, the file(s) measured, relative to the export folder.
    top_1, top_5: float in [0, 1], accuracy on the validation images (top_5: the label among the
      min(5, K) best classes).
    top_1_agreement: float in [0, 1], the fraction of images whose top-1 equals the float
      SavedModel's.
    size_bytes: int, the file's size (SavedModel: saved_model_size).
    latency_ms: float, median milliseconds per image at batch 1 on this CPU.
    runtime: str, "TensorFlow" (SavedModel), "LiteRT" (interpreter of ai_edge_litert) or
      "ONNX Runtime" (onnxruntime, CPU).
    threads: int, the runtime's threads during the latency runs.
    logit_error: float >= 0, the largest difference of a logit from the SavedModel's over the
      validation images, as a fraction of the range (max - min) of the SavedModel's logits; None
      when not measured.
  """
  artefact: str
  file: str
  top_1: float
  top_5: float
  top_1_agreement: float
  size_bytes: int
  latency_ms: float
  runtime: str
  threads: int
  logit_error: float | None = None


@dataclasses.dataclass
class ExportEvaluation:
  """The accuracy table of an export: rows (list of ArtefactRow, the SavedModel first), the
  validation_file_pattern and num_images read, latency_runs (batch 1, median) and max_top1_drop
  (percentage points; warnings)."""
  export_dir: str
  validation_file_pattern: str
  num_images: int
  latency_runs: int
  max_top1_drop: float
  rows: list

  def warnings(self):
    """One line per row losing more than max_top1_drop points of top-1 against the SavedModel."""
    base = self.rows[0].top_1
    return [f"{row.artefact} loses {100 * (base - row.top_1):.2f} points of top-1 against the "
            f"SavedModel ({100 * base:.2f}% -> {100 * row.top_1:.2f}%), more than "
            f"max_top1_drop={self.max_top1_drop:g}" for row in self.rows[1:]
            if 100 * (base - row.top_1) > self.max_top1_drop + 1e-9]

  def to_dict(self):
    """The JSON form written to ACCURACY_FILENAME (rows as dicts, warnings included)."""
    return {"export_dir": os.path.abspath(self.export_dir),
            "validation_file_pattern": self.validation_file_pattern,
            "num_images": self.num_images,
            "latency": {"batch_size": 1, "statistic": "median", "runs": self.latency_runs,
                        "unit": "milliseconds per image"},
            "max_top1_drop": self.max_top1_drop,
            "rows": [dataclasses.asdict(row) for row in self.rows],
            "warnings": self.warnings()}


def _artefacts(export_dir, num_threads):
  """[(name, file, classifier, size_bytes, runtime, threads)] of the export's SavedModel,
  every TFLite file present (in TFLITE_FILENAMES order) and model.onnx when present."""
  tf_threads = (tf.config.threading.get_intra_op_parallelism_threads()
                or len(os.sched_getaffinity(0)))
  artefacts = [(SAVED_MODEL_ROW, "saved_model.pb + variables/", load_saved_model(export_dir),
                saved_model_size(export_dir), "TensorFlow", tf_threads)]
  for quantization, filename in TFLITE_FILENAMES.items():
    path = os.path.join(export_dir, filename)
    if os.path.exists(path):
      lite = load_lite_model(path, num_threads=num_threads)
      artefacts.append((f"TFLite {quantization or 'float32'}", filename, lite,
                        os.path.getsize(path), "LiteRT", num_threads))
  path = os.path.join(export_dir, ONNX_FILENAME)
  if os.path.exists(path):
    artefacts.append(("ONNX", ONNX_FILENAME, load_onnx_model(path, num_threads=num_threads),
                      os.path.getsize(path), "ONNX Runtime", num_threads))
  return artefacts


def _validation_predictions(classifiers, params, file_pattern, batch_size):
  """One pass over the validation records through the evaluation preprocessing (input_fn), every
  classifier on every batch. Returns (labels int [n], one dict per classifier of top_1 int [n],
  top_5 int [n, k] and logits float32 [n, K], first image float32 [1, S, S, 3])."""
  m = params.model
  dataset = dataloader.input_fn(file_pattern, False, params.input, m.image_size, batch_size,
                                m.num_classes)
  keys = ("top_1", "top_5", "logits")
  labels, outputs, first = [], [{k: [] for k in keys} for _ in classifiers], None
  with dataloader.user_errors_from_data():
    for features, targets in dataset:
      images = features["image"].numpy()
      first = images[:1] if first is None else first
      labels.append(targets["class_idx"].numpy())
      for classifier, output in zip(classifiers, outputs):
        predictions = classifier.predict_batch(images)
        for k in keys:
          output[k].append(predictions[k])
  if first is None:
    raise UserError(f"validation_file_pattern={file_pattern}: no readable record",
                    param="validation_file_pattern")
  return (np.concatenate(labels),
          [{k: np.concatenate(v) for k, v in output.items()} for output in outputs], first)


def evaluate_export(export_dir, file_pattern, latency_runs=DEFAULT_LATENCY_RUNS, num_threads=1,
                    max_top1_drop=DEFAULT_MAX_TOP1_DROP, batch_size=32):
  """Accuracy, size and speed of every artefact of an export folder on validation records.

  The SavedModel (serving_preprocessed signature), each TFLite file present (LiteRT; int8
  inputs quantized as for predict) and model.onnx when present (ONNX Runtime) classify the records
  of file_pattern through the evaluation preprocessing of training (dataloader.input_fn, one pass);
  then each runs the first image at batch 1, `latency_runs` times.

  Args:
    export_dir: written by export_saved_model (and write_tflite, write_onnx).
    file_pattern: glob of validation TFRecords.
    latency_runs: int >= 1, timed runs per artefact (median reported, milliseconds).
    num_threads: int >= 1, threads of LiteRT's interpreter and ONNX Runtime (the SavedModel uses
      TensorFlow's).
    max_top1_drop: float >= 0, percentage points of top-1 a variant may lose without a warning.
    batch_size: int, images per batch of the accuracy pass.
  Returns:
    ExportEvaluation.
  Raises:
    UserError: a bad argument, a pattern matching no file or no readable record, bad records;
      model.onnx without onnxruntime installed.
  """
  for name, value, least in (("latency_runs", latency_runs, 1), ("num_threads", num_threads, 1),
                             ("max_top1_drop", max_top1_drop, 0)):
    if value < least:
      raise UserError(f"{name}={value}: expected at least {least}", param=name)
  check_validation_pattern(file_pattern)
  artefacts = _artefacts(export_dir, num_threads)
  classifiers = [a[2] for a in artefacts]
  labels, outputs, first = _validation_predictions(classifiers, classifiers[0].params,
                                                   file_pattern, batch_size)
  base = outputs[0]
  logit_range = float(np.ptp(base["logits"])) or 1.0  # 1: all logits equal (an untrained model)
  rows = []
  for (name, filename, classifier, size, runtime, threads), output in zip(artefacts, outputs):
    call = functools.partial(classifier.invoke, classifier.model_input(first))
    logit_error = float(np.max(np.abs(output["logits"] - base["logits"]))) / logit_range
    rows.append(ArtefactRow(name, filename, float(np.mean(output["top_1"] == labels)),
                            float(np.mean((output["top_5"] == labels[:, np.newaxis]).any(axis=1))),
                            float(np.mean(output["top_1"] == base["top_1"])), int(size),
                            median_latency_ms(call, latency_runs), runtime, int(threads),
                            logit_error))
  return ExportEvaluation(export_dir, file_pattern, len(labels), latency_runs, max_top1_drop, rows)


def format_accuracy_table(evaluation):
  """The table of an ExportEvaluation as markdown lines (a heading line, then the table)."""
  header = ("artefact", "file", "top-1", "top-5", "top-1 agreement", "size (bytes)",
            "latency (ms/image)", "runtime (threads)", "logit error")
  cells = [header] + [(r.artefact, r.file, f"{100 * r.top_1:.2f}%", f"{100 * r.top_5:.2f}%",
                       f"{100 * r.top_1_agreement:.2f}%", str(r.size_bytes),
                       f"{r.latency_ms:.3f}", f"{r.runtime} ({r.threads})",
                       "-" if r.logit_error is None else f"{r.logit_error:.1e}")
                      for r in evaluation.rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
  rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  title = (f"Accuracy on {evaluation.num_images} validation images "
           f"({evaluation.validation_file_pattern}); latency: median of {evaluation.latency_runs} "
           f"runs at batch 1 on this CPU; agreement: top-1 equal to the SavedModel's; logit "
           f"error: largest difference from the SavedModel's logits, as a fraction of their "
           f"range.")
  return "\n".join([title, "", line(cells[0]), rule, *map(line, cells[1:])])


def write_accuracy_json(evaluation):
  """Writes evaluation.to_dict() to <export_dir>/ACCURACY_FILENAME atomically; returns its path."""
  path = os.path.join(evaluation.export_dir, ACCURACY_FILENAME)
  return atomic_write(path, json.dumps(evaluation.to_dict(), indent=2) + "\n")
