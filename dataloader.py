"""Input pipeline: ImageNet-schema TFRecords in, batches of preprocessed images out.

Data contract. The records are the `tf.train.Example`s of TensorFlow's `build_imagenet_data.py` (the
Inception, Model Garden and seed repositories all use it), and of our own tools/datasets/records.py:
`image/encoded` (JPEG bytes), `image/class/label` (int64, 1-based: 1..1000 for ImageNet, 0 unused),
`image/class/synset`, `image/class/text`, `image/height`, `image/width`, `image/colorspace`,
`image/channels`, `image/format`, `image/filename`, and `image/object/bbox/{xmin,ymin,xmax,ymax}`
(float lists in [0, 1], possibly empty) with `image/object/bbox/label`. Shards are named
`train-00000-of-01024` and `validation-00000-of-00128`. Only `image/encoded`, the label and the boxes
are read here. Records of other tools name the image and the label otherwise: InputParams.image_key,
label_key and label_offset (TensorFlow Datasets: `image`, `label`, 0-based; no boxes).

Preprocessing (InputParams.preprocessing, one window function each in `WINDOWS`):
  caffe      the seed repository and the official Caffe model. Training: resize to 256x256 (aspect
             ratio not kept), a random 227x227 crop, a random left-right flip (the seed repository
             flips, Caffe did not: `random_flip`), RGB mean (123, 117, 104) subtracted, no scaling.
             Evaluation: the same resize and the central crop. For another image size S the resize
             side is round(S * 256 / 227).
  inception  Model Garden. Training: `sample_distorted_bounding_box` (the record's boxes, else the
             whole image; min_object_covered 0.1, aspect ratio 3/4..4/3, area 0.05..1), flip, resize
             to S. Evaluation: the central crop of 87.5% of the short side resized to S.
  torchvision  how osmr evaluated the ImageNet weights of pytorchcv (imgclsmob's
             `pytorch/datasets/imagenet1k_cls_dataset.py`: torchvision's Resize, CenterCrop, ToTensor,
             Normalize on Pillow images). Evaluation, exactly: the whole image decoded as Pillow
             decodes it (libjpeg's ISLOW IDCT), the short side resized to ceil(S / 0.875) (256 at
             224) and the long side to int(ceil(S / 0.875) * long / short) with Pillow's bilinear
             filter (`pil_bilinear_resize`, bit-exact), the central S x S crop (offsets rounded half
             to even, as Python's round), RGB / 255 normalised with ImageNet's mean (0.485, 0.456,
             0.406) and standard deviation (0.229, 0.224, 0.225). Training: the inception training
             crop of the whole image (as torchvision's RandomResizedCrop: a random area and aspect
             ratio), flip, an antialiased bilinear resize to S (Pillow's filter), the same
             normalisation.
Normalisation (`normalization`): images become (pixel - mean_rgb) / std_rgb, per channel of 0..255
RGB; caffe and inception subtract the Caffe models' means and do not scale.
Evaluation is one exact pass: no shuffle, no repeat, the last partial batch kept.

`input_fn` turns the records into `({"image": float32 [B, H, W, 3]}, {"class_idx": int32 [B]})`
(class_idx = label - 1) in the standard tf.data order, Extract / Transform / Load:

  list files -> shard per input pipeline -> interleave the files' records (training: 16 files at a
  time, in a new order every epoch; evaluation: one after another) -> training: shuffle, repeat ->
  number -> parallel map `parse_example` + `preprocess_example` (uint8) -> ignore_errors -> batch ->
  check the batch -> mean subtraction per batch (float32) -> prefetch

A fork that reads another format or preprocesses otherwise replaces `parse_example` (a serialized
record -> {"image", "label", "bboxes"}) or `preprocess_example` (that dict -> ({"image": uint8
[S, S, 3]}, {"class_idx": int32})); the rest of the pipeline stays.

Speed: on a GPU SqueezeNext trains faster than the host decodes JPEGs, so the pipeline decodes only the
pixels it keeps: every preprocessing computes its crop window from the JPEG header and uses
`decode_and_crop_jpeg` (resizing to 256x256 and cropping 227 is, up to interpolation at the borders,
cropping the matching window of the original and resizing that to 227). Each example ends as uint8
(4x fewer bytes to batch), and the mean is subtracted once per batch. The decoding map is the one
tf.data function called per record: a call costs a few percent of a JPEG decode
(docs/BENCHMARKS.md), so the bookkeeping stages work on groups of records and on batches.

Bad data, in named stages (with what each costs):
  `_read_file`      a damaged TFRecord file (tf.data's DataLossError names no file, and
                    `ignore_errors` goes on with the next file): each file's bytes are added up, and
                    a file whose records do not fill it ends with a marker. One call per 16 records.
  `_numbered`       the records are numbered in order, each with the file of the record before it:
                    after `ignore_errors`, a gap in the numbers is a skipped record and names its
                    file. One call per 64 records; this is the one check that needs the order, so
                    the decoding map keeps it (`map_parallelism` says how that is made cheap).
                    Evaluation ends with one more element, so that skips at the very end count.
  `_decode_fn`      a record without image or label, or with a label outside 1..num_classes, is
                    not decoded but carries its error message; a record that cannot be parsed or
                    whose image cannot be decoded raises, and `ignore_errors` skips it. No call of
                    its own: it is the decoding map's function.
  `_check_batch_fn` one call per batch: counts and logs the skipped records in a `SkippedRecords`
                    (`SKIPPED_RECORDS` unless input_fn is given another one); `_raise_message` then
                    fails with the message of a bad record or damaged file, or after
                    MAX_CONSECUTIVE_SKIPS skips in a row: an InvalidArgumentError naming the file;
                    run the loop inside `user_errors_from_data()` to make it a one-line `tools.common.UserError`.
  `_check_trainable` training repeats forever, so data of which no record decodes would keep
                    `ignore_errors` searching: input_fn first decodes records in turn until one is
                    usable. One decode at the start, for good data.

Label map: `labels.txt` beside the records, one line per class, tab-separated
`<label>\\t<name>\\t<text>`, e.g. `1\\tn01440764\\ttench, Tinca tinca`: the 1-based record label,
the synset or class-folder name (`image/class/synset`), the human-readable text (`image/class/text`).
`read_label_map` / `write_label_map` are the one place that knows this format.
"""

import collections
import contextlib
import dataclasses
import math
import os
import random
import re
import sys
import threading

from absl import logging
import numpy as np
import tensorflow as tf

from tools.common import param
from tools.common import UserError

AUTOTUNE = tf.data.AUTOTUNE  # -1, so it fits the JSON params
# (image key, label key) of the record schemas known without flags: the ImageNet schema (module
# docstring) and TensorFlow Datasets' image classification records (`image`, `label` 0-based).
IMAGENET_KEYS = ("image/encoded", "image/class/label")
TFDS_KEYS = ("image", "label")
KNOWN_KEYS = (IMAGENET_KEYS, TFDS_KEYS)

PREPROCESSINGS = ("caffe", "inception", "torchvision")


@dataclasses.dataclass(frozen=True)
class InputParams:
  """The input pipeline's parameters (the `input` section of tools/recipe/params.Params), each declared once
  (tools/common.param). The image side, the global batch and the class count come from the model and
  recipe sections and are passed to input_fn beside this."""
  # "caffe" (seed repository / official Caffe model), "inception" (Model Garden) or "torchvision"
  # (osmr's evaluation of pytorchcv's ImageNet weights); module docstring.
  preprocessing: str = param("caffe", "Preprocessing.", choices=PREPROCESSINGS, meaning=True)
  # Per-channel mean and standard deviation of 0..255 RGB pixels: images become (pixel - mean) /
  # std. None: the preprocessing's (NORMALIZATIONS).
  mean_rgb: tuple | None = param(None, "RGB means subtracted.", flag=False)
  std_rgb: tuple | None = param(None, "RGB standard deviations divided by.", flag=False)
  # Random left-right flip in training: the seed repository flips, Caffe's prototxt did not.
  random_flip: bool = param(True, "Random left-right flip in training.", flag=False)
  # The records' keys of the encoded image (JPEG, or PNG/GIF/BMP decoded whole) and of the int64
  # label; class_idx = label - label_offset (ImageNet labels are 1..1000, 0 unused).
  image_key: str = param(IMAGENET_KEYS[0], "The records' key of the encoded image.",
                         default_text="image/encoded (ImageNet schema), or image (TensorFlow "
                         "Datasets) when the first record has that")
  label_key: str = param(IMAGENET_KEYS[1], "The records' key of the int64 label.",
                         default_text="image/class/label, or label")
  label_offset: int = param(1, "The record label of class 0.", minimum=0, meaning=True,
                            default_text="1 (ImageNet's labels 1..1000), or 0 when --num_classes is "
                            "unset and some record has label 0")
  # Seeds file and record shuffles and the augmentation (None: different every run).
  seed: int | None = param(None, "Random seed of the input pipeline and initialisation.", minimum=0,
                           default_text="none (different every run)")
  # Records in the shuffle buffer: Model Garden's ImageNet value; about 1.1 GB of ImageNet records.
  shuffle_buffer_size: int = param(10_000, "Records in the shuffle buffer.", minimum=1, flag=False)
  # Files read at once in training (Model Garden's ImageNet value); more files mix classes better.
  interleave_cycle_length: int = param(16, "Files read at once in training.", flag=False)
  # Threads reading those files. None: the reading thread itself, in turn (a local disk or the page
  # cache: threads reading short local reads cost more CPU in hand-offs than they save,
  # docs/BENCHMARKS.md); -1 lets tf.data tune it, for remote storage with long reads.
  interleave_num_parallel_calls: int | None = param(None, "Threads reading those files.", flag=False)
  # Read buffer per open TFRecord file, in bytes.
  read_buffer_size: int = param(8 * 1024 * 1024, "Read buffer per file, bytes.", flag=False)
  # Elements parsed and preprocessed in parallel (see `map_parallelism`). None: 4 per CPU core, at
  # least 16 (tuned by tf.data on tf.data service workers); -1 lets tf.data tune it to the free cores.
  num_parallel_calls: int | None = param(None, "Elements preprocessed in parallel.", flag=False)
  # Batches prepared ahead of the training step; -1 lets tf.data tune it.
  prefetch_buffer_size: int = param(AUTOTUNE, "Batches prepared ahead.", flag=False)
  # 0: share TensorFlow's inter-op pool. A value > 0 gives the pipeline its own threads, so that on a
  # GPU host the training step's host ops do not wait behind JPEG decoding.
  private_threadpool_size: int = param(0, "Threads of the pipeline's own pool.", flag=False)
  # One thread per element: the parallelism is across elements (Model Garden sets the same).
  max_intra_op_parallelism: int = param(1, "Threads per element.", flag=False)
  # libjpeg's IDCT: "" (TensorFlow's default, which decodes as "INTEGER_FAST" does on TF 2.21),
  # "INTEGER_FAST" (tf_cnn_benchmarks' choice), "INTEGER_ACCURATE" (Pillow's: libjpeg's ISLOW;
  # torchvision's preprocessing uses it when this is "", so that it decodes as Pillow does).
  dct_method: str = param("", "libjpeg's IDCT.", flag=False)
  # Training order is allowed to vary with thread timing (faster); True makes a seeded run repeatable.
  deterministic_training: bool = param(False, "Repeatable training order (--deterministic).",
                                       flag=False)
  # Address ("grpc://host:port") of a tf.data service dispatcher whose workers run the TRAINING
  # pipeline (evaluation stays local and exact); None: this process runs it. See input_fn.
  data_service_address: str | None = param(
      None, "grpc://HOST:PORT of a tf.data service dispatcher (python -m scripts.data_service) "
      "whose workers run the training input pipeline; evaluation stays local.",
      default_text="none (this process runs it)")


# (mean, std) per channel of 0..255 RGB of each preprocessing. caffe, inception: the RGB means of
# the Caffe models, no scaling. torchvision: ToTensor's x / 255, then Normalize with ImageNet's mean
# (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (imgclsmob's ImageNet1KMetaInfo), i.e.
# (x - 255 mean) / (255 std).
_CAFFE_MEAN_RGB = (123.0, 117.0, 104.0)
NORMALIZATIONS = {
    "caffe": (_CAFFE_MEAN_RGB, (1.0, 1.0, 1.0)),
    "inception": (_CAFFE_MEAN_RGB, (1.0, 1.0, 1.0)),
    "torchvision": (tuple(255.0 * m for m in (0.485, 0.456, 0.406)),
                    tuple(255.0 * s for s in (0.229, 0.224, 0.225))),
}

# Caffe models: resize to 256x256, crop 227 (seed repository / official prototxts).
_CAFFE_RESIZE, _CAFFE_CROP = 256, 227
# Inception / Model Garden evaluation: the central crop keeps 87.5% of the short side (224 of 256).
_INCEPTION_CENTRAL_FRACTION = 0.875
# Inception / Model Garden training crop: sample_distorted_bounding_box ranges.
_INCEPTION_MIN_OBJECT_COVERED = 0.1
_INCEPTION_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
_INCEPTION_AREA_RANGE = (0.05, 1.0)
_INCEPTION_MAX_ATTEMPTS = 100
# torchvision (osmr's evaluation): the resize side is ceil(S / 0.875) (imgclsmob's
# calc_val_resize_value with resize_inv_factor 0.875: 256 at 224).
_TORCHVISION_CROP_FRACTION = 0.875
# Pillow's fixed-point resampling (libImaging/Resample.c): coefficients with 32 - 8 - 2 = 22
# fractional bits, each pass rounded to uint8.
_PIL_PRECISION_BITS = 22

# `parse_example`'s label of a record without one, so that the error can name the key instead of
# failing in parsing.
MISSING_LABEL = -(2**62)
_BBOX_KEYS = ("ymin", "xmin", "ymax", "xmax")  # the order of tf.image's boxes
# Marks the messages of our in-graph checks, so that `user_errors_from_data` can find them.
_ERROR_START, _ERROR_END = "<<dataloader: ", ">>"

LABEL_MAP_FILENAME = "labels.txt"


def label_map_beside(file_pattern):
  """The path of the label map beside the records of `file_pattern` (in its folder; it may not
  exist)."""
  return os.path.join(os.path.dirname(file_pattern), LABEL_MAP_FILENAME)
LabelEntry = collections.namedtuple("LabelEntry", ["label", "name", "text"])
LabelEntry.__doc__ = """One class: 1-based record label (int), synset/class name (str), human text (str)."""


def check_input_params(input_params):
  """Raises UserError for an unknown `preprocessing`, or a `mean_rgb` or `std_rgb` that is not 3
  numbers (std_rgb: positive ones)."""
  if input_params.preprocessing not in PREPROCESSINGS:
    raise UserError(f"preprocessing={input_params.preprocessing}: expected one of "
                    f"{', '.join(PREPROCESSINGS)}", param="preprocessing")
  for name in ("mean_rgb", "std_rgb"):
    values = getattr(input_params, name)
    if values is not None and (len(values) != 3 or (name == "std_rgb" and min(values) <= 0)):
      raise UserError(f"{name}={values}: expected 3 values (R, G, B)"
                      f"{', each > 0' if name == 'std_rgb' else ''}", param=name)


def normalization(input_params):
  """(mean, std): 3-tuples of floats per RGB channel of 0..255 pixels, images become (pixel - mean)
  / std; `mean_rgb` / `std_rgb` of InputParams `input_params`, where None, its preprocessing's
  NORMALIZATIONS."""
  mean, std = NORMALIZATIONS[input_params.preprocessing]
  return (tuple(float(v) for v in input_params.mean_rgb or mean),
          tuple(float(v) for v in input_params.std_rgb or std))


# The decoding map keeps the records' order (the skip count needs it, see `_numbered`), so a slow
# image (a large crop window, a large photo) holds back the elements after it: with more elements in
# flight than cores, the other threads go on decoding meanwhile. 4 per core did as well as 8-64 and
# better than tf.data's autotuning (docs/BENCHMARKS.md).
_ELEMENTS_IN_FLIGHT_PER_CORE, _MIN_ELEMENTS_IN_FLIGHT = 4, 16


def map_parallelism(input_params, remote=False):
  """Parallel calls of input_fn's decoding map (int > 0, or -1: tf.data tunes it):
  `num_parallel_calls`, or for None 4 per CPU core this process may use, at least 16. `remote`: the
  map runs on tf.data service workers, whose cores this process cannot see; None is then -1."""
  if input_params.num_parallel_calls is not None:
    return input_params.num_parallel_calls
  if remote:
    return AUTOTUNE
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(_MIN_ELEMENTS_IN_FLIGHT, _ELEMENTS_IN_FLIGHT_PER_CORE * (cores or 1))


# ------------------------------------------------------------------------------------------------
# Preprocessing of one image.


def preprocess_image(image_bytes, training, params, image_size, bboxes=None, seed=None):
  """Decodes and preprocesses one image as the module docstring says for `params.preprocessing`.

  Works eagerly and inside `tf.data.Dataset.map`; with the same `seed` both give the same result.
  Exactly what input_fn yields for the same image and seed: `subtract_mean` of
  `preprocess_image_uint8`.

  Args:
    image_bytes: string scalar, an encoded image. JPEG takes the fast path (only the crop window is
      decoded); PNG, BMP and GIF (first frame) are decoded whole, for predicting on raw files.
    training: Python bool; True draws a random crop (and flip, if `params.random_flip`).
    params: InputParams (`preprocessing`, `mean_rgb`, `random_flip`, `dct_method` are read).
    image_size: int, the output side S in pixels.
    bboxes: optional float32 [N, 4] boxes (ymin, xmin, ymax, xmax) in [0, 1]; the inception training
      crop covers at least 10% of one of them. None or N = 0: the whole image.
    seed: optional int32/int64 [2] tensor for the stateless random ops of training; None draws one.

  Returns:
    float32 [image_size, image_size, 3], RGB (0..255 - mean) / std of `normalization(params)`
    (caffe, inception: about -123..152; torchvision: about -2.1..2.7).

  Raises:
    tf.errors.InvalidArgumentError (when run): undecodable image bytes.
  """
  image = preprocess_image_uint8(image_bytes, training, params, image_size, bboxes, seed)
  return subtract_mean(image, params)


def preprocess_image_uint8(image_bytes, training, params, image_size, bboxes=None, seed=None):
  """`preprocess_image` before the mean subtraction: uint8 [image_size, image_size, 3], RGB 0..255.

  Arguments and errors as `preprocess_image`. The resized image is rounded to uint8, as Caffe's
  pipeline stored its resized images (its crop and mean subtraction then worked on uint8 pixels)
  and as Pillow's resize returns them (torchvision); input_fn batches these 4x smaller images and
  normalises them once per batch.
  """
  p, size = params, int(image_size)
  torchvision = p.preprocessing == "torchvision"
  dct_method = p.dct_method or ("INTEGER_ACCURATE" if torchvision else "")
  if torchvision and not training:
    return _torchvision_central_crop(image_bytes, size, dct_method)
  if seed is None:
    seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  window_fn = WINDOWS[p.preprocessing](size, training, bboxes, crop_seed)
  image = _decode_window(image_bytes, window_fn, dct_method)  # uint8 [h, w, 3]
  # float32 [size, size, 3]; torchvision: Pillow's bilinear filter widens with the downscale factor.
  image = tf.image.resize(image, [size, size], method="bilinear", antialias=torchvision)
  # Bilinear weights are convex, so the values stay in 0..255: round, no clipping needed.
  image = tf.cast(tf.round(image), tf.uint8)
  if training and p.random_flip:  # on the uint8 resize: the fewest bytes to move (4x < float32)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def subtract_mean(images, params):
  """uint8 [..., S, S, 3] RGB 0..255 -> float32 (pixel - mean) / std of `normalization(params)`
  (caffe: minus (123, 117, 104), about -123..152; torchvision: about -2.1..2.7).

  The last three dimensions must be static. The mean is subtracted as a whole [S, S, 3] image: a
  same-shape subtraction is vectorised, a [3] broadcast (or bias_add) is slower (docs/BENCHMARKS.md).
  Division by std (as torchvision's Normalize divides) only when some std is not 1.
  """
  mean, std = normalization(params)
  mean_image = tf.broadcast_to(tf.constant(mean, tf.float32), images.shape[-3:])  # [S, S, 3]
  centred = tf.cast(images, tf.float32) - mean_image
  if std == (1.0, 1.0, 1.0):
    return centred
  return centred / tf.broadcast_to(tf.constant(std, tf.float32), images.shape[-3:])


def add_mean(images, params):
  """Inverse of `subtract_mean`, for TensorBoard image summaries.

  Args:
    images: float32 [..., 3], preprocessed images.
    params: InputParams (`normalization(params)` is read).

  Returns:
    uint8 [..., 3], RGB in 0..255 (rounded, values outside clipped).
  """
  mean, std = normalization(params)
  pixels = images * tf.constant(std, tf.float32) + tf.constant(mean, tf.float32)
  return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)


def caffe_window(size, training, bboxes, seed):
  """Caffe: the window of the original that a (random or central) size x size crop of the resize shows.

  A window function, as `WINDOWS` holds them: (size: int output side S, training: Python bool,
  bboxes: ignored here, seed: int32 [2] stateless seed of the random crop) -> window_fn(shape: int32
  [2] (height, width) of the original) -> int32 [4] (y, x, height, width) pixels of the original to
  decode, inside it. The resize side is round(size * 256 / 227) (module docstring); the aspect ratio
  is not kept, so the window's fractions of the original height and width are those of the crop in
  the resize.
  """
  del bboxes  # Caffe crops the whole image
  resize = round(size * _CAFFE_RESIZE / _CAFFE_CROP)
  if training:  # Caffe's random crop offset: uniform in 0..resize - size, per axis
    offset = tf.random.stateless_uniform([2], seed, minval=0, maxval=resize - size + 1, dtype=tf.int32)
  else:  # Caffe's central crop: (resize - size) / 2, rounded down
    offset = tf.fill([2], (resize - size) // 2)
  start = tf.cast(offset, tf.float32) / resize  # [2] (y, x) fractions of the original
  extent = tf.fill([2], size / resize)

  def window_fn(shape):
    return _window(shape, start, extent)
  return window_fn


def inception_window(size, training, bboxes, seed):
  """Inception: a distorted bounding box crop in training, the central 87.5% square in evaluation.

  A window function (arguments as `caffe_window`): `bboxes` is an optional float32 [N, 4] of boxes
  (ymin, xmin, ymax, xmax) in [0, 1] that the training crop covers at least 10% of one of (None or
  N = 0: the whole image); the window does not depend on `size` (it is resized to it).
  """
  del size  # the window is resized to the output side
  if training:
    boxes = tf.zeros([0, 4], tf.float32) if bboxes is None else tf.convert_to_tensor(bboxes, tf.float32)

    def window_fn(shape):
      begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.concat([shape, [3]], 0), boxes[tf.newaxis], seed,
          min_object_covered=_INCEPTION_MIN_OBJECT_COVERED,
          aspect_ratio_range=_INCEPTION_ASPECT_RATIO_RANGE, area_range=_INCEPTION_AREA_RANGE,
          max_attempts=_INCEPTION_MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
      return tf.concat([begin[:2], crop_size[:2]], 0)
    return window_fn

  def central_window_fn(shape):
    side = tf.cast(_INCEPTION_CENTRAL_FRACTION * tf.cast(tf.reduce_min(shape), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return tf.concat([(shape - side + 1) // 2, [side, side]], 0)
  return central_window_fn


def _torchvision_central_crop(image_bytes, size, dct_method):
  """torchvision's evaluation (module docstring) up to Normalize: uint8 [size, size, 3] RGB.

  Resize(ceil(size / 0.875)) keeps the aspect ratio: short side -> R, long side -> int(R * long /
  short) (torchvision's _compute_resized_output_size; integer arithmetic gives the same); then
  CenterCrop(size) at int(round((resized - size) / 2)), Python's round is half to even as
  tf.round. The whole image is decoded: the resize filter reads beyond any crop window.
  """
  whole = lambda shape: tf.concat([tf.zeros([2], tf.int32), shape], 0)
  image = _decode_window(image_bytes, whole, dct_method)  # uint8 [h, w, 3]
  shape = tf.shape(image)[:2]
  resized = math.ceil(size / _TORCHVISION_CROP_FRACTION) * shape // tf.reduce_min(shape)  # [2]
  image = pil_bilinear_resize(image, resized)
  offset = tf.cast(tf.round(tf.cast(resized - size, tf.float64) / 2.0), tf.int32)  # [2] (y, x)
  return tf.slice(image, tf.concat([offset, [0]], 0), [size, size, 3])


def _pil_bilinear_coefficients(in_size, out_size):
  """Pillow's bilinear resampling weights along one axis (Resample.c: precompute_coeffs with the
  triangle filter of support 1 widened by the downscale factor, then normalize_coeffs_8bpc), in the
  same float64 operations: (first int32 [out_size], weights int32 [out_size, taps]); output pixel
  o reads input pixels first[o] .. first[o] + taps - 1 (zero weights past the edge)."""
  scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
  support = tf.maximum(scale, 1.0)  # the filter's support 1.0 times max(scale, 1)
  taps = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
  center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale  # [out]
  first = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)  # C's (int): toward zero
  count = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - first
  x = tf.range(taps)
  distance = (tf.cast(first[:, None] + x, tf.float64) - center[:, None] + 0.5) * (1.0 / support)
  weights = tf.where(x < count[:, None], tf.maximum(1.0 - tf.abs(distance), 0.0), 0.0)
  weights = tf.math.divide_no_nan(weights, tf.reduce_sum(weights, 1, keepdims=True))
  fixed = tf.cast(tf.floor(weights * 2.0**_PIL_PRECISION_BITS + 0.5), tf.int32)  # weights >= 0
  return first, fixed


def _pil_resample_rows(image, out_size):
  """One pass of Pillow's resampling of uint8 [h, w, 3] along its rows (axis 0) to out_size (int32
  scalar): sum of pixel * weight from 2^21, shifted right by 22 bits and clipped to 0..255. One tap
  at a time (tf.while_loop): a large photo needs no [out, taps, w, 3] temporary; gathering whole
  rows is 2x faster than gathering columns."""
  in_size = tf.shape(image)[0]
  first, weights = _pil_bilinear_coefficients(in_size, out_size)

  def add_tap(tap, total):
    pixels = tf.gather(image, tf.minimum(first + tap, in_size - 1))  # [out, w, 3]
    return tap + 1, total + tf.cast(pixels, tf.int32) * weights[:, tap, tf.newaxis, tf.newaxis]

  start = tf.fill(tf.concat([[out_size], tf.shape(image)[1:]], 0),
                  2**(_PIL_PRECISION_BITS - 1))  # rounding, as Pillow starts its sums
  _, total = tf.while_loop(lambda tap, _: tap < tf.shape(weights)[1], add_tap, (0, start))
  return tf.cast(tf.clip_by_value(total // 2**_PIL_PRECISION_BITS, 0, 255), tf.uint8)


def pil_bilinear_resize(image, size):
  """Pillow's `Image.resize(..., Image.BILINEAR)` of an RGB image, bit for bit (Pillow 13 checked
  on photos and sizes from 1/8x to 2x in tests/test_dataloader.py): uint8 [h, w, 3] -> uint8
  [size[0], size[1], 3]. Horizontal pass first, rounded to uint8, then vertical, as Pillow; a pass
  to the same size is the identity. Works eagerly and in tf.data.

  Args:
    image: uint8 [h, w, 3] tensor.
    size: int32 [2] (height, width), each >= 1.
  """
  size = tf.convert_to_tensor(size, tf.int32)
  columns = tf.transpose(_pil_resample_rows(tf.transpose(image, [1, 0, 2]), size[1]), [1, 0, 2])
  return _pil_resample_rows(columns, size[0])


def _window(shape, start, extent):
  """int32 [4] crop window (y, x, height, width) in pixels of an image of `shape` (int32 [2]).

  `start` and `extent` are float32 [2] (y, x) fractions of the image; the window is rounded to whole
  pixels, at least 1 pixel and inside the image.
  """
  hw = tf.cast(shape, tf.float32)
  size = tf.maximum(tf.cast(tf.round(extent * hw), tf.int32), 1)
  begin = tf.minimum(tf.cast(tf.round(start * hw), tf.int32), shape - size)
  return tf.concat([begin, size], 0)


def _decode_window(image_bytes, window_fn, dct_method):
  """Decodes the pixels of window_fn(shape) only: uint8 [h, w, 3] RGB.

  JPEG: the shape comes from the header and libjpeg decodes only the window (and skips the IDCT of
  the rows and columns outside it). Other formats are decoded whole, then cropped. Entropy decoding
  of the rows above and in the window cannot be skipped, so a window costs nearly as much as a full
  decode (docs/BENCHMARKS.md); it saves the IDCT and the memory of the pixels left out.
  """
  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)[:2]
    return tf.io.decode_and_crop_jpeg(image_bytes, window_fn(shape), channels=3,
                                      dct_method=dct_method)

  def other():
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)  # uint8
    y, x, h, w = tf.unstack(window_fn(tf.shape(image)[:2]))
    return image[y:y + h, x:x + w]
  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


# The preprocessings: name -> window function (`caffe_window` says their contract). A new
# preprocessing is a window function and its name here.
# torchvision's training crop is the inception one of the whole image.
WINDOWS = {"caffe": caffe_window, "inception": inception_window, "torchvision": inception_window}
PREPROCESSINGS = tuple(WINDOWS)


# ------------------------------------------------------------------------------------------------
# One example: the functions a fork replaces to read another format or preprocess otherwise.


def parse_example(record, params, bboxes=False):
  """The fields input_fn reads from one serialized `tf.train.Example` (module docstring's schema).

  Works eagerly and inside `tf.data.Dataset.map`.

  Args:
    record: string scalar, a serialized tf.train.Example.
    params: InputParams (`image_key`, `label_key` are read).
    bboxes: Python bool; also read the boxes `image/object/bbox/{ymin,xmin,ymax,xmax}` (the
      inception training crop uses them).

  Returns:
    {"image": string scalar, the encoded image ("" when the record has none),
     "label": int64 scalar, the record's label (MISSING_LABEL when it has none),
     "bboxes" (only with `bboxes`): float32 [N, 4] (ymin, xmin, ymax, xmax) in [0, 1], N >= 0}.

  Raises:
    tf.errors.InvalidArgumentError (when run): `record` is not a tf.train.Example (input_fn skips
    it), or a feature has another type.
  """
  features = {
      params.image_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
      params.label_key: tf.io.FixedLenFeature([], tf.int64, default_value=MISSING_LABEL),
  }
  if bboxes:  # dense [N] lists: no sparse-to-dense ops per record
    features.update({f"image/object/bbox/{k}": tf.io.FixedLenSequenceFeature(
        [], tf.float32, allow_missing=True) for k in _BBOX_KEYS})
  parsed = tf.io.parse_single_example(record, features)
  example = {"image": parsed[params.image_key], "label": parsed[params.label_key]}
  if bboxes:
    example["bboxes"] = tf.stack([parsed[f"image/object/bbox/{k}"] for k in _BBOX_KEYS], 1)
  return example


def preprocess_example(example, training, params, image_size, seed=None):
  """One parsed example as input_fn yields it before batching and the mean subtraction.

  Works eagerly and inside `tf.data.Dataset.map`; with the same `seed` both give the same result.

  Args:
    example: `parse_example`'s dict ("image", "label", optionally "bboxes").
    training, params, image_size, seed: as `preprocess_image_uint8`.

  Returns:
    ({"image": uint8 [image_size, image_size, 3] RGB 0..255}, {"class_idx": int32 scalar,
    label - params.label_offset}).

  Raises:
    tf.errors.InvalidArgumentError (when run): the image cannot be decoded (input_fn skips it).
  """
  image = preprocess_image_uint8(example["image"], training, params, image_size,
                                 example.get("bboxes"), seed)
  return {"image": image}, {"class_idx": tf.cast(example["label"] - params.label_offset, tf.int32)}


# ------------------------------------------------------------------------------------------------
# Bad records: the pipeline's checks, in the order the records meet them (module docstring).


class SkippedRecords:
  """Counts (and logs) the records skipped because they could not be parsed or decoded.

  Thread-safe; the pipeline calls `add_gaps` when a batch shows a skip (in order, so the count is
  exact), the runner reads `count` (e.g. with each training log line and after an evaluation pass).

  Attributes:
    count: int, records skipped since creation or the last `reset`.
    by_file: collections.Counter, skipped records per TFRecord file name.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self.count = 0
    self.by_file = collections.Counter()

  def add(self, filename, number=1):
    """Counts `number` skipped records of `filename` (str, bytes or tensors) and logs them."""
    filename, number = (x.numpy() if hasattr(x, "numpy") else x for x in (filename, number))
    if isinstance(filename, bytes):
      filename = filename.decode("utf-8", "replace")
    with self._lock:
      self.count += int(number)
      self.by_file[filename] += int(number)
      total = self.count
    logging.warning("Skipped %d record(s) that cannot be parsed or decoded, in %s (%d skipped so "
                    "far).", number, filename, total)

  def add_gaps(self, filenames, gaps):
    """Counts the gaps of one batch: `gaps[i]` records skipped under `filenames[i]` (numpy arrays,
    int64 and bytes). Returns the number counted (int64)."""
    for filename, gap in zip(filenames, gaps):
      if gap > 0:
        self.add(filename, gap)
    return np.int64(gaps.sum())

  def reset(self):
    """Sets the counts back to zero."""
    with self._lock:
      self.count = 0
      self.by_file.clear()


# The counter input_fn uses unless it is given one: one per process, read it as
# `dataloader.SKIPPED_RECORDS.count`.
SKIPPED_RECORDS = SkippedRecords()
# Records in a row that cannot be decoded before the pipeline stops with an error.
MAX_CONSECUTIVE_SKIPS = 1000

# The pipeline's functions are plain TensorFlow (tf.cond, tf.where; no Python branch on a tensor), so
# tf.data traces them as written: AutoGraph's source conversion would cost seconds per process.
_graph_fn = tf.autograph.experimental.do_not_convert

# Bytes a TFRecord file spends on each record besides its data: 8 length, 4 length CRC, 4 data CRC.
_TFRECORD_FRAMING_BYTES = 16
# Records per call of the bookkeeping stages (module docstring: a tf.data call per record would cost
# more than the bookkeeping): a file's records are added up 16 at a time (16 files are open at once
# in training, so 256 records are held), the records numbered 64 at a time.
_READ_GROUP, _NUMBER_GROUP = 16, 64


def _read_file(filename, size, buffer_size):
  """Extract, with the damaged-file check: the records of one TFRecord file of `size` bytes.

  Elements: (record: string, filename: string, damaged: bool False). tf.data's DataLossError names
  no file, so it ends the file's records here (`ignore_errors`: the reader goes on with the next
  file); a damaged file, whose records and their framing do not add up to `size` (a truncated file,
  or one that is not a TFRecord file), then ends with one element (b"", filename, True) that
  `_check_batch_fn` reports. Records are added up `_READ_GROUP` at a time; an empty group marks the
  end of the file.
  """
  records = tf.data.TFRecordDataset(filename, buffer_size=buffer_size).ignore_errors()
  groups = records.batch(_READ_GROUP)
  end = tf.data.Dataset.from_tensors(tf.constant([], tf.string))

  @_graph_fn
  def account(read, group):  # read: int64 bytes of the groups before; group: string [n]
    read += tf.reduce_sum(tf.cast(tf.strings.length(group), tf.int64) + _TFRECORD_FRAMING_BYTES)
    damaged = tf.cast((tf.size(group) == 0) & (read != size), tf.int32)  # 1 at a damaged end
    records = tf.concat([group, tf.fill([damaged], "")], 0)  # [n], or [1] at a damaged end
    flags = tf.concat([tf.zeros_like(group, tf.bool), tf.fill([damaged], True)], 0)
    return read, (records, tf.fill(tf.shape(records), filename), flags)
  return groups.concatenate(end).scan(tf.constant(0, tf.int64), account).unbatch()


def _end_of_records():
  """The element that ends an evaluation pass (an empty file name), so that `_check_batch_fn`
  counts the records skipped at the very end."""
  return tf.data.Dataset.from_tensors((tf.constant(""), tf.constant(""), tf.constant(False)))


def _numbered(dataset):
  """The ordering check: `_read_file`'s elements as (number: int64 0, 1, ... in order, record,
  filename, file_before: the file of the element numbered just before (what a skip before this
  element is named after), damaged), `_NUMBER_GROUP` at a time.

  After the in-order decoding map and `ignore_errors`, a gap in the numbers is a skipped record. The
  numbers and the grouping are the state of a saved iterator, so a restored one goes on alike.
  """
  @_graph_fn
  def number(state, group):
    next_number, last_file = state
    records, filenames, damaged = group
    count = tf.shape(records, out_type=tf.int64)[0]
    numbers = next_number + tf.range(count)
    before = tf.concat([[last_file], filenames[:-1]], 0)
    return (next_number + count, filenames[-1]), (numbers, records, filenames, before, damaged)
  start = (tf.constant(0, tf.int64), tf.constant(""))
  return dataset.batch(_NUMBER_GROUP).scan(start, number).unbatch()


def _problem(example, filename, damaged, params, num_classes):
  """(bad: bool scalar, message: fn() -> string scalar) of one numbered element: bad for a damaged
  file's end, the end of an evaluation pass (message "") and a record without image or label or with
  a label outside label_offset..label_offset + num_classes - 1. The message, tagged for
  `user_error_from`, is built only when called (string ops would cost per record)."""
  offset, label = params.label_offset, example["label"]
  class_idx = label - offset
  checks = [  # (condition, message parts), the first that holds is reported
      (damaged, lambda: ["damaged TFRecord file ", filename, " (it ends in a corrupted record)"]),
      (tf.strings.length(filename) == 0, None),
      (tf.strings.length(example["image"]) == 0,
       lambda: [f"a record has no {params.image_key} in file ", filename]),
      (label == MISSING_LABEL, lambda: [f"a record has no {params.label_key} in file ", filename]),
      ((class_idx < 0) | (class_idx >= (num_classes or tf.int64.max - offset)), lambda: [
          "label ", tf.strings.as_string(label), f" is outside {_label_range(params, num_classes)} "
          f"(num_classes={num_classes}, label_offset={offset}) in file ", filename]),
  ]
  conditions = tf.stack([condition for condition, _ in checks])

  def message():
    texts = tf.stack([tf.strings.join([_ERROR_START, *parts(), _ERROR_END]) if parts else ""
                      for _, parts in checks])
    return tf.gather(texts, tf.argmax(tf.cast(conditions, tf.int32)))
  return tf.reduce_any(conditions), message


def _label_range(params, num_classes):
  offset = params.label_offset
  return f"{offset}..{offset + num_classes - 1}" if num_classes else f">= {offset}"


def _decode_fn(training, params, image_size, num_classes, seed):
  """The decoding map's function over `_numbered`'s elements: `parse_example` and
  `preprocess_example` of a usable record; a bad one (`_problem`) is not decoded.

  Returns the function (number, record, filename, file_before, damaged) -> (image uint8 [S, S, 3],
  class_idx int32, number, file_before, problem: string, "" or the error message, example: bool,
  True for a decoded record). It raises (and `ignore_errors` skips the record) when the record
  cannot be parsed or its image decoded. Element k's crop and flip use the stateless seed
  (augmentation seed, k): reproducible, and restored with the iterator, at no per-element cost.
  """
  augmentation_seed = random.SystemRandom().randrange(2**31) if seed is None else seed
  with_bboxes = training and params.preprocessing == "inception"
  size = image_size

  @_graph_fn
  def decode(number, record, filename, file_before, damaged):
    example = parse_example(record, params, with_bboxes)
    bad, message = _problem(example, filename, damaged, params, num_classes)
    element_seed = tf.stack([tf.constant(augmentation_seed, tf.int64), number])

    def usable():
      features, labels = preprocess_example(example, training, params, size, element_seed)
      return features["image"], labels["class_idx"], tf.constant(""), tf.constant(True)
    image, class_idx, problem, is_example = tf.cond(bad, lambda: (
        tf.zeros([size, size, 3], tf.uint8), tf.constant(0, tf.int32), message(),
        tf.constant(False)), usable)
    return image, class_idx, number, file_before, problem, is_example
  return decode


def _log_gaps(file_before, gaps, skipped):
  """Counts and logs the records skipped in one batch (gaps int64 [b], under the file names
  file_before string [b]): in `skipped` (a SkippedRecords, from Python), or with tf.print when it
  is None (a pipeline without Python, as tf.data service workers need). Returns the number (int64)."""
  if skipped is not None:
    return tf.py_function(lambda f, g: skipped.add_gaps(f.numpy(), g.numpy()),
                          [file_before, gaps], tf.int64)
  bad = gaps > 0
  with tf.control_dependencies([tf.print(
      "dataloader: skipped", tf.boolean_mask(gaps, bad), "record(s) that cannot be parsed or "
      "decoded, in", tf.boolean_mask(file_before, bad), output_stream=sys.stderr)]):
    return tf.reduce_sum(gaps)


def _check_batch_fn(training, skipped):
  """Scan function over the decoded batches: counts the skipped records, finds bad data.

  State: int64, the number the next element has if none is skipped. Element: a batch of the
  decoding map's outputs. Returns the next state and (images uint8 [b, S, S, 3], class_idx int32
  [b], message: string, "" or the error that `_raise_message` raises), in evaluation without the
  end-of-pass element (b may then be 0). The error is the message of a record with a problem, or
  says that MAX_CONSECUTIVE_SKIPS or more records in a row were skipped (data that cannot feed a
  run must not spin). Messages are made only for a bad batch (tf.cond): string ops cost per batch.
  """
  @_graph_fn
  def check(expected, batch):
    images, class_idx, number, file_before, problem, is_example = batch
    gaps = number - tf.concat([[expected], number[:-1] + 1], 0)  # [b] records skipped before each
    counted = tf.cond(tf.reduce_any(gaps > 0), lambda: _log_gaps(file_before, gaps, skipped),
                      lambda: tf.constant(0, tf.int64))
    bad_record, spin = problem != "", tf.reduce_max(gaps) >= MAX_CONSECUTIVE_SKIPS
    message = tf.cond(tf.reduce_any(bad_record) | spin, lambda: tf.where(
        tf.reduce_any(bad_record), tf.gather(problem, tf.argmax(tf.cast(bad_record, tf.int32))),
        tf.strings.join([_ERROR_START, tf.strings.as_string(tf.reduce_max(gaps)),
                         " records in a row cannot be decoded (in ",
                         tf.gather(file_before, tf.argmax(gaps)),
                         "); no usable example to train on", _ERROR_END])),
                      lambda: tf.constant(""))
    with tf.control_dependencies([counted]):  # the skips are logged before any error
      message = tf.identity(message)
    if not training:  # the end-of-pass element, in the last batch only
      images, class_idx = tf.cond(
          tf.reduce_all(is_example), lambda: (images, class_idx),
          lambda: (tf.boolean_mask(images, is_example), tf.boolean_mask(class_idx, is_example)))
    return number[-1] + 1, (images, class_idx, message)
  return check


@_graph_fn
def _raise_message(images, class_idx, message):
  """Map function after `_check_batch_fn`'s scan: fails with the batch's error message, if any.
  Apart from the scan, whose state a failure would not advance: the batches a prefetch reads after
  a bad one would count its records as skipped."""
  with tf.control_dependencies([tf.debugging.Assert(message == "", [message])]):
    return tf.identity(images), tf.identity(class_idx)


def _checked(batches, training, skipped):
  """The decoded batches through `_check_batch_fn` and `_raise_message`: (images, class_idx); in
  evaluation without a last batch that held only the end-of-pass element."""
  batches = batches.scan(tf.constant(0, tf.int64), _check_batch_fn(training, skipped))
  batches = batches.map(_raise_message)
  if training:
    return batches
  return batches.filter(_graph_fn(lambda images, class_idx: tf.size(class_idx) > 0))


def _check_trainable(records, decode):
  """The spin check of training: raises UserError unless one of the first MAX_CONSECUTIVE_SKIPS of
  `records` (`_read_file`'s elements of this pipeline, before the shuffle) is usable: `decode`
  (`_decode_fn`'s function, run eagerly) returns for it rather than raising.

  Training repeats its records forever, and `ignore_errors` would search data without a usable
  record without end, before any batch could be checked. Costs one decode of the first record for
  good data, at the start.
  """
  if not tf.executing_eagerly():  # input_fn traced in a graph: nothing to iterate here
    return
  failed = []
  for number, (record, filename, damaged) in enumerate(records.take(MAX_CONSECUTIVE_SKIPS)):
    try:
      decode(tf.constant(number, tf.int64), record, filename, filename, damaged)
      return
    except tf.errors.InvalidArgumentError:
      failed.append(filename.numpy().decode("utf-8", "replace"))
  if failed:
    files = sorted(set(failed))
    raise UserError(f"bad TFRecord data: {len(failed)} records in a row cannot be decoded (in "
                    f"{', '.join(files[:3])}{', ...' if len(files) > 3 else ''}); no usable "
                    f"example to train on")


# ------------------------------------------------------------------------------------------------
# The pipeline.


def list_files(file_pattern):
  """Sorted file names matching `file_pattern` (str, or a list of patterns); UserError when none."""
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  files = sorted({f for pattern in patterns for f in tf.io.gfile.glob(pattern)})
  if not files:
    raise UserError(f"no file matches the TFRecord pattern {file_pattern!r}")
  return files


def _file_sizes(files, training, file_pattern):
  """Sizes in bytes of `files`; UserError when training has only empty files (it would spin)."""
  sizes = [tf.io.gfile.stat(f).length for f in files]
  if training and not any(sizes):
    raise UserError(f"file_pattern={file_pattern}: every matching file is empty "
                    f"({len(files)} files); nothing to train on", param="file_pattern")
  return sizes


def _per_replica_batch_size(batch_size, input_context):
  if input_context is None:
    return batch_size
  replicas = input_context.num_replicas_in_sync
  if batch_size % replicas:
    raise UserError(f"batch_size={batch_size} does not divide over {replicas} replicas; use a "
                    f"multiple of {replicas}", param="batch_size")
  return input_context.get_per_replica_batch_size(batch_size)


def dataset_options(params, training, input_context=None):
  """The tf.data.Options of input_fn for InputParams `params`; shared with benchmarks."""
  options = tf.data.Options()
  options.deterministic = not training or params.deterministic_training
  options.autotune.enabled = True
  options.threading.private_threadpool_size = params.private_threadpool_size
  options.threading.max_intra_op_parallelism = params.max_intra_op_parallelism
  # The skip counter (a py_function) is the only state outside the pipeline: an iterator checkpoint
  # (tf.train.Checkpoint(iterator=...)) saves everything else and warns about it. The skip count
  # is per process: it restarts at 0 after a restore.
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.WARN
  if input_context is not None:  # sharded here already; tf.distribute must not shard again
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  return options


def _records(files, sizes, training, p, seed, num_pipelines, pipeline):
  """Extract: `_read_file`'s elements of this pipeline's share of `files` (sizes in bytes): in
  training from `interleave_cycle_length` files at a time, in a new file order every epoch (the
  repeat after it re-runs this); in evaluation from one file after another, in stored order, and
  then `_end_of_records`."""
  shard_files = len(files) >= num_pipelines
  dataset = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64)))
  if shard_files:  # before the shuffle, so that every pipeline shards the same sorted list
    dataset = dataset.shard(num_pipelines, pipeline)
  if training:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

  @_graph_fn
  def read(filename, size):
    return _read_file(filename, size, p.read_buffer_size)
  if training:  # reads of several files in turn mix the classes; in parallel, their order may vary
    parallel = p.interleave_num_parallel_calls
    dataset = dataset.interleave(read, cycle_length=min(p.interleave_cycle_length, len(files)),
                                 num_parallel_calls=parallel,
                                 deterministic=p.deterministic_training if parallel else None)
  else:
    dataset = dataset.flat_map(read)
  if not shard_files:  # fewer files than pipelines: each keeps every num_pipelines-th record
    dataset = dataset.shard(num_pipelines, pipeline)
  return dataset if training else dataset.concatenate(_end_of_records())


def input_fn(file_pattern, training, params, image_size, batch_size, num_classes=None,
             input_context=None, skipped=None):
  """The dataset of batches for training or evaluation.

  Args:
    file_pattern: glob of TFRecord files (str, or a list of globs), e.g. `DIR/train-*`.
    training: Python bool. True: shuffled, repeated forever, random crops, full batches only.
      False: one pass in file-name and record order, central crops, the last partial batch kept.
    params: InputParams; with `data_service_address`, training batches come from tf.data service.
    image_size: int, the output side S in pixels.
    batch_size: int, the GLOBAL batch (split over the replicas of input_context).
    num_classes: optional int; labels are checked against it.
    input_context: optional `tf.distribute.InputContext`. Its pipeline reads every n-th file (or
      record, when files are fewer than pipelines): together, every record once per epoch.
    skipped: the `SkippedRecords` that counts undecodable records (default `SKIPPED_RECORDS`).

  Returns:
    tf.data.Dataset of ({"image": float32 [B, S, S, 3]}, {"class_idx": int32 [B]}), B = per-replica
    batch, images as `preprocess_image` returns them, class_idx = label - label_offset. Its iterator
    can be saved with `tf.train.Checkpoint(iterator=...)` (without the skip count; the same batches
    follow a restore when `deterministic_training` and `seed` are set).

  Raises:
    UserError: no file matches `file_pattern`; bad `preprocessing` or `mean_rgb`; a batch_size not
      divisible by the replicas; training data whose first MAX_CONSECUTIVE_SKIPS records cannot be
      decoded. When iterated: tf.errors.InvalidArgumentError naming the file (module docstring).
  """
  p = params
  check_input_params(p)
  service = p.data_service_address if training else None
  skipped = None if service else SKIPPED_RECORDS if skipped is None else skipped
  replica_batch = _per_replica_batch_size(batch_size, input_context)
  num_pipelines, pipeline = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
                             if input_context else (1, 0))
  seed = None if p.seed is None or service else p.seed + pipeline  # own augmentation per pipeline
  decode = _decode_fn(training, p, image_size, num_classes, seed)
  files = list_files(file_pattern)
  # Extract.
  dataset = _records(files, _file_sizes(files, training, file_pattern), training, p, seed,
                     num_pipelines, pipeline)
  # Transform.
  if training:  # shuffle, then repeat: one epoch is all seen before the next starts
    _check_trainable(dataset, decode)
    dataset = dataset.shuffle(p.shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat()
  dataset = _numbered(dataset)
  # In order even in training: the skip count needs it (`_numbered`, `map_parallelism`).
  dataset = dataset.map(decode, num_parallel_calls=map_parallelism(p, remote=bool(service)),
                        deterministic=True)
  dataset = dataset.ignore_errors()  # skips records that cannot be parsed or decoded
  # Load: uint8 batches (4x fewer bytes than float32), checked once each.
  dataset = dataset.batch(replica_batch, drop_remainder=training)
  dataset = _checked(dataset, training, skipped)
  options = dataset_options(p, training, input_context)
  if service:  # uint8 batches cross the network: 4x fewer bytes than float32
    dataset = _through_service(dataset.with_options(options), service)
  dataset = dataset.map(_graph_fn(lambda images, class_idx: (  # float32, once per batch
      {"image": subtract_mean(images, p)}, {"class_idx": class_idx})), num_parallel_calls=AUTOTUNE)
  return dataset.prefetch(p.prefetch_buffer_size).with_options(options)


def _through_service(dataset, address):
  """`dataset` run by the workers of the tf.data service dispatcher at `address`.

  Each worker makes its own independent pass (ShardingPolicy.OFF, as Model Garden's tf.data service
  input does for training), with its own shuffles whatever the seed (workers with one seed would send
  the same batches). Batches travel uncompressed: decoded pixels gain little from compression, which
  costs CPU on both sides. Skipped records are logged by the workers (tf.print on their stderr), not
  counted in this process, and the iterator cannot be checkpointed. Evaluation never takes this path:
  an exact pass stays local.
  """
  return dataset.apply(tf.data.experimental.service.distribute(
      tf.data.experimental.service.ShardingPolicy.OFF, address, compression=None))


# ------------------------------------------------------------------------------------------------
# Errors met while iterating.


def user_error_from(error):
  """A one-line `UserError` for a data error raised while iterating input_fn's dataset, else None.

  Args:
    error: an exception, typically `tf.errors.InvalidArgumentError` from a check of input_fn.
  """
  match = re.search(re.escape(_ERROR_START) + "(.*?)" + re.escape(_ERROR_END), str(error), re.DOTALL)
  return UserError(f"bad TFRecord data: {match.group(1)}") if match else None


@contextlib.contextmanager
def user_errors_from_data():
  """Context manager: data errors of input_fn's datasets are re-raised as one-line `UserError`s.

  Use it around the loop that iterates the datasets, e.g.
  `with dataloader.user_errors_from_data(): estimator.train(...)`. Other errors pass unchanged.
  """
  try:
    yield
  except tf.errors.OpError as e:
    user_error = user_error_from(e)
    if user_error is None:
      raise
    raise user_error from e


# ------------------------------------------------------------------------------------------------
# Label map.


def read_label_map(path):
  """Reads a label map file (format in the module docstring).

  Returns:
    list of `LabelEntry`, entry i is class_idx i (label i + 1).

  Raises:
    UserError: a missing file, a malformed line, or labels that are not 1..N in order.
  """
  if not tf.io.gfile.exists(path):
    raise UserError(f"label map {path!r} does not exist")
  entries = []
  with tf.io.gfile.GFile(path) as f:
    for line_number, line in enumerate(f, 1):
      fields = line.rstrip("\n").split("\t")
      if len(fields) != 3 or not fields[0].isdigit() or int(fields[0]) != len(entries) + 1:
        raise UserError(f"label map {path!r} line {line_number}: expected "
                        f"'{len(entries) + 1}<TAB>name<TAB>text', got {line.rstrip()!r}")
      entries.append(LabelEntry(int(fields[0]), fields[1], fields[2]))
  if not entries:
    raise UserError(f"label map {path!r} is empty")
  return entries


def write_label_map(path, entries):
  """Writes `entries` (LabelEntry list, labels 1..N in order) to `path`, atomically."""
  for entry in entries:
    if "\t" in entry.name + entry.text or "\n" in entry.name + entry.text:
      raise UserError(f"class name/text {entry.name!r} / {entry.text!r} contains a tab or newline")
  text = "".join(f"{e.label}\t{e.name}\t{e.text}\n" for e in entries)
  temporary = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(temporary, "w") as f:
    f.write(text)
  tf.io.gfile.rename(temporary, path, overwrite=True)
