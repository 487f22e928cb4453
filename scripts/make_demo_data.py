"""The built-in demo data set: scikit-learn's handwritten digits as JPEG class folders and TFRecords.

scikit-learn bundles 1,797 real 8x8 handwritten digits (16 grey levels, 10 classes). Each is upscaled
to 64x64 (bicubic), written as an RGB JPEG in `<output_dir>/images/<digit>/`, and converted with
`scripts/build_tfrecords.py` (folders layout) into `<output_dir>/train-*` and `<output_dir>/validation-*`
with a stratified 20% validation split (seed 0): 1,438 training and 359 validation records.
64x64 leaves room for SqueezeNext's crops at an image_size of 48-64 (the caffe resize of 64 is 72).

Idempotent: `<output_dir>/demo_data.json` is written (atomically) last; when it exists and names files
that exist, nothing is rebuilt. An interrupted build is finished by the next call (the builder keeps
complete shards and redoes the rest).

Usage:
  python scripts/make_demo_data.py --output_dir demo_data
"""

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from scripts import build_tfrecords  # noqa: E402
from tools import cli  # noqa: E402
from tools.cli import UserError  # noqa: E402

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


def _complete(output_dir):
  """The DemoData of a finished earlier build in `output_dir`, else None."""
  path = os.path.join(output_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    data = DemoData(**json.load(f))
  shards = tf.io.gfile.glob(data.train_pattern) + tf.io.gfile.glob(data.validation_pattern)
  if len(shards) != TRAIN_SHARDS + VALIDATION_SHARDS or not os.path.exists(data.label_map):
    return None
  return data


def write_digit_images(images_dir):
  """Writes the 1,797 digits as 64x64 RGB JPEGs into `images_dir/<digit>/digit_NNNN.jpg`.

  Written into a temporary folder renamed when complete, so a half-written folder is never used.
  """
  if os.path.isdir(images_dir):
    return
  from sklearn import datasets  # the only use of scikit-learn, and a slow import
  digits = datasets.load_digits()  # images: float [1797, 8, 8] in 0..16; target: int 0..9
  temporary = f"{images_dir}.tmp-{os.getpid()}"
  for i, (image, digit) in enumerate(zip(digits.images, digits.target)):
    grey = cv2.resize(np.uint8(image * (255.0 / 16.0)), (IMAGE_SIZE, IMAGE_SIZE),
                      interpolation=cv2.INTER_CUBIC)
    folder = os.path.join(temporary, str(digit))
    os.makedirs(folder, exist_ok=True)
    cv2.imwrite(os.path.join(folder, f"digit_{i:04d}.jpg"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
  os.replace(temporary, images_dir)


def make_demo_data(output_dir, num_workers=None):
  """Builds (once) the demo TFRecords in `output_dir` and returns where they are.

  Args:
    output_dir: str, created if needed.
    num_workers: threads of the TFRecord builder (None: the CPUs).

  Returns:
    DemoData.

  Raises:
    UserError: an empty `output_dir` argument or a folder that cannot be created.
  """
  if not output_dir:
    raise UserError("--output_dir is required (the folder for the demo data)")
  existing = _complete(output_dir)
  if existing:
    return existing
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"--output_dir {output_dir!r} cannot be created: {e.strerror}") from e
  images_dir = os.path.join(output_dir, "images")
  write_digit_images(images_dir)
  result = build_tfrecords.build(images_dir, output_dir, "folders", VALIDATION_FRACTION,
                                 TRAIN_SHARDS, VALIDATION_SHARDS, num_workers, SEED)
  data = DemoData(result.train_pattern, result.validation_pattern, result.num_train,
                  result.num_validation, result.label_map, result.num_classes, IMAGE_SIZE)
  temporary = os.path.join(output_dir, f"{MANIFEST}.tmp-{os.getpid()}")
  with open(temporary, "w") as f:
    json.dump(dataclasses.asdict(data), f, indent=2)
  os.replace(temporary, os.path.join(output_dir, MANIFEST))
  logging.info("Demo data in %s: %d training, %d validation records", output_dir, data.num_train,
               data.num_validation)
  return data


FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Folder for the demo images and TFRecords.")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  data = make_demo_data(FLAGS.output_dir)
  print(f"{data.num_train} training records: {data.train_pattern}\n"
        f"{data.num_validation} validation records: {data.validation_pattern}\n"
        f"label map ({data.num_classes} classes): {data.label_map}")


if __name__ == "__main__":
  cli.run(main)
