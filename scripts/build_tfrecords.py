r"""Builds ImageNet-schema TFRecords (DESIGN.md section 3) from image folders.

Two input layouts (--layout):

  imagenet  the ILSVRC2012 layout, as TensorFlow's build_imagenet_data.py reads it:
              DIR/train/<synset>/*.JPEG
              DIR/validation/*.JPEG            + DIR/validation_labels.txt, one synset per line for the
                                               sorted validation file names (TensorFlow's
                                               imagenet_2012_validation_synset_labels.txt), or
              DIR/validation/<synset>/*.JPEG   (already sorted into folders)
              DIR/synsets.txt                  optional: the synsets in label order (default: the sorted
                                               train folders, which is ImageNet's order)
              DIR/metadata.txt                 optional: `<synset>\t<human text>` lines
                                               (imagenet_metadata.txt)
              DIR/bounding_boxes/**/*.xml      optional: ILSVRC bounding-box XML, matched to images by
                                               file name without extension
  folders   any DIR/<class>/*.jpg|jpeg|png|bmp; classes are the sorted folder names; a stratified
            --validation_fraction of each class (chosen with --seed) becomes the validation split.

Output: DIR/train-00000-of-NNNNN ..., DIR/validation-00000-of-MMMMM ... and the label map
DIR/labels.txt (format: dataloader's module docstring). Labels are 1-based (1..num_classes).
Training images are shuffled with --seed across shards (so every shard mixes classes); validation
images keep their sorted order. The output depends only on the inputs and the seed.

Images that are PNG, BMP, CMYK or grayscale are re-encoded as RGB JPEG; RGB JPEGs are stored as they
are after TensorFlow decoded them once (the decoder the training pipeline uses). Unreadable files are
skipped and listed at the end. Each shard is written to a temporary name and renamed when complete:
an interrupted build leaves no partial shard, and a re-run skips the shards already complete.

Usage:
  python scripts/build_tfrecords.py --input_dir photos/ --output_dir records/ --layout folders
"""

import concurrent.futures
import dataclasses
import os
import sys
import time
import xml.etree.ElementTree as ElementTree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dataloader  # noqa: E402
from tools import cli  # noqa: E402
from tools.cli import UserError  # noqa: E402

LAYOUTS = ("imagenet", "folders")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# ImageNet's shard counts (DESIGN.md 3, build_imagenet_data.py): about 1,250 / 390 images per shard.
IMAGENET_SHARDS = {"train": 1024, "validation": 128}
# Default shard size of the folders layout: a few hundred MB of ImageNet-sized JPEGs or less.
IMAGES_PER_SHARD = 1024
# Quality of re-encoded images (PNG, BMP, CMYK, grayscale sources): close to lossless, half the size.
JPEG_QUALITY = 95
DEFAULT_SEED = 12345  # build_imagenet_data.py's shuffle seed


@dataclasses.dataclass(frozen=True)
class ImageTask:
  """One image to write: its file, 1-based label, class name, text and boxes.

  bboxes: tuple of (xmin, ymin, xmax, ymax) float tuples in [0, 1] (the schema's order of keys).
  """
  path: str
  label: int
  synset: str
  text: str
  bboxes: tuple = ()


@dataclasses.dataclass
class BuildResult:
  """What `build` wrote.

  Attributes:
    train_pattern / validation_pattern: str globs of the shards (validation None without one).
    num_train / num_validation: int, records in the shards.
    label_map: str, path of labels.txt.
    num_classes: int.
    skipped: list of (path, reason) of the unreadable images left out by this run.
  """
  train_pattern: str
  validation_pattern: str | None
  num_train: int
  num_validation: int
  label_map: str
  num_classes: int
  skipped: list


class Progress:
  """Logs `done/total` with the rate and the time left, at most every `interval` seconds."""

  def __init__(self, name, total, interval=5.0):
    self.name, self.total, self.interval = name, total, interval
    self.done = 0
    self._start = self._last = time.monotonic()

  def advance(self, n=1):
    self.done += n
    now = time.monotonic()
    if now - self._last >= self.interval or self.done == self.total:
      self._last = now
      rate = self.done / max(now - self._start, 1e-9)
      eta = (self.total - self.done) / rate if rate > 0 else float("inf")
      logging.info("%s: %d/%d images (%.0f%%), %.1f images/s, ETA %s", self.name, self.done,
                   self.total, 100.0 * self.done / max(self.total, 1), rate,
                   time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 1e7 else "?")


# ------------------------------------------------------------------------------------------------
# Listing the inputs.


def _image_files(folder):
  """Sorted image files of `folder` (not recursive), by extension, case-insensitive."""
  return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def _class_folders(root):
  """{class name: sorted image files} of the sub-folders of `root` that hold images."""
  if not os.path.isdir(root):
    return {}
  classes = {}
  for name in sorted(os.listdir(root)):
    if os.path.isdir(os.path.join(root, name)):
      files = _image_files(os.path.join(root, name))
      if files:
        classes[name] = files
  return classes


def _check_input_dir(input_dir):
  if not input_dir:
    raise UserError("--input_dir is required")
  if not os.path.isdir(input_dir):
    raise UserError(f"--input_dir {input_dir!r} does not exist or is not a folder")


def _split_folders(input_dir, validation_fraction, rng):
  """(label entries, train tasks, validation tasks) of the folders layout, stratified by class."""
  classes = _class_folders(input_dir)
  if not classes:
    raise UserError(f"--input_dir {input_dir!r} has no class sub-folder with images "
                    f"({', '.join(IMAGE_EXTENSIONS)})")
  entries, train, validation = [], [], []
  for label, (name, files) in enumerate(classes.items(), 1):
    entries.append(dataloader.LabelEntry(label, name, name))
    tasks = [ImageTask(f, label, name, name) for f in files]
    num_validation = int(round(validation_fraction * len(tasks)))
    order = rng.permutation(len(tasks))
    validation += [tasks[i] for i in sorted(order[:num_validation])]
    train += [tasks[i] for i in order[num_validation:]]
  return entries, train, validation


def _read_lines(path):
  with open(path) as f:
    return [line.rstrip("\n") for line in f if line.strip()]


def _read_bbox_xml(path):
  """Boxes of one ILSVRC XML file: tuple of (xmin, ymin, xmax, ymax) in [0, 1] of the image size."""
  root = ElementTree.parse(path).getroot()
  width, height = float(root.findtext("size/width")), float(root.findtext("size/height"))
  boxes = []
  for box in root.iter("bndbox"):
    xmin, ymin, xmax, ymax = (min(max(float(box.findtext(k)) / scale, 0.0), 1.0) for k, scale in
                              (("xmin", width), ("ymin", height), ("xmax", width), ("ymax", height)))
    if xmin < xmax and ymin < ymax:  # the same check as build_imagenet_data's box processing
      boxes.append((xmin, ymin, xmax, ymax))
  return tuple(boxes)


def _bounding_boxes(input_dir):
  """{image file name without extension: boxes} from DIR/bounding_boxes/**/*.xml (may be empty)."""
  boxes = {}
  for root, _, files in os.walk(os.path.join(input_dir, "bounding_boxes")):
    for name in files:
      if name.lower().endswith(".xml"):
        boxes[os.path.splitext(name)[0]] = _read_bbox_xml(os.path.join(root, name))
  return boxes


def _list_imagenet(input_dir):
  """(label entries, train tasks, validation tasks) of the ILSVRC2012 layout (module docstring)."""
  train_classes = _class_folders(os.path.join(input_dir, "train"))
  if not train_classes:
    raise UserError(f"--input_dir {input_dir!r} has no train/<synset>/ folder with images "
                    "(the imagenet layout; use --layout folders for class folders)")
  synsets_file = os.path.join(input_dir, "synsets.txt")
  synsets = _read_lines(synsets_file) if os.path.exists(synsets_file) else sorted(train_classes)
  metadata_file = os.path.join(input_dir, "metadata.txt")
  texts = (dict(line.split("\t", 1) for line in _read_lines(metadata_file))
           if os.path.exists(metadata_file) else {})
  entries = [dataloader.LabelEntry(i, s, texts.get(s, s)) for i, s in enumerate(synsets, 1)]
  by_synset = {e.name: e for e in entries}
  boxes = _bounding_boxes(input_dir)

  def task(path, synset, where):
    if synset not in by_synset:
      raise UserError(f"{where}: synset {synset!r} is not in the synset list ({len(synsets)} synsets)")
    entry = by_synset[synset]
    stem = os.path.splitext(os.path.basename(path))[0]
    return ImageTask(path, entry.label, entry.name, entry.text, boxes.get(stem, ()))

  train = [task(f, s, f"folder train/{s}") for s, files in train_classes.items() for f in files]
  validation_dir = os.path.join(input_dir, "validation")
  validation = []
  if os.path.isdir(validation_dir):
    flat = _image_files(validation_dir)
    if flat:
      labels_file = os.path.join(input_dir, "validation_labels.txt")
      if not os.path.exists(labels_file):
        raise UserError(f"{labels_file!r} is missing: it gives the synset of each validation image")
      labels = _read_lines(labels_file)
      if len(labels) != len(flat):
        raise UserError(f"{labels_file!r} has {len(labels)} lines for {len(flat)} validation images")
      validation = [task(f, s, labels_file) for f, s in zip(flat, labels)]
    else:
      validation = [task(f, s, f"folder validation/{s}")
                    for s, files in _class_folders(validation_dir).items() for f in files]
  return entries, train, validation


# ------------------------------------------------------------------------------------------------
# Encoding and writing.


class UnreadableImage(Exception):
  """An input image that cannot be decoded (skipped and reported)."""


def load_image(path):
  """The image of `path` as RGB JPEG bytes, with its height and width in pixels.

  RGB JPEGs are returned unchanged once TensorFlow's decoder (the pipeline's) has read them; other
  formats and JPEGs with 1 (grayscale) or 4 (CMYK) channels are decoded with OpenCV and re-encoded.

  Raises:
    UnreadableImage: the file cannot be read or decoded.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UnreadableImage(str(e)) from e
  if data.startswith(b"\xff\xd8\xff"):  # JPEG: TensorFlow is the judge
    try:
      height, width, channels = tf.io.extract_jpeg_shape(data).numpy()  # channels as stored
      tf.io.decode_jpeg(data)  # the whole file decodes (decode_jpeg turns CMYK into RGB itself)
    except tf.errors.InvalidArgumentError as e:
      raise UnreadableImage(dataloader.short_error_message(e)) from e
    if channels == 3:
      return data, int(height), int(width)
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # uint8 BGR [h, w, 3]
  if image is None:
    raise UnreadableImage("OpenCV cannot decode it")
  ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
  if not ok:
    raise UnreadableImage("OpenCV cannot encode it as JPEG")
  return jpeg.tobytes(), image.shape[0], image.shape[1]


def _feature(values):
  """A tf.train.Feature of a list of bytes, ints or floats (the type of the first value, or float)."""
  values = list(values)
  if values and isinstance(values[0], bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
  if values and isinstance(values[0], (int, np.integer)):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def make_example(task, jpeg, height, width):
  """The tf.train.Example of one image with every key of the ImageNet schema (DESIGN.md 3)."""
  xmin, ymin, xmax, ymax = zip(*task.bboxes) if task.bboxes else ((), (), (), ())
  feature = {
      "image/height": _feature([height]),
      "image/width": _feature([width]),
      "image/colorspace": _feature([b"RGB"]),
      "image/channels": _feature([3]),
      "image/class/label": _feature([task.label]),
      "image/class/synset": _feature([task.synset.encode()]),
      "image/class/text": _feature([task.text.encode()]),
      "image/object/bbox/xmin": _feature(xmin),
      "image/object/bbox/ymin": _feature(ymin),
      "image/object/bbox/xmax": _feature(xmax),
      "image/object/bbox/ymax": _feature(ymax),
      "image/object/bbox/label": tf.train.Feature(
          int64_list=tf.train.Int64List(value=[task.label] * len(xmin))),
      "image/format": _feature([b"JPEG"]),
      "image/filename": _feature([os.path.basename(task.path).encode()]),
      "image/encoded": _feature([jpeg]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature))


def _load_or_none(task):
  try:
    return load_image(task.path), None
  except UnreadableImage as e:
    return None, str(e)


def _count_records(path):
  return int(tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def shard_path(output_dir, split, shard, num_shards):
  """DIR/<split>-SSSSS-of-NNNNN, DESIGN.md 3's shard names."""
  return os.path.join(output_dir, f"{split}-{shard:05d}-of-{num_shards:05d}")


def _write_split(split, tasks, num_shards, output_dir, executor, skipped):
  """Writes `tasks` into `num_shards` shards of consecutive images; returns the records written.

  Shards already complete (under their final name) are kept as they are.
  """
  bounds = np.linspace(0, len(tasks), num_shards + 1).astype(int)
  progress = Progress(split, len(tasks))
  num_records = 0
  for shard in range(num_shards):
    shard_tasks = tasks[bounds[shard]:bounds[shard + 1]]
    path = shard_path(output_dir, split, shard, num_shards)
    if os.path.exists(path):  # complete: written under a temporary name, then renamed
      num_records += _count_records(path)
      progress.advance(len(shard_tasks))
      continue
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
      with tf.io.TFRecordWriter(temporary) as writer:
        for task, (image, reason) in zip(shard_tasks, executor.map(_load_or_none, shard_tasks)):
          if image is None:
            skipped.append((task.path, reason))
            logging.warning("Skipping %s: %s", task.path, reason)
          else:
            writer.write(make_example(task, *image).SerializeToString())
            num_records += 1
          progress.advance()
      os.replace(temporary, path)
    finally:
      if os.path.exists(temporary):
        os.remove(temporary)
  return num_records


def _remove_stale_temporaries(output_dir):
  """Removes shards left half-written by a killed run (their temporary names end in .tmp-<pid>)."""
  for name in os.listdir(output_dir):
    if ".tmp-" in name and name.startswith(("train-", "validation-")):
      os.remove(os.path.join(output_dir, name))


def _num_shards(requested, split, layout, num_images):
  if requested is not None:
    if requested < 1:
      raise UserError(f"--{split}_shards must be >= 1, got {requested}")
    return requested
  if layout == "imagenet":
    return IMAGENET_SHARDS[split]
  return max(1, -(-num_images // IMAGES_PER_SHARD))


def build(input_dir, output_dir, layout="folders", validation_fraction=0.1, train_shards=None,
          validation_shards=None, num_workers=None, seed=DEFAULT_SEED):
  """Writes the TFRecord shards and labels.txt of `input_dir` into `output_dir`.

  Args:
    input_dir: str, the image folders in `layout` ("imagenet" or "folders", module docstring).
    output_dir: str, created if needed.
    validation_fraction: float in [0, 1), share of each class for validation (folders layout only).
    train_shards / validation_shards: int shard counts; None: ImageNet's 1024 / 128 for the imagenet
      layout, one shard per 1024 images (at least one) for folders.
    num_workers: int, threads that read and re-encode images (OpenCV and TensorFlow release the GIL);
      None: the number of CPUs.
    seed: int, seeds the split and the training shuffle.

  Returns:
    BuildResult.

  Raises:
    UserError: a missing or empty input folder, a bad layout or fraction, inconsistent label files.
  """
  _check_input_dir(input_dir)
  if layout not in LAYOUTS:
    raise UserError(f"--layout {layout!r} is not one of {LAYOUTS}")
  if not 0.0 <= validation_fraction < 1.0:
    raise UserError(f"--validation_fraction must be in [0, 1), got {validation_fraction}")
  rng = np.random.default_rng(seed)
  if layout == "folders":
    entries, train, validation = _split_folders(input_dir, validation_fraction, rng)
  else:
    entries, train, validation = _list_imagenet(input_dir)
  train = [train[i] for i in rng.permutation(len(train))]  # every shard mixes the classes
  logging.info("%s: %d classes, %d training and %d validation images", input_dir, len(entries),
               len(train), len(validation))

  os.makedirs(output_dir, exist_ok=True)
  _remove_stale_temporaries(output_dir)
  label_map = os.path.join(output_dir, dataloader.LABEL_MAP_FILENAME)
  dataloader.write_label_map(label_map, entries)
  skipped = []
  counts, patterns = {}, {}
  with concurrent.futures.ThreadPoolExecutor(num_workers or os.cpu_count()) as executor:
    try:
      for split, tasks, requested in (("train", train, train_shards),
                                      ("validation", validation, validation_shards)):
        if not tasks:
          counts[split], patterns[split] = 0, None
          continue
        num_shards = _num_shards(requested, split, layout, len(tasks))
        counts[split] = _write_split(split, tasks, num_shards, output_dir, executor, skipped)
        patterns[split] = os.path.join(output_dir, f"{split}-*-of-{num_shards:05d}")
    except BaseException:
      executor.shutdown(wait=True, cancel_futures=True)
      raise
  if skipped:
    logging.warning("Skipped %d unreadable image(s):\n%s", len(skipped),
                    "\n".join(f"  {path}: {reason}" for path, reason in skipped))
  return BuildResult(patterns["train"], patterns["validation"], counts["train"],
                     counts["validation"], label_map, len(entries), skipped)


FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI flags (only when run as a script, so that importing this module defines none)."""
  flags.DEFINE_string("input_dir", None, "Folder of images in the --layout.")
  flags.DEFINE_string("output_dir", None, "Folder for the TFRecord shards and labels.txt.")
  flags.DEFINE_enum("layout", "folders", LAYOUTS,
                    "imagenet: ILSVRC2012 train/ and validation/ folders; folders: <class>/ folders.")
  flags.DEFINE_float("validation_fraction", 0.1,
                     "Share of each class that goes to validation (folders layout).")
  flags.DEFINE_integer("train_shards", None,
                       "Training shards (default: 1024 for imagenet, 1 per 1024 images for folders).")
  flags.DEFINE_integer("validation_shards", None,
                       "Validation shards (default: 128 for imagenet, 1 per 1024 images for folders).")
  flags.DEFINE_integer("num_workers", None, "Threads reading and encoding images (default: CPUs).")
  flags.DEFINE_integer("seed", DEFAULT_SEED, "Seeds the validation split and the training shuffle.")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.output_dir:
    raise UserError("--output_dir is required")
  result = build(FLAGS.input_dir, FLAGS.output_dir, FLAGS.layout, FLAGS.validation_fraction,
                 FLAGS.train_shards, FLAGS.validation_shards, FLAGS.num_workers, FLAGS.seed)
  print(f"{result.num_train} training records: {result.train_pattern}\n"
        f"{result.num_validation} validation records: {result.validation_pattern}\n"
        f"label map ({result.num_classes} classes): {result.label_map}\n"
        f"skipped images: {len(result.skipped)}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
