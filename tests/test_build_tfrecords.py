"""tools/records.py, tools/demo_data.py and their programs scripts/build_tfrecords.py and
scripts/make_demo_data.py, on small images written by the tests."""

import os
import subprocess
import sys

import cv2
import numpy as np
from PIL import Image  # a dependency of tensorboard; OpenCV cannot write CMYK JPEGs
import pytest
import tensorflow as tf

import data_utils
import dataloader
from tools import demo_data
from tools import records as build_tfrecords
from tools.common import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# DESIGN.md section 3: every key of build_imagenet_data.py's schema and its value type.
SCHEMA = {
    "image/encoded": "bytes_list", "image/class/label": "int64_list",
    "image/class/synset": "bytes_list", "image/class/text": "bytes_list",
    "image/height": "int64_list", "image/width": "int64_list", "image/colorspace": "bytes_list",
    "image/channels": "int64_list", "image/format": "bytes_list", "image/filename": "bytes_list",
    "image/object/bbox/xmin": "float_list", "image/object/bbox/ymin": "float_list",
    "image/object/bbox/xmax": "float_list", "image/object/bbox/ymax": "float_list",
    "image/object/bbox/label": "int64_list",
}


def _values(example, key):
  feature = example.features.feature[key]
  return list(getattr(feature, feature.WhichOneof("kind")).value)


def _write_ilsvrc(root):
  """A tiny ILSVRC2012 layout: 2 synsets x 2 train images, 3 flat validation images, 1 box XML."""
  rng = np.random.default_rng(0)
  synsets = ["n01440764", "n01443537"]
  for synset in synsets:
    os.makedirs(root / "train" / synset)
    for i in range(2):
      cv2.imwrite(str(root / "train" / synset / f"{synset}_{i}.JPEG"),
                  rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
  os.makedirs(root / "validation")
  for i in range(3):
    cv2.imwrite(str(root / "validation" / f"ILSVRC2012_val_{i:08d}.JPEG"),
                rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
  (root / "validation_labels.txt").write_text("n01443537\nn01440764\nn01443537\n")
  (root / "synsets.txt").write_text("\n".join(synsets) + "\n")
  (root / "metadata.txt").write_text("n01440764\ttench, Tinca tinca\nn01443537\tgoldfish\n")
  os.makedirs(root / "bounding_boxes" / synsets[0])
  (root / "bounding_boxes" / synsets[0] / f"{synsets[0]}_1.xml").write_text(
      "<annotation><filename>n01440764_1</filename><size><width>40</width><height>30</height>"
      "</size><object><name>n01440764</name><bndbox><xmin>4</xmin><ymin>3</ymin><xmax>20</xmax>"
      "<ymax>30</ymax></bndbox></object></annotation>")
  return synsets


def test_ilsvrc_layout_writes_every_schema_key_with_boxes(tmp_path):
  synsets = _write_ilsvrc(tmp_path / "in")
  result = build_tfrecords.build(str(tmp_path / "in"), str(tmp_path / "out"), "imagenet",
                                 train_shards=2, validation_shards=1, num_workers=2)
  assert sorted(os.listdir(tmp_path / "out")) == [
      "labels.txt", "manifest.json", "train-00000-of-00002", "train-00001-of-00002",
      "validation-00000-of-00001"]
  assert (result.num_train, result.num_validation, result.num_classes) == (4, 3, 2)
  train = data_utils.read_examples(result.train_pattern)
  for example in train:
    for key, kind in SCHEMA.items():
      assert example.features.feature[key].WhichOneof("kind") == kind or (
          key.startswith("image/object") and not _values(example, key)), key
    label = _values(example, "image/class/label")[0]
    assert label in (1, 2)  # 1-based, in synsets.txt order
    assert _values(example, "image/class/synset") == [synsets[label - 1].encode()]
    assert _values(example, "image/class/text") == [[b"tench, Tinca tinca", b"goldfish"][label - 1]]
    assert _values(example, "image/height") == [30] and _values(example, "image/width") == [40]
    assert _values(example, "image/colorspace") == [b"RGB"] and _values(example, "image/channels") == [3]
    assert _values(example, "image/format") == [b"JPEG"]
  boxed = [e for e in train if _values(e, "image/filename") == [b"n01440764_1.JPEG"]][0]
  np.testing.assert_allclose([_values(boxed, f"image/object/bbox/{k}")[0]
                              for k in ("xmin", "ymin", "xmax", "ymax")], [0.1, 0.1, 0.5, 1.0])
  assert _values(boxed, "image/object/bbox/label") == [1]
  validation = data_utils.read_examples(result.validation_pattern)  # sorted, labels from the file
  assert [_values(e, "image/class/label")[0] for e in validation] == [2, 1, 2]
  assert [e.name for e in dataloader.read_label_map(result.label_map)] == synsets


def test_png_cmyk_and_grayscale_become_rgb_jpeg_and_corrupt_files_are_skipped(tmp_path):
  folder = tmp_path / "in" / "things"
  os.makedirs(folder)
  rgb = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
  cv2.imwrite(str(folder / "a.png"), rgb)
  cv2.imwrite(str(folder / "b.jpg"), rgb[:, :, 0])  # grayscale JPEG (1 channel)
  Image.fromarray(rgb).convert("CMYK").save(folder / "c.jpg", "JPEG")
  cv2.imwrite(str(folder / "d.bmp"), rgb)
  (folder / "e.jpg").write_bytes(data_utils.jpeg_bytes()[:200])  # truncated
  (folder / "f.png").write_bytes(b"not an image")
  result = build_tfrecords.build(str(tmp_path / "in"), str(tmp_path / "out"), "folders",
                                 validation_fraction=0.0)
  assert sorted(os.path.basename(p) for p, _ in result.skipped) == ["e.jpg", "f.png"]
  examples = data_utils.read_examples(result.train_pattern)
  assert sorted(_values(e, "image/filename")[0] for e in examples) == [b"a.png", b"b.jpg",
                                                                        b"c.jpg", b"d.bmp"]
  for example in examples:
    encoded = _values(example, "image/encoded")[0]
    assert tf.io.is_jpeg(encoded)
    image = tf.io.decode_jpeg(encoded)  # channels as stored
    assert image.shape == (20, 24, 3)
    assert tf.io.extract_jpeg_shape(encoded).numpy().tolist() == [20, 24, 3]


def test_interrupted_build_leaves_no_partial_shard_and_resumes(tmp_path, monkeypatch):
  images = data_utils.write_image_folders(str(tmp_path / "images"), num_classes=2, per_class=6)
  out = tmp_path / "out"
  calls = []
  real_load = build_tfrecords.load_image

  def load_then_interrupt(path, *args):
    calls.append(path)
    if len(calls) == 5:  # in the second of three training shards (4 + 4 + 4 images)
      raise KeyboardInterrupt
    return real_load(path, *args)
  monkeypatch.setattr(build_tfrecords, "load_image", load_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    build_tfrecords.build(images, str(out), validation_fraction=0.0, train_shards=3, num_workers=1)
  assert sorted(os.listdir(out)) == ["labels.txt", "manifest.json", "train-00000-of-00003"]
  monkeypatch.setattr(build_tfrecords, "load_image", real_load)
  resumed = build_tfrecords.build(images, str(out), validation_fraction=0.0, train_shards=3)
  fresh = build_tfrecords.build(images, str(tmp_path / "fresh"), validation_fraction=0.0,
                                train_shards=3)
  assert resumed.num_train == fresh.num_train == 12
  for shard in range(3):  # same seed, same bytes
    name = build_tfrecords.shard_path("", "train", shard, 3)
    assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_folders_split_is_stratified_and_seeded(tmp_path):
  images = data_utils.write_image_folders(str(tmp_path / "images"), num_classes=3, per_class=10)
  results = [build_tfrecords.build(images, str(tmp_path / f"out{i}"), validation_fraction=0.2,
                                   seed=seed) for i, seed in enumerate((1, 1, 2))]
  labels = [_values(e, "image/class/label")[0]
            for e in data_utils.read_examples(results[0].validation_pattern)]
  assert labels == [1, 1, 2, 2, 3, 3]
  names = [[_values(e, "image/filename")[0] for e in data_utils.read_examples(r.validation_pattern)]
           for r in results]
  assert names[0] == names[1] and names[0] != names[2]


@pytest.mark.parametrize("layout", ["folders", "imagenet"])
def test_missing_or_empty_input_folder_is_a_user_error(tmp_path, layout):
  with pytest.raises(UserError, match="does not exist"):
    build_tfrecords.build(str(tmp_path / "nothing"), str(tmp_path / "out"), layout)
  os.makedirs(tmp_path / "empty" / "train")
  with pytest.raises(UserError, match="has no"):
    build_tfrecords.build(str(tmp_path / "empty"), str(tmp_path / "out"), layout)


def _run_script(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_scripts_report_bad_folders_on_one_line(tmp_path):
  empty = tmp_path / "empty"
  os.makedirs(empty)
  for args, expected in (
      (["-m", "scripts.build_tfrecords", f"--input_dir={empty}", f"--output_dir={tmp_path}/o"],
       f"error: --input_dir={empty}: has no class sub-folder"),
      (["-m", "scripts.make_demo_data"], "error: --output_dir=: missing")):
    run = _run_script(*args)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected), run.stderr


def test_make_demo_data_is_stratified_and_idempotent(tmp_path):
  data = demo_data.make_demo_data(str(tmp_path / "demo"))
  assert (data.num_train, data.num_validation, data.num_classes) == (1438, 359, 10)
  labels = [_values(e, "image/class/label")[0]
            for e in data_utils.read_examples(data.validation_pattern)]
  assert len(labels) == 359 and set(np.bincount(labels)[1:]) <= {35, 36, 37}  # 20% of each digit
  example = data_utils.read_examples(data.train_pattern)[0]
  assert (_values(example, "image/height"), _values(example, "image/width")) == ([64], [64])
  stamp = os.path.getmtime(tmp_path / "demo" / "train-00000-of-00004")
  assert demo_data.make_demo_data(str(tmp_path / "demo")) == data
  assert os.path.getmtime(tmp_path / "demo" / "train-00000-of-00004") == stamp
