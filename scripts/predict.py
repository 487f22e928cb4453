r"""Classifies image files with a trained model.

  python scripts/predict.py --model_dir runs/demo photo.jpg photos/   # a folder: all images in it
  python scripts/predict.py --model_dir runs/demo --json photos/ > predictions.jsonl

Restores the latest checkpoint of model_dir with the params train.py saved there
(model_dir/params.json: configuration, class count, image size, preprocessing, mean) and applies
exactly the evaluation preprocessing of training, `dataloader.preprocess_image(..., training=False)`
(caffe: resize to round(S * 256 / 227) square, central S x S crop, RGB mean subtracted; inception:
short side to S / 0.875, central crop). The predictions are those of model.model_fn's PREDICT
branch, the one Estimator.predict runs.

Output, in the order of the arguments (folders expanded recursively, file names sorted): the top-5
classes of each image with their probabilities and, when a label map is found, class names.
With --json, one JSON object per image and line:
  {"image": "a.jpg", "top_5": [{"class_idx": 3, "probability": 0.91, "name": "n01443537",
                                "text": "goldfish, Carassius auratus"}, ...]}
  {"image": "b.jpg", "error": "cannot decode image: ..."}
An image that is missing or cannot be decoded gets such an error line and the other images are
still classified; the exit status is then 1 (2 for a user error such as a bad --model_dir).

Label map (labels.txt, format in dataloader.py), the first found of: --label_map;
params["label_map"] (the demo sets it); labels.txt beside the training or validation records;
labels.txt in model_dir. Without one, classes are shown by index (class_idx = record label - 1).

Speed: images are read and preprocessed on a thread pool (TensorFlow's kernels release the GIL)
while the previous batch runs through the network. tf.data is not used here because it cannot
report which image failed and why without stopping the whole pass.
"""

import collections
import concurrent.futures
import dataclasses
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dataloader  # noqa: E402
import model  # noqa: E402
from tools import cli  # noqa: E402
from tools import estimator as estimator_lib  # noqa: E402
from tools.cli import UserError  # noqa: E402

FLAGS = flags.FLAGS

# What a folder argument is searched for (case-insensitive): the formats preprocess_image decodes.
# Files named explicitly are always tried.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
PARAMS_FILENAME = "params.json"  # written by train.write_params
TOP_K = 5
# The evaluation preprocessing draws nothing from its seed; a constant one keeps stateful random ops
# out of the traced (and exported) graphs.
_EVAL_SEED = (0, 0)
# Seconds between progress lines.
_PROGRESS_INTERVAL = 10.0


def _define_flags():
  """Defines the command-line flags; only when run as a script, so that export.py and the tests
  can import this module next to other entry points."""
  flags.DEFINE_string("model_dir", None, "Folder of the trained model (checkpoints, params.json).")
  flags.DEFINE_string("label_map", None,
                      "labels.txt giving class names (default: found from params.json).")
  flags.DEFINE_integer("batch_size", 64, "Images per forward pass.")
  flags.DEFINE_integer("num_threads", 0, "Threads reading and preprocessing (0: one per core).")
  flags.DEFINE_boolean("json", False, "Print one JSON object per image and line instead of text.")


# ------------------------------------------------------------------------------------------------
# The trained model.


@dataclasses.dataclass
class TrainedModel:
  """A restored model.

  Attributes:
    model_dir: str.
    params: dict, model_dir/params.json with dtype set to float32.
    scaffold: tools.estimator.Scaffold made by model.scaffold_fn; its network holds the weights of
      the checkpoint (the optimizer's state is not restored).
    checkpoint_path: str, the checkpoint restored (model_dir/ckpt-<step>).
    global_step: int, the training step of that checkpoint.
    label_map: list of dataloader.LabelEntry (entry i is class_idx i), or None.
    label_map_path: str or None, where label_map was read from.
  """
  model_dir: str
  params: dict
  scaffold: estimator_lib.Scaffold
  checkpoint_path: str
  global_step: int
  label_map: list | None
  label_map_path: str | None

  @property
  def network(self):
    """The restored keras.Model: float32 [N, S, S, 3] -> logits float32 [N, num_classes]."""
    return self.scaffold.network

  @property
  def image_size(self):
    """int, the side S of the network's input [N, S, S, 3]."""
    return int(self.params["image_size"])


def load_params(model_dir):
  """model_dir/params.json as a dict, under model.DEFAULT_MODEL_PARAMS for keys it lacks.

  Raises UserError when the folder or the file is missing or bad.
  """
  if not tf.io.gfile.isdir(model_dir):
    raise UserError(f"--model_dir={model_dir}: no such folder")
  path = os.path.join(model_dir, PARAMS_FILENAME)
  if not tf.io.gfile.exists(path):
    raise UserError(f"--model_dir={model_dir}: no {PARAMS_FILENAME}; expected a folder written by "
                    f"train.py")
  with tf.io.gfile.GFile(path) as f:
    try:
      params = json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}: not valid JSON ({e})") from e
  missing = [k for k in ("configuration", "num_classes", "image_size") if k not in params]
  if missing:
    raise UserError(f"{path}: missing {', '.join(missing)}; expected params written by train.py")
  # Keys added to model.py after the run was trained take their defaults (dataloader's input
  # defaults are merged by preprocess_image itself).
  return {**model.DEFAULT_MODEL_PARAMS, **params}


def find_label_map(model_dir, params, path=None):
  """Path of the label map to use, or None (search order in the module docstring).

  An explicit `path` must exist (UserError otherwise); the other places are tried quietly.
  """
  if path:
    if not tf.io.gfile.exists(path):
      raise UserError(f"--label_map={path}: no such file")
    return path
  candidates = [params.get("label_map")]
  for key in ("train_file_pattern", "validation_file_pattern"):
    if params.get(key):
      candidates.append(os.path.join(os.path.dirname(params[key]), dataloader.LABEL_MAP_FILENAME))
  candidates.append(os.path.join(model_dir, dataloader.LABEL_MAP_FILENAME))
  return next((c for c in candidates if c and tf.io.gfile.exists(c)), None)


def restore_scaffold(params, checkpoint_path):
  """model.scaffold_fn(params) with the network's weights read from checkpoint_path.

  Only the network is read, by variable name (tools/estimator.network_variables): inference needs
  no optimizer state, and a model trained in float16 has a loss-scale optimizer that the float32
  scaffold of inference does not. Raises UserError when the checkpoint does not fit the network.
  """
  scaffold = model.scaffold_fn(params)
  checkpoint = tf.train.Checkpoint(network=estimator_lib.network_variables(scaffold.network))
  try:
    status = checkpoint.restore(checkpoint_path)  # a shape mismatch raises here
    status.assert_existing_objects_matched()  # a missing variable here
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
    raise UserError(f"checkpoint {checkpoint_path} does not fit a {params['configuration']} "
                    f"network with {params['num_classes']} classes "
                    f"({str(e).splitlines()[0][:200]})") from e
  status.expect_partial()  # the optimizer's variables are left unread on purpose
  return scaffold


def load_trained_model(model_dir, label_map=None):
  """Restores the network of model_dir's latest checkpoint with the params of its params.json.

  Args:
    model_dir: folder written by train.py.
    label_map: optional path of a labels.txt; default: found by `find_label_map`.
  Returns:
    TrainedModel.
  Raises:
    UserError: no params.json, no checkpoint, a checkpoint of another network, or a label map whose
      class count differs from the model's.
  """
  params = load_params(model_dir)
  # Inference runs in float32 whatever the training compute dtype was: the variables are float32,
  # and CPUs, TF Serving and TFLite run float32 best.
  params["dtype"] = "float32"
  checkpoint_path = tf.train.latest_checkpoint(model_dir)
  if checkpoint_path is None:
    raise UserError(f"--model_dir={model_dir}: no checkpoint (ckpt-*) in it; train first")
  scaffold = restore_scaffold(params, checkpoint_path)
  # The Estimator numbers its checkpoints by global step (CheckpointManager checkpoint_number).
  step = int(re.search(r"(\d+)$", checkpoint_path).group(1))
  label_map_path = find_label_map(model_dir, params, label_map)
  entries = None
  if label_map_path:
    entries = dataloader.read_label_map(label_map_path)
    if len(entries) != int(params["num_classes"]):
      raise UserError(f"label map {label_map_path} has {len(entries)} classes but the model has "
                      f"{params['num_classes']}; pass the right one with --label_map")
    logging.info("Class names from %s.", label_map_path)
  logging.info("Restored %s (step %d; %s, %d classes, %d x %d input, %s preprocessing).",
               checkpoint_path, step, params["configuration"], params["num_classes"],
               params["image_size"], params["image_size"], params.get("preprocessing", "caffe"))
  return TrainedModel(model_dir, params, scaffold, checkpoint_path, step, entries, label_map_path)


def preprocess_fn(params):
  """The evaluation preprocessing of training as a tf.function: string scalar (encoded JPEG, PNG,
  GIF or BMP) -> float32 [S, S, 3], mean-subtracted RGB.

  Raises tf.errors.InvalidArgumentError (when called) for bytes that are not such an image.
  """
  seed = tf.constant(_EVAL_SEED, tf.int32)
  return tf.function(lambda image_bytes: dataloader.preprocess_image(image_bytes, False, params,
                                                                      seed=seed),
                     input_signature=[tf.TensorSpec([], tf.string)])


def predictions_fn(trained):
  """model_fn's PREDICT branch on the restored network: float32 [N, S, S, 3] (preprocessed) ->
  dict of top_1 int32 [N], top_5 int32 [N, 5], probabilities float32 [N, K], logits [N, K]."""
  return lambda images: model.model_fn({"image": images}, None, estimator_lib.ModeKeys.PREDICT,
                                       trained.params, trained.scaffold).predictions


# ------------------------------------------------------------------------------------------------
# Files in, results out.


def list_images(paths):
  """Expands folders (recursively, sorted, by IMAGE_EXTENSIONS) and keeps files as given.

  A path that does not exist is kept, so that it gets its own error. Raises UserError for a folder
  with no image in it.
  """
  images = []
  for path in paths:
    if not os.path.isdir(path):
      images.append(path)
      continue
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
      raise UserError(f"folder {path} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    images.extend(found)
  return images


@dataclasses.dataclass
class ImageResult:
  """The outcome for one image: `predictions` (dict of numpy values of one example, keys as
  predictions_fn) or `error` (str), the other one None."""
  path: str
  predictions: dict | None = None
  error: str | None = None


def _error_message(error):
  """One line from a TensorFlow or OS error, without TF's node and op annotations."""
  if isinstance(error, (FileNotFoundError, tf.errors.NotFoundError)):
    return "no such file"
  if isinstance(error, tf.errors.OpError):
    text = re.sub(r"\{\{.*?\}\}|\[\[.*?\]\]|\[Op:.*?\]|name: *$", "", error.message)
    return "cannot decode image: " + " ".join(text.split())
  return " ".join(str(error).split())


def _read_and_preprocess(path, preprocess):
  """(float32 [S, S, 3] numpy, None) or (None, error message) for one image file."""
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
    return preprocess(tf.constant(data)).numpy(), None
  except (OSError, tf.errors.OpError) as e:
    return None, _error_message(e)


def predict_files(trained, paths, batch_size=64, num_threads=0):
  """Classifies image files in batches; yields one ImageResult per path, in the order of `paths`.

  Args:
    trained: TrainedModel.
    paths: list of image file paths (see list_images).
    batch_size: images per forward pass.
    num_threads: preprocessing threads (0: one per core).
  """
  preprocess = preprocess_fn(trained.params).get_concrete_function()  # traced before the threads
  size = trained.image_size
  predict = tf.function(predictions_fn(trained),
                        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
  chunks = [paths[i:i + batch_size] for i in range(len(paths))[::batch_size]]
  workers = num_threads or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    submit = lambda chunk: [pool.submit(_read_and_preprocess, p, preprocess) for p in chunk]
    pending = collections.deque(submit(c) for c in chunks[:2])  # the next batch is read meanwhile
    for i, chunk in enumerate(chunks):
      outcomes = [future.result() for future in pending.popleft()]
      if i + 2 < len(chunks):
        pending.append(submit(chunks[i + 2]))
      yield from _predict_chunk(predict, chunk, outcomes)


def _predict_chunk(predict, paths, outcomes):
  images = [image for image, _ in outcomes if image is not None]
  batch = {}
  if images:
    batch = {k: v.numpy() for k, v in predict(tf.constant(np.stack(images))).items()}
  row = 0
  for path, (image, error) in zip(paths, outcomes):
    if image is None:
      yield ImageResult(path, error=error)
    else:
      yield ImageResult(path, predictions={k: v[row] for k, v in batch.items()})
      row += 1


# ------------------------------------------------------------------------------------------------
# Output.


def top_classes(result, label_map=None):
  """The top-5 of an ImageResult with predictions: list of dicts with class_idx (int), probability
  (float in 0..1) and, with a label map, name (synset or folder name) and text (human-readable)."""
  predictions = result.predictions
  classes = []
  for idx in predictions["top_5"][:TOP_K]:
    entry = {"class_idx": int(idx), "probability": float(predictions["probabilities"][idx])}
    if label_map:
      entry.update(name=label_map[idx].name, text=label_map[idx].text)
    classes.append(entry)
  return classes


def format_json(result, label_map=None):
  """One JSON line for an ImageResult (shape in the module docstring)."""
  if result.error is not None:
    return json.dumps({"image": result.path, "error": result.error})
  return json.dumps({"image": result.path, "top_5": top_classes(result, label_map)})


def format_text(result, label_map=None):
  """Human-readable lines for an ImageResult: the path, then one line per class of the top-5."""
  if result.error is not None:
    return f"{result.path}: error: {result.error}"
  lines = [result.path]
  for rank, c in enumerate(top_classes(result, label_map), 1):
    name = ""
    if "name" in c:
      name = c["name"] if c["text"] in ("", c["name"]) else f"{c['name']} ({c['text']})"
    lines.append(f"  {rank}. {c['probability']:8.4f}  {c['class_idx']:4d}  {name}".rstrip())
  return "\n".join(lines)


class _Progress:
  """Logs images done with the rate and ETA, at most every _PROGRESS_INTERVAL seconds."""

  def __init__(self, total):
    self.total, self.done = total, 0
    self.start = self.last = time.monotonic()

  def advance(self):
    self.done += 1
    now = time.monotonic()
    if now - self.last >= _PROGRESS_INTERVAL and self.done < self.total:
      self.last = now
      rate = self.done / (now - self.start)
      logging.info("%d/%d images, %.1f images/s, ETA %.0f s", self.done, self.total, rate,
                   (self.total - self.done) / rate)


def main(argv):
  if not FLAGS.model_dir:
    raise UserError("--model_dir is required: the folder train.py wrote")
  if len(argv) < 2:
    raise UserError("no image given; usage: predict.py --model_dir DIR IMAGE_OR_FOLDER [...]")
  if FLAGS.batch_size < 1:
    raise UserError(f"--batch_size={FLAGS.batch_size}: expected at least 1")
  paths = list_images(argv[1:])
  trained = load_trained_model(FLAGS.model_dir, FLAGS.label_map)
  formatter = format_json if FLAGS.json else format_text
  progress, failed = _Progress(len(paths)), 0
  for result in predict_files(trained, paths, FLAGS.batch_size, FLAGS.num_threads):
    print(formatter(result, trained.label_map), flush=True)
    failed += result.error is not None
    progress.advance()
  elapsed = time.monotonic() - progress.start
  logging.info("Classified %d of %d images in %.1f s (%.1f images/s).", len(paths) - failed,
               len(paths), elapsed, len(paths) / max(elapsed, 1e-9))
  if failed:
    logging.error("%d of %d images could not be classified (see the error lines); exit status 1.",
                  failed, len(paths))
    return 1
  return 0


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
