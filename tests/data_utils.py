"""Small real data for tests: JPEG class folders, TFRecords built with the project's builder.

Other test modules import these (`from tests import data_utils` or `import data_utils` with tests/ on
the import path through pyproject.toml); every function takes a folder (pytest's tmp_path) and returns plain values.
"""

import os

import cv2
import numpy as np
import tensorflow as tf

from tools.datasets import records


def class_colour(label, num_classes):
  """A BGR colour (3 uint8 ints) that tells the classes apart, for images a tiny network can learn."""
  hue = int(180 * (label - 1) / max(num_classes, 1))
  hsv = np.uint8([[[hue, 200, 220]]])
  return [int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]]


def write_image_folders(root, num_classes=3, per_class=4, size=32, seed=0):
  """Writes `per_class` JPEGs of size x size per class into root/class<k>/ and returns `root`.

  Each image is its class colour plus noise (labels 1..num_classes in class-folder order).
  """
  rng = np.random.default_rng(seed)
  for label in range(1, num_classes + 1):
    folder = os.path.join(root, f"class{label - 1}")
    os.makedirs(folder, exist_ok=True)
    colour = np.float32(class_colour(label, num_classes))
    for i in range(per_class):
      image = np.clip(colour + rng.normal(scale=20.0, size=(size, size, 3)), 0, 255).astype(np.uint8)
      cv2.imwrite(os.path.join(folder, f"img{i:04d}.jpg"), image)
  return str(root)


def build_records(folder, num_classes=3, per_class=4, size=32, validation_fraction=0.25,
                  train_shards=2, validation_shards=1, seed=0):
  """Image folders under folder/images, TFRecords under folder/records: a `BuildResult`.

  The result has train_pattern, validation_pattern, num_train, num_validation, label_map,
  num_classes (see tools/datasets/records.py).
  """
  images = write_image_folders(os.path.join(folder, "images"), num_classes, per_class, size, seed)
  return records.build(images, os.path.join(folder, "records"), "folders", validation_fraction,
                       train_shards, validation_shards, num_workers=2, seed=seed)


def read_examples(file_pattern):
  """The tf.train.Examples of the files matching `file_pattern`, in sorted file and record order."""
  examples = []
  for path in sorted(tf.io.gfile.glob(file_pattern)):
    for record in tf.data.TFRecordDataset(path):
      examples.append(tf.train.Example.FromString(record.numpy()))
  return examples


def write_records(path, examples):
  """Writes `examples` (tf.train.Example or bytes) to the TFRecord file `path`; returns `path`."""
  with tf.io.TFRecordWriter(path) as writer:
    for example in examples:
      writer.write(example if isinstance(example, bytes) else example.SerializeToString())
  return path


def foreign_records(file_pattern, path, image_key, label_key, label_shift):
  """Rewrites the records of `file_pattern` (the builder's) as another tool might have written them:
  one file `path` whose records hold only the image under `image_key` and image/class/label +
  `label_shift` under `label_key`. Returns `path`."""
  rewritten = []
  for source in read_examples(file_pattern):
    feature = source.features.feature
    label = feature["image/class/label"].int64_list.value[0] + label_shift
    rewritten.append(tf.train.Example(features=tf.train.Features(feature={
        image_key: feature["image/encoded"],
        label_key: tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))})))
  return write_records(path, rewritten)


def example(encoded=None, label=None):
  """A minimal record: image/encoded bytes and a 1-based image/class/label (either may be left out)."""
  feature = {}
  if encoded is not None:
    feature["image/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))
  if label is not None:
    feature["image/class/label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def jpeg_bytes(height=24, width=32, value=128):
  """A JPEG of a grey image with a gradient, as bytes."""
  image = np.full((height, width, 3), value, np.uint8)
  image[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[np.newaxis]
  return cv2.imencode(".jpg", image)[1].tobytes()

