"""The built-in demo data set: scikit-learn's handwritten digits as JPEG class folders and TFRecords.

scikit-learn bundles 1,797 real 8x8 handwritten digits (16 grey levels, 10 classes). Each is upscaled
to 64x64 (bicubic), written as an RGB JPEG in `<output_dir>/images/<digit>/`, and converted with
`tools.datasets.records.build` (folders layout) into `<output_dir>/train-*` and `<output_dir>/validation-*`
with a stratified 20% validation split (seed 0): 1,438 training and 359 validation records.
64x64 leaves room for SqueezeNext's crops at an image_size of 48-64 (the caffe resize of 64 is 72).

Idempotent: `<output_dir>/demo_data.json` is written (atomically) last; when it exists and names files
that exist, nothing is rebuilt. An interrupted build is finished by the next call (the builder keeps
complete shards and redoes the rest). A damaged demo_data.json (this module wrote it) or records that
do not match the images are rebuilt, with a warning. Errors name the parameter `output_dir=`.
This module defines no flags (scripts/make_demo_data.py and train.py do).
"""

import dataclasses
import json
import os

from absl import logging
import cv2
import numpy as np
import tensorflow as tf

from tools.datasets import records
from tools.common import UserError
from tools.common import atomic_path
from tools.common import atomic_write

IMAGE_SIZE = 64  # pixels; the 8x8 digits upscaled 8x
VALIDATION_FRACTION = 0.2
SEED = 0
TRAIN_SHARDS, VALIDATION_SHARDS = 4, 2  # a few files, so that interleave and file sharding apply
JPEG_QUALITY = 95
MANIFEST = "demo_data.json"


@dataclasses.dataclass
class DemoData:
  """Where the demo records are.

  Attributes:
    train_pattern / validation_pattern: str globs of the TFRecord shards.
    num_train / num_validation: int, records (1,438 / 359).
    label_map: str, path of labels.txt (names "0".."9", labels 1..10).
    num_classes: int, 10.
    image_size: int, side of the stored JPEGs in pixels (64).
  """
  train_pattern: str
  validation_pattern: str
  num_train: int
  num_validation: int
  label_map: str
  num_classes: int
  image_size: int


def _read_demo_manifest(path):
  """The DemoData stored in `path`; ValueError when it is not valid JSON with DemoData's fields."""
  with open(path, encoding="utf-8") as f:
    fields = json.load(f)  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
  types = {field.name: field.type for field in dataclasses.fields(DemoData)}
  if not isinstance(fields, dict) or set(fields) != set(types) or not all(
      type(fields[name]) is kind for name, kind in types.items()):  # pylint: disable=unidiomatic-typecheck
    raise ValueError(f"expected an object with the fields {', '.join(types)}")
  return DemoData(**fields)


def _complete(output_dir):
  """The DemoData of a finished earlier build in `output_dir`, else None (a damaged demo_data.json
  is reported as a warning and means: build again)."""
  path = os.path.join(output_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    data = _read_demo_manifest(path)
  except (OSError, ValueError) as e:
    logging.warning("Rebuilding the demo data: %s is damaged (%s)", path, e)
    return None
  shards = tf.io.gfile.glob(data.train_pattern) + tf.io.gfile.glob(data.validation_pattern)
  if len(shards) != TRAIN_SHARDS + VALIDATION_SHARDS or not os.path.exists(data.label_map):
    return None
  return data


def write_digit_images(images_dir):
  """Writes the 1,797 digits as 64x64 RGB JPEGs (uint8, quality 95) into
  `images_dir/<digit>/digit_NNNN.jpg`, unless `images_dir` exists.

  Written into a temporary folder renamed when complete, so a half-written folder is never used.

  Raises:
    OSError: a file cannot be written.
  """
  if os.path.isdir(images_dir):
    return
  from sklearn import datasets  # pylint: disable=import-outside-toplevel  # slow; used only here
  digits = datasets.load_digits()  # images: float [1797, 8, 8] in 0..16; target: int 0..9
  with atomic_path(images_dir) as temporary:
    for i, (image, digit) in enumerate(zip(digits.images, digits.target)):
      grey = cv2.resize(np.uint8(image * (255.0 / 16.0)), (IMAGE_SIZE, IMAGE_SIZE),
                        interpolation=cv2.INTER_CUBIC)
      folder = os.path.join(temporary, str(digit))
      os.makedirs(folder, exist_ok=True)
      path = os.path.join(folder, f"digit_{i:04d}.jpg")
      if not cv2.imwrite(path, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"cannot write {path}")


def _build(images_dir, output_dir, num_workers):
  """records.build of the demo images; records that do not match them are rebuilt (with a warning)."""
  arguments = (images_dir, output_dir, "folders", VALIDATION_FRACTION, TRAIN_SHARDS,
               VALIDATION_SHARDS, num_workers, SEED)
  try:
    return records.build(*arguments)
  except records.OutputMismatch as e:  # records of other inputs: rebuilt if a build wrote them
    logging.warning("Rebuilding the demo records: %s", e)
    return records.build(*arguments, rebuild=True)


def make_demo_data(output_dir, num_workers=None):
  """Builds (once) the demo TFRecords in `output_dir` and returns where they are.

  Args:
    output_dir: str, created if needed.
    num_workers: int threads of the TFRecord builder (None: the CPUs).

  Returns:
    DemoData.

  Raises:
    UserError: starting `output_dir=...`: an empty `output_dir`, a folder that cannot be created or
      written (full disk, no permission).
  """
  if not output_dir:
    raise UserError("output_dir=: missing; give the folder for the demo data", param="output_dir")
  existing = _complete(output_dir)
  if existing:
    return existing
  try:
    os.makedirs(output_dir, exist_ok=True)
    images_dir = os.path.join(output_dir, "images")
    write_digit_images(images_dir)
  except OSError as e:
    raise UserError(f"output_dir={output_dir}: cannot write the demo images: {e.strerror or e}",
                    param="output_dir") from e
  result = _build(images_dir, output_dir, num_workers)
  data = DemoData(result.train_pattern, result.validation_pattern, result.num_train,
                  result.num_validation, result.label_map, result.num_classes, IMAGE_SIZE)
  try:
    atomic_write(os.path.join(output_dir, MANIFEST), json.dumps(dataclasses.asdict(data), indent=2))
  except OSError as e:
    raise UserError(f"output_dir={output_dir}: cannot write {MANIFEST}: {e.strerror or e}",
                    param="output_dir") from e
  logging.info("Demo data in %s: %d training, %d validation records", output_dir, data.num_train,
               data.num_validation)
  return data


# ------------------------------------------------------------------------------------------------
# Real photographs: the test data of a first run on one's own photos.

PHOTO_CLASSES = ("china", "flower")  # scikit-learn's two sample photos, in load_sample_images order


def write_photo_crops(root, num_images=500, size=96, seed=0, quality=95, coverage=(0.35, 0.8),
                      grayscale_every=5):
  """Class folders of real photographs: random crops of scikit-learn's two bundled sample photos
  (`china.jpg`: a temple, `flower.jpg`: a flower, 640x427 RGB).

  Each crop has the aspect ratio of the output and covers a fraction drawn uniformly from
  `coverage` (within [0, 1)) of the largest such window of the photo (for a square output: of its
  short side), at a random place; it is resized (OpenCV INTER_AREA) to `size` (int: size x size,
  or (height, width) pixels) and written as a JPEG of `quality` (1..100): root/china/*.jpg and
  root/flower/*.jpg, half of num_images each (china one more when it is odd). Every
  `grayscale_every`-th crop of a class is grayscale (0: none). The defaults make the 96x96 test
  photos; the input benchmark writes ImageNet-sized ones ((375, 500), quality 90, 85-100% of the
  photo: the detail of a camera's JPEG). Returns `root`.
  """
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  out_height, out_width = (size, size) if isinstance(size, int) else size
  rng = np.random.default_rng(seed)
  photos = load_sample_images().images  # RGB uint8 [427, 640, 3] each
  for index, (name, photo) in enumerate(zip(PHOTO_CLASSES, photos)):
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    height, width = photo.shape[:2]
    # The largest window of the output's aspect ratio inside the photo: fit_h x fit_w pixels.
    fit_h = min(height, width * out_height / out_width)
    fit_w = min(width, height * out_width / out_height)
    for i in range((num_images + 1 - index) // 2):  # num_images in all
      fraction = rng.uniform(*coverage)
      h, w = int(fraction * fit_h), int(fraction * fit_w)
      y, x = rng.integers(0, height - h), rng.integers(0, width - w)
      crop = cv2.resize(photo[y:y + h, x:x + w, ::-1], (out_width, out_height),
                        interpolation=cv2.INTER_AREA)
      if grayscale_every and i % grayscale_every == 0:
        crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
      path = os.path.join(folder, f"{name}_{i:04d}.jpg")
      if not cv2.imwrite(path, crop, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"cannot write {path}")
  return str(root)


def make_photo_data(output_dir, num_workers=None):
  """Builds (once) records of 500 photo crops (write_photo_crops) in output_dir: 400 training and
  100 validation records (a stratified 20% split, seed 0), 2 classes. Returns records.BuildResult."""
  images_dir = os.path.join(output_dir, "images")
  if not os.path.isdir(images_dir):
    with atomic_path(images_dir) as temporary:
      write_photo_crops(temporary)
  return records.build(images_dir, output_dir, "folders", VALIDATION_FRACTION,
                       num_workers=num_workers, seed=SEED)
