"""Input pipeline: ImageNet-schema TFRecords in, batches of preprocessed images out.

Data contract. The records are the `tf.train.Example`s of TensorFlow's `build_imagenet_data.py` (the
Inception, Model Garden and seed repositories all use it), and of our own tools/records.py:
`image/encoded` (JPEG bytes), `image/class/label` (int64, 1-based: 1..1000 for ImageNet, 0 unused),
`image/class/synset`, `image/class/text`, `image/height`, `image/width`, `image/colorspace`,
`image/channels`, `image/format`, `image/filename`, and `image/object/bbox/{xmin,ymin,xmax,ymax}`
(float lists in [0, 1], possibly empty) with `image/object/bbox/label`. Shards are named
`train-00000-of-01024` and `validation-00000-of-00128`. Only `image/encoded`, the label and the boxes
are read here. Records of other tools name the image and the label otherwise: InputParams.image_key,
label_key and label_offset (TensorFlow Datasets: `image`, `label`, 0-based; no boxes).

Preprocessing (InputParams.preprocessing):
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

  training:   list files -> shard per input pipeline -> shuffle files -> parallel interleave of
              TFRecordDataset -> shuffle records -> repeat -> number -> parallel map (parse +
              preprocess to uint8) -> batch -> per-batch checks -> rebatch (drop remainder) ->
              mean subtraction per batch (float32) -> prefetch
  evaluation: list files (sorted) -> shard per input pipeline -> read files one after another ->
              the same from `number` on, in order, the last partial batch kept

Speed: on a GPU SqueezeNext trains faster than the host decodes JPEGs, so the pipeline decodes only the
pixels it keeps: every preprocessing computes its crop window from the JPEG header and uses
`decode_and_crop_jpeg` (resizing to 256x256 and cropping 227 is, up to interpolation at the borders,
cropping the matching window of the original and resizing that to 227). Each example ends as uint8
(4x fewer bytes to batch), the mean is subtracted once per batch, and the per-element bookkeeping
uses as few tf.data function calls as it can (each costs about 20 us of CPU per element here).

Bad data: a record that cannot be parsed or whose image cannot be decoded is skipped (`ignore_errors`
after the decoding map) and counted in a `SkippedRecords` object (`SKIPPED_RECORDS` unless input_fn is
given another one), which logs each skip with its file name; the pipeline numbers the records before
the map, so a gap in the numbers after it is a skip (exact, in order). A record without
`image/encoded` or label, a label outside 1..num_classes, or a damaged TFRecord file (tf.data's
DataLossError names no file, so each file ends with a marker that compares the bytes read with the
file's size) stops the pipeline with an InvalidArgumentError naming the file (and label); run the
loop inside `user_errors_from_data()` to turn these into one-line `tools.cli.UserError`s.

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

from tools.common import one_line
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
  """The input pipeline's parameters (the `input` section of tools/params.Params), each declared once
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
  # cache: the autotuned -1 cost 0.2-0.25 ms of CPU per image here, 15% more per training image,
  # in thread hand-offs); -1 lets tf.data tune it, for remote storage with long reads.
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

# Defaults that mark a missing feature, so that the error can name it instead of failing in parsing.
_MISSING_LABEL = -(2**62)
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


# The decoding map keeps the records' order (the skip count needs it), so a slow image (a large
# crop window, a large photo) holds back the elements after it: with more elements in flight than
# cores, the other threads go on decoding meanwhile. `python -m scripts.benchmark input` style runs of
# input_fn training (inception, 224 px, 1,024 synthetic ImageNet-like JPEGs, 2 cores, 4 alternating
# rounds, medians; 2026-12-01 23:20 UTC): tf.data's autotuned parallelism 698 images/s (2.5 ms of CPU
# per image), 4 in flight 790, 8 801, 16 785-857, 32 838, 64 801 (2.2-2.4 ms of CPU per image); the
# plain tf.data pipeline 712-791.
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
  if p.preprocessing == "caffe":
    window_fn = _caffe_window_fn(size, training, crop_seed)
  else:  # torchvision's training crop is the inception one of the whole image
    window_fn = _inception_window_fn(training, bboxes, crop_seed)
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

  The last three dimensions must be static. The mean is subtracted as a whole [S, S, 3] image:
  a same-shape subtraction is vectorised, a [3] broadcast (or bias_add) is about 3x slower here.
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


def _caffe_window_fn(size, training, seed):
  """Caffe: the window of the original that a (random or central) size x size crop of the resize shows.

  The resize side is round(size * 256 / 227) (module docstring); the aspect ratio is not kept, so the
  window's fractions of the original height and width are those of the crop in the resize.
  """
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


def _inception_window_fn(training, bboxes, seed):
  """Inception: a distorted bounding box crop in training, the central 87.5% square in evaluation."""
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
  the rows and columns outside it). Other formats are decoded whole, then cropped.
  Measured on the benchmark's ImageNet-like JPEGs (500x375, quality 90): entropy decoding of every
  row dominates, so the caffe window (227/256 of each side) costs about a full decode and a central
  window of half the area about 93% of one; the resize adds about 20%.
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


# ------------------------------------------------------------------------------------------------
# Records.


class SkippedRecords:
  """Counts (and logs) the records skipped because they could not be parsed or decoded.

  Thread-safe; the pipeline calls `add` when it notices a skip (in order, so the count is exact),
  the runner reads `count` (e.g. with each training log line and after an evaluation pass).

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
# tf.data traces them as written: AutoGraph's source conversion would cost about 3 s per process.
_graph_fn = tf.autograph.experimental.do_not_convert

# Bytes a TFRecord file spends on each record besides its data: 8 length, 4 length CRC, 4 data CRC.
_TFRECORD_FRAMING_BYTES = 16
# Checks of the parsed record, reported after the decoding (see `_parse_and_preprocess`).
_OK, _NO_IMAGE, _NO_LABEL, _BAD_LABEL = 0, 1, 2, 3

# Cost note for the pipeline below: on this 2-core host every tf.data stage that calls a function
# costs about 20 us of CPU per element (trivial map, scan or filter), 2% of a JPEG decode each, so
# the per-element bookkeeping is done in as few function calls as possible and the rest per batch.


def _read_file(filename, size, buffer_size):
  """The records of one TFRecord file, then an end-of-file marker that says if the file was whole.

  Elements: (record: string, filename: string, end_of_file: bool, file_ok: bool). tf.data's
  DataLossError names no file, and `ignore_errors` (downstream) goes on with the next file; so the
  marker compares the bytes read with the file's size (`size`, int64), and a short read (a damaged
  file) is reported after the decoding with the file's name.
  """
  records = tf.data.TFRecordDataset(filename, buffer_size=buffer_size)
  # The flag by zip rather than map: no function call per record.
  records = tf.data.Dataset.zip(records, tf.data.Dataset.from_tensors(False).repeat())
  marker = tf.data.Dataset.from_tensors((tf.constant(""), True))

  @_graph_fn
  def account(read, element):  # read: int64, bytes of the records before `element`
    record, end_of_file = element
    file_ok = tf.logical_or(~end_of_file, read == size)
    read += tf.cast(tf.strings.length(record), tf.int64) + _TFRECORD_FRAMING_BYTES
    return read, (record, filename, end_of_file, file_ok)
  return records.concatenate(marker).scan(tf.constant(0, tf.int64), account)


@_graph_fn
def _number(state, element):
  """Scan function: numbers the records 0, 1, ... and gives each the previous record's file name.

  A marker takes no number: it carries the number of the record after it, so that the numbers of the
  elements that survive `ignore_errors` have a gap exactly where records were skipped; the file name
  of the record before an element is the skipped one's in a gap of one.
  """
  next_index, previous_file = state
  record, filename, end_of_file, file_ok = element
  state = (next_index + 1 - tf.cast(end_of_file, tf.int64),
           tf.where(end_of_file, previous_file, filename))
  return state, (record, filename, end_of_file, file_ok, next_index, previous_file)


def _parse_and_preprocess(record, end_of_file, training, params, image_size, num_classes,
                          with_bboxes, seed):
  """(image uint8 [S, S, 3], class_idx int32, label int64, check int32) of one record or marker.

  Raises an error only if the record cannot be parsed or its image not decoded (the record is then
  skipped). Missing keys and bad labels are returned as `check` and reported after the skipping,
  so that `ignore_errors` cannot hide them. A marker (`end_of_file`) gives zeros and `_OK`.
  """
  features = {
      params.image_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
      params.label_key: tf.io.FixedLenFeature([], tf.int64, default_value=_MISSING_LABEL),
  }
  if with_bboxes:  # dense [N] lists: no sparse-to-dense ops per record
    features.update({f"image/object/bbox/{k}": tf.io.FixedLenSequenceFeature(
        [], tf.float32, allow_missing=True) for k in _BBOX_KEYS})
  parsed = tf.io.parse_single_example(record, features)
  encoded, label = parsed[params.image_key], parsed[params.label_key]
  num_classes = num_classes or tf.int64.max - params.label_offset
  class_idx = label - params.label_offset
  # Scalar selects, not tf.case: no control flow for the common case.
  check = tf.where(end_of_file, _OK, tf.where(
      tf.strings.length(encoded) == 0, _NO_IMAGE, tf.where(
          label == _MISSING_LABEL, _NO_LABEL, tf.where(
              (class_idx < 0) | (class_idx >= num_classes), _BAD_LABEL, _OK))))
  bboxes = None
  if with_bboxes:
    bboxes = tf.stack([parsed[f"image/object/bbox/{k}"] for k in _BBOX_KEYS], 1)  # [N, 4]
  size = image_size
  image = tf.cond((check == _OK) & ~end_of_file,
                  lambda: preprocess_image_uint8(encoded, training, params, size, bboxes, seed),
                  lambda: tf.zeros([size, size, 3], tf.uint8))
  return image, tf.cast(class_idx, tf.int32), label, check


def _check_message(check, label, filename, params, num_classes):
  """The error message for a `check` of `_parse_and_preprocess` (string scalar)."""
  offset = params.label_offset
  valid = f"{offset}..{offset + num_classes - 1}" if num_classes else f">= {offset}"
  in_file = tf.strings.join([" in file ", filename])
  return tf.strings.join([_ERROR_START, tf.gather(tf.stack([
      tf.constant(""),
      tf.strings.join([f"a record has no {params.image_key}", in_file]),
      tf.strings.join([f"a record has no {params.label_key}", in_file]),
      tf.strings.join(["label ", tf.strings.as_string(label), f" is outside {valid} (num_classes="
                       f"{num_classes}, label_offset={offset})", in_file])]), check), _ERROR_END])


def _log_gaps(previous_file, gaps, skipped):
  """Counts and logs the records skipped in one batch (gaps int64 [b], under the file names
  previous_file string [b]): in `skipped` (a SkippedRecords, from Python), or with tf.print when it
  is None (a pipeline without Python, as tf.data service workers need). Returns the number (int64)."""
  if skipped is not None:
    return tf.py_function(lambda f, g: skipped.add_gaps(f.numpy(), g.numpy()),
                          [previous_file, gaps], tf.int64)
  bad = gaps > 0
  with tf.control_dependencies([tf.print(
      "dataloader: skipped", tf.boolean_mask(gaps, bad), "record(s) that cannot be parsed or "
      "decoded, in", tf.boolean_mask(previous_file, bad), output_stream=sys.stderr)]):
    return tf.reduce_sum(gaps)


def _report_fn(params, num_classes, skipped):
  """Scan function over batches: counts skipped records, fails on bad data, drops the markers.

  State: (int64 the number the next record has if none is skipped, int64 records skipped in a row
  since the last usable one). Element: a batch of the decoding map's outputs (markers included).
  Returns the state after the batch and (images uint8 [b, S, S, 3], class_idx int32 [b], message
  string: "" or the batch's error, which `_raise_message` raises) of the batch's records (b may
  be 0). Skips are counted by `_log_gaps`; MAX_CONSECUTIVE_SKIPS in a row
  fail the pipeline (data that cannot feed a run must not spin).
  """
  def first(values, bad):  # the value at the first True of `bad` (bool [b])
    return tf.gather(values, tf.argmax(tf.cast(bad, tf.int32)))

  @_graph_fn
  def report(state, batch):
    expected, in_a_row = state
    images, class_idx, label, check, index, filename, previous_file, end_of_file, file_ok = batch
    after = index + 1 - tf.cast(end_of_file, tf.int64)  # [b] the number expected after each
    gaps = index - tf.concat([[expected], after[:-1]], 0)  # [b] records skipped before each
    counted = tf.cond(tf.reduce_any(gaps > 0), lambda: _log_gaps(previous_file, gaps, skipped),
                      lambda: tf.constant(0, tf.int64))
    in_a_row = tf.where(tf.reduce_any(~end_of_file), tf.constant(0, tf.int64), in_a_row) + counted
    # The messages are made only for a bad batch (tf.cond): string ops cost per batch otherwise.
    bad_file, bad_record, spin = ~file_ok, check != _OK, in_a_row >= MAX_CONSECUTIVE_SKIPS
    file_message = tf.cond(tf.reduce_any(bad_file), lambda: tf.strings.join([
        _ERROR_START, "damaged TFRecord file ", first(filename, bad_file),
        " (it ends in a corrupted record)", _ERROR_END]), lambda: tf.constant(""))
    record_message = tf.cond(tf.reduce_any(bad_record), lambda: _check_message(
        first(check, bad_record), first(label, bad_record), first(filename, bad_record), params,
        num_classes),
        lambda: tf.constant(""))
    spin_message = tf.cond(spin, lambda: tf.strings.join([
        _ERROR_START, tf.strings.as_string(in_a_row), " records in a row cannot be decoded (in ",
        first(previous_file, gaps > 0), "); no usable example to train on", _ERROR_END]),
        lambda: tf.constant(""))
    message = tf.where(file_message != "", file_message,
                       tf.where(record_message != "", record_message, spin_message))
    # A marker ends each file: only a batch that holds one is copied without it.
    images, class_idx = tf.cond(
        tf.reduce_any(end_of_file),
        lambda: (tf.boolean_mask(images, ~end_of_file), tf.boolean_mask(class_idx, ~end_of_file)),
        lambda: (images, class_idx))
    return (after[-1], in_a_row), (images, class_idx, message)
  return report


@_graph_fn
def _raise_message(images, class_idx, message):
  """Map function after `_report_fn`'s scan: fails with the batch's error message, if any. Apart
  from the scan, so that the scan's count stays right for the batches a prefetch reads after it."""
  with tf.control_dependencies([tf.debugging.Assert(message == "", [message])]):
    return tf.identity(images), tf.identity(class_idx)


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
  """Extract: the records of this pipeline's share of `files` (sizes in bytes), with file names and
  end markers (see _read_file); in training shuffled and repeated."""
  shard_files = len(files) >= num_pipelines
  dataset = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64)))
  if shard_files:  # before the shuffle, so that every pipeline shards the same sorted list
    dataset = dataset.shard(num_pipelines, pipeline)
  if training:  # a new file order every epoch (the repeat below re-runs this)
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

  @_graph_fn
  def read(filename, size):
    return _read_file(filename, size, p.read_buffer_size)
  if training:  # reads of several files in turn mix the classes; in parallel, their order may vary
    parallel = p.interleave_num_parallel_calls
    dataset = dataset.interleave(read, cycle_length=min(p.interleave_cycle_length, len(files)),
                                 num_parallel_calls=parallel,
                                 deterministic=p.deterministic_training if parallel else None)
  else:  # files one after another: the records come in their stored order
    dataset = dataset.flat_map(read)
  if not shard_files:  # fewer files than pipelines: each keeps every num_pipelines-th record
    dataset = dataset.shard(num_pipelines, pipeline)
  if training:
    # Shuffle, then repeat: one epoch is all seen before the next starts.
    dataset = dataset.shuffle(p.shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat()
  return dataset


def _decode_fn(training, params, image_size, num_classes, seed):
  """The decoding map's function over `_number`'s elements (see `_parse_and_preprocess`).

  Element k's crop and flip use the stateless seed (augmentation seed, k): reproducible, and
  restored with the iterator (k is the scan state), at no per-element cost.
  """
  augmentation_seed = random.SystemRandom().randrange(2**31) if seed is None else seed
  with_bboxes = training and params.preprocessing == "inception"

  @_graph_fn
  def decode(record, filename, end_of_file, file_ok, index, previous_file):
    element_seed = tf.stack([tf.constant(augmentation_seed, tf.int64), index])
    image, class_idx, label, check = _parse_and_preprocess(
        record, end_of_file, training, params, image_size, num_classes, with_bboxes, element_seed)
    return (image, class_idx, label, check, index, filename, previous_file, end_of_file, file_ok)
  return decode


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
    UserError: no file matches `file_pattern`; bad `preprocessing` or `mean_rgb`; a batch_size
      that does not divide across the replicas. When iterated, tf.errors.InvalidArgumentError naming the file for a damaged TFRecord file, a
      record without image/encoded or label, a label out of range (`user_errors_from_data` makes
      them one-line UserErrors). Records that cannot be parsed or decoded are skipped and counted.
  """
  p = params
  check_input_params(p)
  service = p.data_service_address if training else None
  skipped = None if service else SKIPPED_RECORDS if skipped is None else skipped
  replica_batch = _per_replica_batch_size(batch_size, input_context)
  num_pipelines, pipeline = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
                             if input_context else (1, 0))
  seed = None if p.seed is None or service else p.seed + pipeline  # own augmentation per pipeline
  files = list_files(file_pattern)
  dataset = _records(files, _file_sizes(files, training, file_pattern), training, p, seed,
                     num_pipelines, pipeline)
  dataset = dataset.scan((tf.constant(0, tf.int64), tf.constant("")), _number)
  # Transform. Deterministic even in training: the gap count needs the order; more elements in
  # flight than cores keep the threads busy behind a slow one (`map_parallelism`).
  dataset = dataset.map(_decode_fn(training, p, image_size, num_classes, seed),
                        num_parallel_calls=map_parallelism(p, remote=bool(service)),
                        deterministic=True)
  dataset = dataset.ignore_errors()  # skips records that cannot be parsed or decoded
  # Load. uint8 batches (4x fewer bytes than float32); checks and skip count once per batch, where
  # the markers leave, and rebatch restores the size.
  dataset = dataset.batch(replica_batch)
  dataset = dataset.scan((tf.constant(0, tf.int64),) * 2,
                         _report_fn(p, num_classes, skipped)).map(_raise_message)
  dataset = dataset.rebatch(replica_batch, drop_remainder=training)

  options = dataset_options(p, training, input_context)
  if service:  # uint8 batches cross the network: 4x fewer bytes than float32
    dataset = _through_service(dataset.with_options(options), service)

  to_features_and_labels = _graph_fn(lambda images, class_idx: (  # float32, once per batch
      {"image": subtract_mean(images, p)}, {"class_idx": class_idx}))
  dataset = dataset.map(to_features_and_labels, num_parallel_calls=AUTOTUNE)
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
