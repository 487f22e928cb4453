r"""ImageNet-schema TFRecords from image folders, their manifest, and record counts.

Record schema (the tf.train.Example keys of TensorFlow's inception/data/build_imagenet_data.py,
which dataloader.py reads): image/encoded (bytes, an RGB JPEG), image/height and image/width (int64,
pixels of the stored JPEG), image/colorspace b"RGB", image/channels 3, image/format b"JPEG",
image/filename (bytes, the base name of the source file), image/class/label (int64, 1-based),
image/class/synset and image/class/text (bytes), image/object/bbox/{xmin,ymin,xmax,ymax} (float
lists, fractions of the width/height in [0, 1]) and image/object/bbox/label (int64, once per box).

Two input layouts (`layout`):

  imagenet  the ILSVRC2012 layout, as TensorFlow's build_imagenet_data.py reads it:
      DIR/train/<synset>/*.JPEG
      DIR/validation/*.JPEG with DIR/validation_labels.txt (TensorFlow's name:
          imagenet_2012_validation_synset_labels.txt), one synset per line for the sorted
          validation file names; or DIR/validation/<synset>/*.JPEG (already sorted into folders)
      DIR/synsets.txt (or imagenet_lsvrc_2015_synsets.txt), optional: the synsets in label order
          (default: the sorted train folders, which is ImageNet's order)
      DIR/metadata.txt (or imagenet_metadata.txt), optional: `<synset>\t<human text>` lines
      DIR/bounding_boxes/**/*.xml, optional: ILSVRC bounding-box XML files
      DIR/bounding_boxes.csv (or imagenet_2012_bounding_boxes.csv, or DIR/bounding_boxes/**/*.csv),
          optional: the CSV that TensorFlow's process_bounding_boxes.py writes, lines
          `n00007846_64193.JPEG,0.0060,0.2620,0.7545,0.9940` (file, xmin, ymin, xmax, ymax fractions)
    When our name and TensorFlow's both exist, ours is read. Boxes are matched to images by file
    name without extension; an image listed in a CSV takes its boxes from the CSV, else from its
    XML. Boxes follow process_bounding_boxes.py: XML pixel coordinates are truncated to whole pixels
    (int()) and divided by the XML's image size, a box with min > max is swapped (and kept), values
    are clipped to [0, 1], and a box without area after clipping is dropped.
  folders   any DIR/<class>/*.jpg|jpeg|png|bmp|gif; classes are the sorted folder names; a
    stratified `validation_fraction` of each class (chosen with `seed`) becomes the validation split.

Output in output_dir: train-00000-of-NNNNN ..., validation-00000-of-MMMMM ... (build_imagenet_data's
shard names), the label map labels.txt (format: dataloader's module docstring; labels
1..num_classes) and manifest.json. Training images are shuffled with `seed` across shards (every
shard mixes classes); validation images keep their sorted order. The output depends only on the
inputs and the seed.

Images that are PNG, BMP, GIF (first frame), CMYK or grayscale are decoded with OpenCV and
re-encoded as RGB JPEG (quality 95); RGB JPEGs are stored as they are once TensorFlow's decoder (the
training pipeline's) has read them. With `max_short_side` N > 0, images whose shorter side exceeds
N pixels are shrunk (OpenCV INTER_AREA) to a shorter side of N and re-encoded; boxes are fractions
and stay valid. An empty, undecodable, or not-UTF-8-named file is skipped with its reason (the build
goes on), kept in the manifest and listed at the end.

manifest.json (JSON, written atomically when the build starts, after each new shard, and last when
it is complete): {"format": 1, "complete": bool, "inputs": {input_dir, layout, validation_fraction,
seed, train_shards, validation_shards, max_short_side, num_files, content_hash}, "classes": [{label,
name, text}], "splits": {split: {"shards": [{file, records, bytes, skipped}], "num_records",
"skipped"}}}. content_hash is the SHA-256 of the sorted (relative path, size, mtime in ns) of the
input images and of the files that define labels and boxes. Each shard is written under a temporary
name and renamed when complete: a re-run with the same inputs keeps the complete shards and writes
the others; a re-run whose inputs differ, or a folder with shards and no manifest, is refused unless
`rebuild` (which removes only the files named like ours: shards, their .tmp- leftovers, labels.txt,
manifest.json).
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import xml.etree.ElementTree as ElementTree

from absl import logging
import cv2
import numpy as np
import tensorflow as tf

import dataloader
from tools.common import IMAGE_EXTENSIONS
from tools.common import Progress
from tools.common import UserError
from tools.common import atomic_path
from tools.common import atomic_write
from tools.common import one_line

LAYOUTS = ("imagenet", "folders")
SPLITS = ("train", "validation")
# ImageNet's shard counts (build_imagenet_data.py's defaults): about 1,250 / 390 images per shard.
IMAGENET_SHARDS = {"train": 1024, "validation": 128}
# Default shard size of the folders layout: a few hundred MB of ImageNet-sized JPEGs or less.
IMAGES_PER_SHARD = 1024
# Quality of re-encoded images: close to lossless, about half the size of quality 100.
JPEG_QUALITY = 95
DEFAULT_SEED = 12345  # build_imagenet_data.py's shuffle seed
MANIFEST_FILENAME = "manifest.json"
MANIFEST_FORMAT = 1
# Label and box files of the imagenet layout: our name first, then TensorFlow's (inception/data).
VALIDATION_LABELS_FILES = ("validation_labels.txt", "imagenet_2012_validation_synset_labels.txt")
SYNSETS_FILES = ("synsets.txt", "imagenet_lsvrc_2015_synsets.txt")
METADATA_FILES = ("metadata.txt", "imagenet_metadata.txt")
BOUNDING_BOX_CSV_FILES = ("bounding_boxes.csv", "imagenet_2012_bounding_boxes.csv")
BOUNDING_BOX_DIR = "bounding_boxes"
# The inputs a re-run must share with the manifest to keep its shards.
_COMPARED_INPUTS = ("content_hash", "layout", "validation_fraction", "seed", "train_shards",
                    "validation_shards", "max_short_side")
_SHARD_RE = re.compile(r"(train|validation)-\d{5}-of-\d{5}")
_OWN_FILE_RE = re.compile(r"((train|validation)-\d{5}-of-\d{5}|labels\.txt|manifest\.json)"
                          r"(\.tmp-\d+)?")


@dataclasses.dataclass(frozen=True)
class ImageTask:
  """One image to write: its file, 1-based label, class name, text and boxes.

  bboxes: tuple of (xmin, ymin, xmax, ymax) float tuples, fractions in [0, 1].
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
    train_pattern / validation_pattern: str globs of the shards (None for a split without images).
    num_train / num_validation: int, records in the shards.
    label_map: str, path of labels.txt.
    num_classes: int.
    skipped: list of (path, reason) str tuples: the images left out of the records (this run's and
      those of kept shards, from the manifest); paths are shown with bad UTF-8 bytes as \\xNN.
  """
  train_pattern: str | None
  validation_pattern: str | None
  num_train: int
  num_validation: int
  label_map: str
  num_classes: int
  skipped: list


class OutputMismatch(UserError):
  """output_dir holds records that `build` may not extend: other inputs, no or a damaged manifest."""


def display_path(path):
  """`path` as printable str: bytes that are not UTF-8 (kept by os.listdir as surrogates) as \\xNN."""
  return os.fsencode(path).decode("utf-8", "backslashreplace")


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
  classes, others = {}, []
  for name in sorted(os.listdir(root)):
    folder = os.path.join(root, name)
    if os.path.isdir(folder):
      files = _image_files(folder)
      if files:
        classes[name] = files
      others += sorted(set(os.path.join(folder, f) for f in os.listdir(folder)) - set(files))
  if others:
    logging.warning("Ignored %d file(s) or folder(s) in the class folders of %s that are not images "
                    "(%s), e.g. %s.", len(others), root, " ".join(IMAGE_EXTENSIONS),
                    display_path(others[0]))
  return classes


def _split_folders(input_dir, validation_fraction, rng):
  """(label entries, train tasks, validation tasks) of the folders layout, stratified by class."""
  classes = _class_folders(input_dir)
  if not classes:
    raise UserError(f"input_dir={input_dir}: has no class sub-folder with images "
                    f"({', '.join(IMAGE_EXTENSIONS)})", param="input_dir")
  entries, train, validation = [], [], []
  for label, (folder, files) in enumerate(classes.items(), 1):
    name = display_path(folder)
    entries.append(dataloader.LabelEntry(label, name, name))
    tasks = [ImageTask(f, label, name, name) for f in files]
    num_validation = int(round(validation_fraction * len(tasks)))
    order = rng.permutation(len(tasks))
    validation += [tasks[i] for i in sorted(order[:num_validation])]
    train += [tasks[i] for i in order[num_validation:]]
  return entries, train, validation


def _read_lines(path):
  with open(path, encoding="utf-8", errors="replace") as f:
    return [line.strip() for line in f if line.strip()]


def _first_file(folder, names):
  """The path of the first of `names` that is a file in `folder`, else None."""
  for name in names:
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  return None


def scaled_box(xmin, ymin, xmax, ymax):
  """A box as process_bounding_boxes.py keeps it, or None when it is empty.

  Args:
    xmin, ymin, xmax, ymax: float fractions of the image width/height (any order, any range).

  Returns:
    (xmin, ymin, xmax, ymax) floats in [0, 1] with min <= max (an inverted box is swapped), or None
    when the clipped box has no area (process_bounding_boxes.py's "improperly specified boxes").
  """
  def clip(value):
    return min(max(value, 0.0), 1.0)
  x0, x1 = clip(min(xmin, xmax)), clip(max(xmin, xmax))
  y0, y1 = clip(min(ymin, ymax)), clip(max(ymin, ymax))
  return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def read_bbox_xml(path):
  """Boxes of one ILSVRC bounding-box XML file, as process_bounding_boxes.py reads them.

  Pixel coordinates are truncated to whole pixels (int(float(text))) and divided by the XML's
  size/width and size/height (also truncated); then `scaled_box`.

  Returns:
    list of (xmin, ymin, xmax, ymax) float tuples in [0, 1].

  Raises:
    ValueError: the file is not such XML (ElementTree.ParseError is a ValueError too).
  """
  try:
    root = ElementTree.parse(path).getroot()
    width, height = (int(float(root.findtext(f"size/{k}"))) for k in ("width", "height"))
    boxes = []
    for box in root.iter("bndbox"):
      xmin, ymin, xmax, ymax = (int(float(box.findtext(k)))
                                for k in ("xmin", "ymin", "xmax", "ymax"))
      boxes.append(scaled_box(xmin / width, ymin / height, xmax / width, ymax / height))
  except (TypeError, ZeroDivisionError, ElementTree.ParseError) as e:
    raise ValueError(f"{path}: not an ILSVRC bounding-box file ({e})") from e
  return [box for box in boxes if box]


def read_bbox_csv(path):
  """{image file name without extension: boxes} of a process_bounding_boxes.py CSV file.

  Lines are `file.JPEG,xmin,ymin,xmax,ymax` (fractions); each box goes through `scaled_box`.

  Raises:
    UserError: a line that is not 5 comma-separated fields with 4 numbers (names file and line).
  """
  boxes = {}
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, 1):
      parts = line.strip().split(",")
      if parts == [""]:
        continue
      try:
        if len(parts) != 5:
          raise ValueError
        box = scaled_box(*(float(v) for v in parts[1:]))
      except ValueError:
        raise UserError(f"bounding-box file {path} line {number}: expected "
                        f"'file.JPEG,xmin,ymin,xmax,ymax', got {line.strip()!r}") from None
      if box:
        boxes.setdefault(os.path.splitext(parts[0].strip())[0], []).append(box)
  return boxes


def _bounding_boxes(input_dir):
  """({image file name without extension: tuple of boxes}, the box files read) of the imagenet
  layout (module docstring); unreadable XML files are skipped with a warning."""
  from_xml, from_csv, files = {}, {}, []
  csv_files = [p for p in (os.path.join(input_dir, n) for n in BOUNDING_BOX_CSV_FILES)
               if os.path.isfile(p)]
  for root, _, names in sorted(os.walk(os.path.join(input_dir, BOUNDING_BOX_DIR))):
    for name in sorted(names):
      path = os.path.join(root, name)
      if name.lower().endswith(".csv"):
        csv_files.append(path)
      elif name.lower().endswith(".xml"):
        files.append(path)
        try:
          from_xml[os.path.splitext(name)[0]] = read_bbox_xml(path)
        except ValueError as e:
          logging.warning("Ignoring bounding boxes of %s", e)
  for path in csv_files:
    files.append(path)
    for stem, boxes in read_bbox_csv(path).items():
      from_csv.setdefault(stem, []).extend(boxes)
  return {stem: tuple(boxes) for stem, boxes in {**from_xml, **from_csv}.items()}, files


def _imagenet_classes(input_dir, train_classes):
  """(label entries, label files read) from the synsets and metadata files or the train folders."""
  synsets_file = _first_file(input_dir, SYNSETS_FILES)
  synsets = _read_lines(synsets_file) if synsets_file else sorted(train_classes)
  metadata_file = _first_file(input_dir, METADATA_FILES)
  texts = {}
  if metadata_file:
    for line in _read_lines(metadata_file):
      synset, _, text = line.partition("\t")
      texts[synset] = text.strip() or synset
  entries = [dataloader.LabelEntry(i, s, texts.get(s, s)) for i, s in enumerate(synsets, 1)]
  return entries, [f for f in (synsets_file, metadata_file) if f]


def _imagenet_validation(input_dir, task):
  """(validation tasks, label files read) of the imagenet layout; `task(path, synset, where)`."""
  validation_dir = os.path.join(input_dir, "validation")
  if not os.path.isdir(validation_dir):
    return [], []
  flat = _image_files(validation_dir)
  if not flat:
    return [task(f, s, f"folder validation/{s}")
            for s, files in _class_folders(validation_dir).items() for f in files], []
  labels_file = _first_file(input_dir, VALIDATION_LABELS_FILES)
  if not labels_file:
    raise UserError(f"input_dir={input_dir}: has validation/ images but no "
                    f"{' or '.join(VALIDATION_LABELS_FILES)} giving their synsets",
                    param="input_dir")
  labels = _read_lines(labels_file)
  if len(labels) != len(flat):
    raise UserError(f"input_dir={input_dir}: {labels_file} has {len(labels)} lines for {len(flat)} "
                    "validation images", param="input_dir")
  return [task(f, s, labels_file) for f, s in zip(flat, labels)], [labels_file]


def _list_imagenet(input_dir):
  """(label entries, train tasks, validation tasks, label/box files read) of the ILSVRC2012 layout."""
  train_classes = _class_folders(os.path.join(input_dir, "train"))
  if not train_classes:
    raise UserError(f"input_dir={input_dir}: has no train/<synset>/ folder with images (the "
                    "imagenet layout; layout=folders reads class folders)", param="input_dir")
  entries, label_files = _imagenet_classes(input_dir, train_classes)
  by_synset = {e.name: e for e in entries}
  boxes, box_files = _bounding_boxes(input_dir)

  def task(path, synset, where):
    if synset not in by_synset:
      raise UserError(f"input_dir={input_dir}: {where}: synset {synset!r} is not in the synset "
                      f"list ({len(entries)} synsets)", param="input_dir")
    entry = by_synset[synset]
    stem = os.path.splitext(os.path.basename(path))[0]
    return ImageTask(path, entry.label, entry.name, entry.text, boxes.get(stem, ()))

  train = [task(f, s, f"folder train/{s}") for s, files in train_classes.items() for f in files]
  validation, validation_files = _imagenet_validation(input_dir, task)
  return entries, train, validation, label_files + validation_files + box_files


def _content_hash(input_dir, paths):
  """SHA-256 (hex str) of the sorted (path relative to input_dir, size, mtime in ns) of `paths`."""
  digest = hashlib.sha256()
  for path in sorted(paths):
    try:
      status = os.stat(path)
      size, mtime = status.st_size, status.st_mtime_ns
    except OSError:  # vanished since it was listed: it will be skipped
      size = mtime = -1
    digest.update(os.fsencode(os.path.relpath(path, input_dir)) + b"\0%d\0%d\n" % (size, mtime))
  return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
# Encoding.


class UnreadableImage(Exception):
  """An input image that cannot be read or decoded (skipped and reported)."""


def _shrink(image, max_short_side):
  """`image` (uint8 [h, w, 3]) resized with INTER_AREA so that its shorter side is at most
  `max_short_side` pixels (0: unchanged)."""
  height, width = image.shape[:2]
  if not max_short_side or min(height, width) <= max_short_side:
    return image
  scale = max_short_side / min(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))  # OpenCV: (width, height)
  return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def load_image(path, max_short_side=0):
  """The image of `path` as RGB JPEG bytes, with its stored height and width in pixels.

  RGB JPEGs that need no resizing are returned unchanged once TensorFlow's decoder (the pipeline's)
  has read them; other formats (GIF: first frame), JPEGs with 1 (grayscale) or 4 (CMYK) channels
  and images to shrink are decoded with OpenCV (EXIF orientation ignored, as TensorFlow does) and
  re-encoded at JPEG_QUALITY.

  Args:
    path: str, the image file.
    max_short_side: int, pixels; a larger shorter side is shrunk to it (INTER_AREA); 0 keeps the size.

  Returns:
    (bytes, int height, int width).

  Raises:
    UnreadableImage: the file is empty or cannot be read or decoded.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UnreadableImage(e.strerror or str(e)) from e
  if not data:
    raise UnreadableImage("empty file (0 bytes)")
  if data.startswith(b"\xff\xd8\xff"):  # JPEG: TensorFlow is the judge
    try:
      height, width, channels = tf.io.extract_jpeg_shape(data).numpy()  # channels as stored
      tf.io.decode_jpeg(data)  # the whole file decodes (decode_jpeg turns CMYK into RGB itself)
    except tf.errors.OpError as e:
      raise UnreadableImage(one_line(e)) from e
    if channels == 3 and not (max_short_side and min(height, width) > max_short_side):
      return data, int(height), int(width)
  image = cv2.imdecode(np.frombuffer(data, np.uint8),
                       cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # uint8 BGR [h, w, 3]
  if image is None:
    raise UnreadableImage("OpenCV cannot decode it" +
                          (" (this OpenCV build has no GIF decoder)" if data[:3] == b"GIF" else ""))
  image = _shrink(image, max_short_side)
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
  """The tf.train.Example of one image with every key of the schema (module docstring).

  Args:
    task: ImageTask (its file name must be valid UTF-8).
    jpeg: bytes, the RGB JPEG; height, width: int, its size in pixels.
  """
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


def _load_or_none(task, max_short_side):
  """((jpeg, height, width), None) or (None, the reason to skip the image)."""
  try:
    os.path.basename(task.path).encode("utf-8")
  except UnicodeEncodeError:
    return None, "file name is not valid UTF-8"
  try:
    return load_image(task.path, max_short_side), None
  except UnreadableImage as e:
    return None, str(e)


# ------------------------------------------------------------------------------------------------
# The manifest and record counts.


def shard_path(output_dir, split, shard, num_shards):
  """output_dir/<split>-SSSSS-of-NNNNN: build_imagenet_data.py's shard names (str)."""
  return os.path.join(output_dir, f"{split}-{shard:05d}-of-{num_shards:05d}")


def _check_manifest(manifest):
  """Raises ValueError when `manifest` (parsed JSON) lacks the structure of the module docstring."""
  if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
    raise ValueError(f"not a format-{MANIFEST_FORMAT} manifest")
  if not isinstance(manifest.get("inputs"), dict) or not isinstance(manifest.get("splits"), dict):
    raise ValueError("no 'inputs' or 'splits' object")
  for split, content in manifest["splits"].items():
    shards = content.get("shards") if isinstance(content, dict) else None
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("file"), str) and
        (s.get("records") is None or isinstance(s.get("records"), int)) for s in shards):
      raise ValueError(f"split {split!r} has no valid 'shards' list")


def read_manifest(folder):
  """The manifest.json of `folder` (local or any tf.io.gfile file system) as a dict, or None.

  Returns:
    dict (structure: module docstring), or None when the folder has no manifest.json.

  Raises:
    UserError: the file exists but is not a valid manifest (names the file).
  """
  path = os.path.join(folder, MANIFEST_FILENAME)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      manifest = json.loads(f.read())
    _check_manifest(manifest)
  except (ValueError, tf.errors.OpError) as e:  # JSONDecodeError, UnicodeError: ValueErrors
    raise UserError(f"{path} is damaged: {one_line(e)}") from e
  return manifest


def _write_manifest(output_dir, manifest):
  atomic_write(os.path.join(output_dir, MANIFEST_FILENAME),
               json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _count_records(path):
  """Records in the TFRecord file `path` (int); UserError naming the file when it is damaged."""
  try:
    return int(tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
  except tf.errors.OpError as e:
    raise UserError(f"TFRecord file {path} cannot be read to the end: {one_line(e)}") from e


@dataclasses.dataclass(frozen=True)
class LabelScan:
  """What one pass over TFRecord files found: `records` (int per file pattern, in the order given)
  and the `smallest` and `largest` image/class/label (int) over all of them."""
  records: list
  smallest: int
  largest: int


def _matching_files(file_pattern):
  try:
    files = sorted(tf.io.gfile.glob(file_pattern))
  except tf.errors.OpError:  # e.g. a folder of the pattern does not exist
    files = []
  if not files:
    raise UserError(f"no file matches the TFRecord pattern {file_pattern!r}")
  return files


def _scan_file(path, label_key):
  """(records, smallest label, largest label, records without a label) of one TFRecord file."""
  missing = np.iinfo(np.int64).min
  labels = tf.data.TFRecordDataset(path).batch(4096).map(lambda r: tf.io.parse_example(r, {
      label_key: tf.io.FixedLenFeature([], tf.int64, default_value=missing)})[label_key])
  big = np.iinfo(np.int64).max
  def add(state, batch):
    present = tf.boolean_mask(batch, batch != missing)
    return (state[0] + tf.size(batch, tf.int64), tf.minimum(state[1], tf.reduce_min(present)),
            tf.maximum(state[2], tf.reduce_max(present)),
            state[3] + tf.size(batch, tf.int64) - tf.size(present, tf.int64))
  try:
    zero = tf.constant(0, tf.int64)
    return [int(v) for v in labels.reduce((zero, tf.constant(big, tf.int64),
                                           tf.constant(-big, tf.int64), zero), add)]
  except tf.errors.InvalidArgumentError as e:
    raise UserError(f"TFRecord file {path}: a record's {label_key} is not one int64 (a list, "
                    "or another type)") from e
  except tf.errors.OpError as e:
    raise UserError(f"TFRecord file {path} cannot be read to the end: {_not_a_tfrecord(e)}") from e


def _not_a_tfrecord(error):
  """The one-line reason of a TFRecord read error, with the way out for files of images."""
  return (f"{one_line(error, 100)}; it is damaged or not a TFRecord file (images become records "
          "with python -m scripts.build_tfrecords)")


def record_keys(file_pattern, image_key=None, label_key=None):
  """The (image key, label key) of the records matching `file_pattern` (a glob), from the keys of
  the first record of the first file: the given ones (checked), else the first of
  dataloader.KNOWN_KEYS (the ImageNet schema, TensorFlow Datasets') whose keys it has. A file
  without records gives the ImageNet keys.

  Raises:
    UserError: no file matches, or the first record is not a tf.train.Example with such keys
      (names the file and the keys it has).
  """
  files = _matching_files(file_pattern)
  try:
    path = next((f for f in files if not tf.io.gfile.isdir(f) and tf.io.gfile.stat(f).length),
                files[0])  # the first file with records
    with tf.io.gfile.GFile(path, "rb") as f:
      magic = f.read(2) if not tf.io.gfile.isdir(path) else b""
  except tf.errors.OpError as e:  # e.g. a dangling symbolic link
    raise UserError(f"a file of {file_pattern} cannot be read: {one_line(e, 100)}") from e
  if magic == b"\x1f\x8b":
    raise UserError(f"TFRecord file {path} is GZIP-compressed; the input pipeline reads "
                    "uncompressed TFRecords (its damaged-file check needs their sizes): "
                    "decompress the files first (gunzip)")
  try:
    first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
  except tf.errors.OpError as e:
    raise UserError(f"TFRecord file {path} cannot be read: {_not_a_tfrecord(e)}") from e
  if first is None:
    return image_key or dataloader.IMAGENET_KEYS[0], label_key or dataloader.IMAGENET_KEYS[1]
  try:
    keys = set(tf.train.Example.FromString(first.numpy()).features.feature)
  except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError; any non-Example)
    raise UserError(f"the first record of {path} is not a tf.train.Example") from None
  for known_image, known_label in dataloader.KNOWN_KEYS:
    pair = (image_key or known_image, label_key or known_label)
    if set(pair) <= keys:
      return pair
  expected = (f"{image_key or 'an image key'} and {label_key or 'a label key'}"
              if image_key or label_key else " or ".join(
                  f"{i} and {l}" for i, l in dataloader.KNOWN_KEYS))
  raise UserError(f"the first record of {path} has the keys {', '.join(sorted(keys))}; expected "
                  f"{expected} (the image and label keys can be given)")


def scan_labels(file_patterns, label_key=dataloader.IMAGENET_KEYS[1]):
  """One pass over the TFRecord files matching each of `file_patterns` (globs), reading only the
  int64 label (`label_key`) of each record; logged with Progress. Reads every byte: on ImageNet
  (1.28 million records, about 140 GB) it takes as long as reading the data once.

  Returns:
    LabelScan.
  Raises:
    UserError: a pattern matches no file, a file cannot be read to the end, a record has no label
      (names the file), or no record at all.
  """
  files = [_matching_files(pattern) for pattern in file_patterns]
  progress = Progress("Reading the labels of the records", sum(map(len, files)), unit="files")
  counts, smallest, largest = [], None, None
  for paths in files:
    counts.append(0)
    for path in paths:
      records, low, high, without = _scan_file(path, label_key)
      if without:
        raise UserError(f"{without} record(s) of {path} have no {label_key}")
      if records:
        smallest = low if smallest is None else min(smallest, low)
        largest = high if largest is None else max(largest, high)
      counts[-1] += records
      progress.advance()
  if largest is None:
    raise UserError(f"the files matching {', '.join(file_patterns)} hold no record")
  return LabelScan(counts, smallest, largest)


def _manifest_counts(files):
  """Records per file of `files` from the manifests of their folders, or None when any is unknown
  (no manifest, not listed, no count, or a size other than the manifest's)."""
  counts, manifests = [], {}
  for path in files:
    folder, name = os.path.split(path)
    if folder not in manifests:
      try:
        manifest = read_manifest(folder)
      except UserError as e:
        logging.warning("Counting the records instead: %s", e)
        manifest = None
      manifests[folder] = {} if manifest is None else {
          s["file"]: s for split in manifest["splits"].values() for s in split["shards"]}
    entry = manifests[folder].get(name)
    if entry is None or entry.get("records") is None or (
        entry.get("bytes") is not None and tf.io.gfile.stat(path).length != entry["bytes"]):
      return None
    counts.append(entry["records"])
  return counts


def manifest_count(file_pattern):
  """The number of records in the files matching `file_pattern` (a glob) according to the
  manifest.json of their folders (count and size of each file listed), or None when a file is not
  listed. Raises UserError when no file matches."""
  counts = _manifest_counts(_matching_files(file_pattern))
  return None if counts is None else sum(counts)


def count_examples(file_pattern):
  """The number of records in the TFRecord files matching `file_pattern`, and how it was found.

  Args:
    file_pattern: str glob (tf.io.gfile: local or any supported file system).

  Returns:
    (int records, str source): source is "manifest" when every matched file is listed with its count
    (and size) in the manifest.json of its folder, else "counted" after one pass over the files,
    logged with Progress.

  Raises:
    UserError: no file matches the pattern, or a file cannot be read to the end (names it).
  """
  files = _matching_files(file_pattern)
  counts = _manifest_counts(files)
  if counts is not None:
    return sum(counts), "manifest"
  progress = Progress(f"Counting the records of {file_pattern}", len(files), unit="files")
  total = 0
  for path in files:
    total += _count_records(path)
    progress.advance()
  return total, "counted"


# ------------------------------------------------------------------------------------------------
# Writing.


def _write_shard(path, tasks, executor, max_short_side, progress):
  """Writes the records of `tasks` to `path` through a temporary file; returns (records, skipped)."""
  records, skipped = 0, []
  load = functools.partial(_load_or_none, max_short_side=max_short_side)
  with atomic_path(path) as temporary:
    with tf.io.TFRecordWriter(temporary) as writer:
      for task, (image, reason) in zip(tasks, executor.map(load, tasks)):
        if image is None:
          skipped.append([display_path(task.path), reason])
          logging.warning("Skipping %s: %s", display_path(task.path), reason)
        else:
          writer.write(make_example(task, *image).SerializeToString())
          records += 1
        progress.advance()
  return records, skipped


def _kept_shard(path, previous_entry):
  """The manifest entry of a complete shard kept from an earlier run: its counts from the previous
  manifest when the size matches, else counted (its skipped images are then unknown: [])."""
  size = os.path.getsize(path)
  if previous_entry and previous_entry.get("records") is not None and previous_entry.get(
      "bytes") == size:
    return dict(records=previous_entry["records"], bytes=size,
                skipped=previous_entry.get("skipped") or [])
  return dict(records=_count_records(path), bytes=size, skipped=[])


def _write_split(split, tasks, output_dir, manifest, previous, executor, max_short_side):
  """Writes the shards of `split` listed in `manifest` (consecutive slices of `tasks`), keeping the
  complete ones; updates and rewrites the manifest after each new shard."""
  entries = manifest["splits"][split]["shards"]
  previous_entries = {s["file"]: s for s in ((previous or {}).get("splits", {}).get(split) or
                                             {}).get("shards", [])}
  bounds = np.linspace(0, len(tasks), len(entries) + 1).astype(int)
  progress = Progress(split, len(tasks))
  for shard, entry in enumerate(entries):
    shard_tasks = tasks[bounds[shard]:bounds[shard + 1]]
    path = os.path.join(output_dir, entry["file"])
    if os.path.exists(path):  # complete: written under a temporary name, then renamed
      entry.update(_kept_shard(path, previous_entries.get(entry["file"])))
      progress.advance(len(shard_tasks))
      continue
    records, skipped = _write_shard(path, shard_tasks, executor, max_short_side, progress)
    entry.update(records=records, bytes=os.path.getsize(path), skipped=skipped)
    _write_manifest(output_dir, manifest)
  content = manifest["splits"][split]
  content["num_records"] = sum(s["records"] for s in entries)
  content["skipped"] = [item for s in entries for item in s["skipped"]]


def _own_files(output_dir):
  """Names of the files of `output_dir` that a build writes (shards, labels.txt, manifest.json and
  their .tmp- leftovers), sorted."""
  return sorted(n for n in os.listdir(output_dir) if _OWN_FILE_RE.fullmatch(n) and
                os.path.isfile(os.path.join(output_dir, n)))


def _built_here(output_dir):
  """True when output_dir holds a manifest.json of this builder (JSON with "splits", even if its
  content is damaged): the files named like ours there are a build's. Without it, shards named
  like ours may be another tool's (build_imagenet_data.py uses the same names)."""
  try:
    with open(os.path.join(output_dir, MANIFEST_FILENAME)) as f:
      return "splits" in json.load(f)
  except (OSError, ValueError, TypeError):
    return False


def _differences(before, now):
  """Descriptions (list of str) of the compared inputs that differ between two manifests."""
  differences = []
  for key in _COMPARED_INPUTS:
    if before.get(key) != now[key]:
      if key == "content_hash":
        differences.append(f"the input files changed ({before.get('num_files')} files then, "
                           f"{now['num_files']} now, or other sizes/times)")
      else:
        differences.append(f"{key} {before.get(key)} then, {now[key]} now")
  return differences


def _prepare_output(output_dir, inputs, rebuild):
  """Creates output_dir and checks what it holds against `inputs`.

  Returns the previous manifest whose complete shards may be kept (None: start afresh).
  Raises OutputMismatch (unless `rebuild`, which removes our files) and UserError.
  """
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"output_dir={output_dir}: cannot be created: {e.strerror or e}",
                    param="output_dir") from e
  advice = "rebuild=True (--rebuild) replaces them"
  if rebuild:
    names = _own_files(output_dir)
    built_here = _built_here(output_dir)
    # .tmp- leftovers are named by this builder's atomic writes only.
    strangers = [n for n in names if ".tmp-" not in n and not built_here]
    if strangers:
      raise UserError(f"output_dir={output_dir}: {', '.join(strangers[:3])} "
                      f"{'is' if len(strangers) == 1 else 'are'} named like this builder's files, "
                      f"but no {MANIFEST_FILENAME} of a build is there (another tool's records?); "
                      "move them away (nothing was removed)", param="output_dir")
    for name in names:
      os.remove(os.path.join(output_dir, name))
    if names:
      logging.info("Removed %d file(s) of an earlier build in %s (rebuild).", len(names), output_dir)
    return None
  try:
    previous = read_manifest(output_dir)
  except UserError as e:
    raise OutputMismatch(f"output_dir={output_dir}: {e}; {advice}", param="output_dir") from e
  if previous is None:
    shards = [n for n in _own_files(output_dir) if _SHARD_RE.fullmatch(n)]
    if shards:
      raise OutputMismatch(f"output_dir={output_dir}: holds {len(shards)} file(s) named like "
                           f"TFRecord shards (e.g. {shards[0]}) but no "
                           f"{MANIFEST_FILENAME} (another tool or an older version wrote them); "
                           "move them away or choose another output_dir", param="output_dir")
    return None
  differences = _differences(previous["inputs"], inputs)
  if differences:
    raise OutputMismatch(f"output_dir={output_dir}: holds records of other inputs "
                         f"({'; '.join(differences)}); {advice}", param="output_dir")
  return previous


def _remove_temporaries(output_dir, only_this_process=False):
  """Removes the .tmp- leftovers of our files (of any process, or only of this one)."""
  for name in _own_files(output_dir):
    if ".tmp-" in name and (not only_this_process or name.endswith(f".tmp-{os.getpid()}")):
      os.remove(os.path.join(output_dir, name))


# ------------------------------------------------------------------------------------------------
# The build.


def _check_params(input_dir, output_dir, layout, validation_fraction, num_workers, seed,
                  max_short_side):
  """Raises UserError naming the first bad parameter of `build`."""
  if not input_dir:
    raise UserError("input_dir=: missing; give the folder of images", param="input_dir")
  if not os.path.isdir(input_dir):
    raise UserError(f"input_dir={input_dir}: does not exist or is not a folder", param="input_dir")
  if not output_dir:
    raise UserError("output_dir=: missing; give the folder for the records", param="output_dir")
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise UserError(f"output_dir={output_dir}: is an existing file, not a folder",
                    param="output_dir")
  if layout not in LAYOUTS:
    raise UserError(f"layout={layout}: expected one of {', '.join(LAYOUTS)}", param="layout")
  if not 0.0 <= validation_fraction < 1.0:
    raise UserError(f"validation_fraction={validation_fraction}: expected a fraction in [0, 1)",
                    param="validation_fraction")
  if num_workers is not None and num_workers < 1:
    raise UserError(f"num_workers={num_workers}: expected at least 1 (or none: the CPUs)",
                    param="num_workers")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise UserError(f"seed={seed}: expected an integer >= 0", param="seed")
  if max_short_side < 0:
    raise UserError(f"max_short_side={max_short_side}: expected 0 (keep the size) or a number of "
                    "pixels", param="max_short_side")


def _num_shards(requested, split, layout, num_images):
  """The shard count of a split (int): `requested`, or the layout's default (see `build`)."""
  if requested is not None:
    if requested < 1:
      raise UserError(f"{split}_shards={requested}: expected at least 1", param=f"{split}_shards")
    return requested
  if layout == "imagenet":
    return IMAGENET_SHARDS[split]
  return max(1, -(-num_images // IMAGES_PER_SHARD))


def _new_manifest(inputs, entries, shard_counts):
  """The manifest of a build that has written nothing yet."""
  splits = {split: {"shards": [{"file": os.path.basename(shard_path("", split, i, n)),
                                "records": None, "bytes": None, "skipped": []} for i in range(n)],
                    "num_records": None, "skipped": []}
            for split, n in shard_counts.items()}
  return {"format": MANIFEST_FORMAT, "complete": False, "inputs": inputs,
          "classes": [{"label": e.label, "name": e.name, "text": e.text} for e in entries],
          "splits": splits}


def _list_inputs(input_dir, layout, validation_fraction, seed):
  """({split: tasks}, label entries, label/box files) of `input_dir`; training tasks shuffled."""
  rng = np.random.default_rng(seed)
  if layout == "folders":
    entries, train, validation = _split_folders(input_dir, validation_fraction, rng)
    label_files = []
  else:
    entries, train, validation, label_files = _list_imagenet(input_dir)
  train = [train[i] for i in rng.permutation(len(train))]  # every shard mixes the classes
  logging.info("%s: %d classes, %d training and %d validation images", input_dir, len(entries),
               len(train), len(validation))
  return {"train": train, "validation": validation}, entries, label_files


def _write_all(output_dir, splits, entries, manifest, previous, num_workers, max_short_side):
  """Writes labels.txt, the shards and the manifest (complete, last)."""
  _remove_temporaries(output_dir)
  dataloader.write_label_map(os.path.join(output_dir, dataloader.LABEL_MAP_FILENAME), entries)
  _write_manifest(output_dir, manifest)
  with concurrent.futures.ThreadPoolExecutor(num_workers or os.cpu_count()) as executor:
    try:
      for split in SPLITS:
        if split in manifest["splits"]:
          _write_split(split, splits[split], output_dir, manifest, previous, executor,
                       max_short_side)
    except BaseException:
      executor.shutdown(wait=True, cancel_futures=True)
      raise
  manifest["complete"] = True
  _write_manifest(output_dir, manifest)


def build(input_dir, output_dir, layout="folders", validation_fraction=0.1, train_shards=None,
          validation_shards=None, num_workers=None, seed=DEFAULT_SEED, rebuild=False,
          max_short_side=0):
  """Writes the TFRecord shards, labels.txt and manifest.json of `input_dir` into `output_dir`.

  Args:
    input_dir: str, the image folders in `layout` ("imagenet" or "folders", module docstring).
    output_dir: str, created if needed.
    validation_fraction: float in [0, 1), share of each class for validation (folders layout only).
    train_shards / validation_shards: int shard counts; None: ImageNet's 1024 / 128 for the imagenet
      layout, one shard per 1024 images (at least one) for folders.
    num_workers: int >= 1, threads that read and re-encode images (OpenCV and TensorFlow release the
      GIL); None: the number of CPUs.
    seed: int >= 0, seeds the split and the training shuffle.
    rebuild: bool, remove the records of output_dir (files named like ours only) and write them anew.
    max_short_side: int pixels, shrink larger images to this shorter side; 0 keeps the size.

  Returns:
    BuildResult.

  Raises:
    OutputMismatch: output_dir holds records of other inputs, or shards without (or with a damaged)
      manifest, and not `rebuild`.
    UserError: a bad parameter, a missing or empty input folder, inconsistent label files, or an
      output that cannot be written (full disk, no permission; temporary files are removed).
  """
  _check_params(input_dir, output_dir, layout, validation_fraction, num_workers, seed,
                max_short_side)
  try:
    splits, entries, label_files = _list_inputs(input_dir, layout, validation_fraction, seed)
  except OSError as e:  # e.g. a sub-folder without read permission
    raise UserError(f"input_dir={input_dir}: cannot be read: {one_line(e)}",
                    param="input_dir") from e
  shard_counts = {split: _num_shards(requested, split, layout, len(splits[split]))
                  for split, requested in (("train", train_shards),
                                           ("validation", validation_shards)) if splits[split]}
  sources = [t.path for tasks in splits.values() for t in tasks] + label_files
  inputs = dict(input_dir=os.path.abspath(input_dir), layout=layout,
                validation_fraction=validation_fraction, seed=int(seed),
                train_shards=shard_counts.get("train", 0),
                validation_shards=shard_counts.get("validation", 0), max_short_side=max_short_side,
                num_files=len(sources), content_hash=_content_hash(input_dir, sources))
  manifest = _new_manifest(inputs, entries, shard_counts)
  try:
    previous = _prepare_output(output_dir, inputs, rebuild)
    _write_all(output_dir, splits, entries, manifest, previous, num_workers, max_short_side)
  except (OSError, tf.errors.OpError) as e:
    with contextlib.suppress(OSError):
      _remove_temporaries(output_dir, only_this_process=True)
    raise UserError(f"output_dir={output_dir}: cannot write the records: {one_line(e)}",
                    param="output_dir") from e
  return _result(output_dir, manifest, len(entries))


def _result(output_dir, manifest, num_classes):
  """The BuildResult of a complete manifest; logs the skipped images."""
  patterns, counts, skipped = {}, {}, []
  for split in SPLITS:
    content = manifest["splits"].get(split)
    num_shards = len(content["shards"]) if content else 0
    patterns[split] = (os.path.join(output_dir, f"{split}-*-of-{num_shards:05d}") if content
                       else None)
    counts[split] = content["num_records"] if content else 0
    skipped += [tuple(item) for item in (content["skipped"] if content else [])]
  if skipped:
    logging.warning("Skipped %d image(s):\n%s", len(skipped),
                    "\n".join(f"  {path}: {reason}" for path, reason in skipped))
  return BuildResult(patterns["train"], patterns["validation"], counts["train"],
                     counts["validation"], os.path.join(output_dir, dataloader.LABEL_MAP_FILENAME),
                     num_classes, skipped)
