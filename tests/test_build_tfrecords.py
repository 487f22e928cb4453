"""tools/datasets/records.py, tools/datasets/demo_data.py and their programs scripts/build_tfrecords.py and
scripts/make_demo_data.py, on small images written by the tests."""

import json
import os
import resource
import signal
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import cv2
import numpy as np
from PIL import Image  # a dependency of tensorboard; OpenCV cannot write CMYK JPEGs or GIFs
import pytest
import tensorflow as tf

import data_utils
import dataloader
from scripts import build_tfrecords
from scripts import make_demo_data
from tools.cli import flags as cli
from tools.datasets import demo_data
from tools.datasets import records
from tools.common import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every key of build_imagenet_data.py's schema (tools/datasets/records.py's docstring) and its value type.
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


def _write_ilsvrc(root, tensorflow_names=False):
  """A tiny ILSVRC2012 layout: 2 synsets x 2 train images, 3 flat validation images, 1 box XML;
  with `tensorflow_names`, the label files under TensorFlow's names and the box in its CSV."""
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
  names = (["imagenet_2012_validation_synset_labels.txt", "imagenet_lsvrc_2015_synsets.txt",
            "imagenet_metadata.txt"] if tensorflow_names else
           ["validation_labels.txt", "synsets.txt", "metadata.txt"])
  (root / names[0]).write_text("n01443537\nn01440764\nn01443537\n")
  (root / names[1]).write_text("\n".join(synsets) + "\n")
  (root / names[2]).write_text("n01440764\ttench, Tinca tinca\nn01443537\tgoldfish\n"
                               "n99999999\tnot in the data set\n")
  if tensorflow_names:  # process_bounding_boxes.py's CSV; the second box is inverted in x
    (root / "imagenet_2012_bounding_boxes.csv").write_text(
        "n01440764_1.JPEG,0.1000,0.1000,0.5000,1.0000\n"
        "n01440764_1.JPEG,0.7500,0.2000,0.2500,0.4000\n")
    return synsets
  os.makedirs(root / "bounding_boxes" / synsets[0])
  (root / "bounding_boxes" / synsets[0] / f"{synsets[0]}_1.xml").write_text(
      "<annotation><filename>n01440764_1</filename><size><width>40</width><height>30</height>"
      "</size><object><name>n01440764</name><bndbox><xmin>4</xmin><ymin>3</ymin><xmax>20</xmax>"
      "<ymax>30</ymax></bndbox></object></annotation>")
  return synsets


@pytest.mark.parametrize("tensorflow_names", [False, True])
def test_ilsvrc_layout_writes_every_schema_key_with_boxes(tmp_path, tensorflow_names):
  synsets = _write_ilsvrc(tmp_path / "in", tensorflow_names)
  result = records.build(str(tmp_path / "in"), str(tmp_path / "out"), "imagenet",
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
  boxes = [_values(boxed, f"image/object/bbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
  expected = [[0.1, 0.25], [0.1, 0.2], [0.5, 0.75], [1.0, 0.4]] if tensorflow_names else [
      [0.1], [0.1], [0.5], [1.0]]  # the CSV's inverted box is kept, with xmin and xmax swapped
  np.testing.assert_allclose(boxes, expected, rtol=1e-6)
  assert _values(boxed, "image/object/bbox/label") == [1] * len(expected[0])
  unboxed = [e for e in train if _values(e, "image/filename") != [b"n01440764_1.JPEG"]]
  assert all(not _values(e, "image/object/bbox/xmin") for e in unboxed)
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
  result = records.build(str(tmp_path / "in"), str(tmp_path / "out"), "folders",
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
  real_load = records.load_image

  def load_then_interrupt(path, *args):
    calls.append(path)
    if len(calls) == 5:  # in the second of three training shards (4 + 4 + 4 images)
      raise KeyboardInterrupt
    return real_load(path, *args)
  monkeypatch.setattr(records, "load_image", load_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    records.build(images, str(out), validation_fraction=0.0, train_shards=3, num_workers=1)
  assert sorted(os.listdir(out)) == ["labels.txt", "manifest.json", "train-00000-of-00003"]
  monkeypatch.setattr(records, "load_image", real_load)
  resumed = records.build(images, str(out), validation_fraction=0.0, train_shards=3)
  fresh = records.build(images, str(tmp_path / "fresh"), validation_fraction=0.0,
                                train_shards=3)
  assert resumed.num_train == fresh.num_train == 12
  for shard in range(3):  # same seed, same bytes
    name = records.shard_path("", "train", shard, 3)
    assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_folders_split_is_stratified_and_seeded(tmp_path):
  images = data_utils.write_image_folders(str(tmp_path / "images"), num_classes=3, per_class=10)
  results = [records.build(images, str(tmp_path / f"out{i}"), validation_fraction=0.2,
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
    records.build(str(tmp_path / "nothing"), str(tmp_path / "out"), layout)
  os.makedirs(tmp_path / "empty" / "train")
  with pytest.raises(UserError, match="has no"):
    records.build(str(tmp_path / "empty"), str(tmp_path / "out"), layout)




def test_box_files_follow_process_bounding_boxes(tmp_path):
  xml = tmp_path / "n01440764_7.xml"  # pixel values truncated (20.9 -> 20), an inverted box swapped
  xml.write_text("<annotation><size><width>40</width><height>30</height></size>"
                 "<object><bndbox><xmin>20.9</xmin><ymin>3</ymin><xmax>4.2</xmax><ymax>45</ymax>"
                 "</bndbox></object><object><bndbox><xmin>50</xmin><ymin>0</ymin><xmax>60</xmax>"
                 "<ymax>30</ymax></bndbox></object></annotation>")  # the second: outside, dropped
  np.testing.assert_allclose(records.read_bbox_xml(str(xml)), [(0.1, 0.1, 0.5, 1.0)])
  csv = tmp_path / "boxes.csv"
  csv.write_text("a.JPEG,0.5,0.9,0.1,0.2\n\nb.JPEG,-0.2,0.0,1.5,0.5\nc.JPEG,0.3,0.3,0.3,0.9\n")
  boxes = records.read_bbox_csv(str(csv))
  assert sorted(boxes) == ["a", "b"]  # c has no width
  np.testing.assert_allclose(boxes["a"], [(0.1, 0.2, 0.5, 0.9)])  # swapped, kept
  np.testing.assert_allclose(boxes["b"], [(0.0, 0.0, 1.0, 0.5)])  # clipped
  csv.write_text("a.JPEG,0.5,0.9\n")
  with pytest.raises(UserError, match=r"boxes.csv line 1: expected 'file.JPEG,xmin,ymin,xmax,ymax'"):
    records.read_bbox_csv(str(csv))


def test_manifest_lists_inputs_shards_and_counts(tmp_path):
  result = data_utils.build_records(str(tmp_path), num_classes=2, per_class=6,
                                    validation_fraction=0.5, train_shards=2, validation_shards=1)
  manifest = records.read_manifest(str(tmp_path / "records"))
  assert manifest["complete"] and manifest["format"] == 1
  inputs = manifest["inputs"]
  assert (inputs["layout"], inputs["validation_fraction"], inputs["seed"], inputs["train_shards"],
          inputs["validation_shards"], inputs["num_files"]) == ("folders", 0.5, 0, 2, 1, 12)
  assert inputs["input_dir"] == str(tmp_path / "images") and len(inputs["content_hash"]) == 64
  assert [(c["label"], c["name"]) for c in manifest["classes"]] == [(1, "class0"), (2, "class1")]
  train = manifest["splits"]["train"]
  assert [s["file"] for s in train["shards"]] == ["train-00000-of-00002", "train-00001-of-00002"]
  assert [s["records"] for s in train["shards"]] == [3, 3] and train["num_records"] == 6
  assert manifest["splits"]["validation"]["num_records"] == 6 == result.num_validation
  assert train["skipped"] == [] and result.skipped == []
  assert records.count_examples(result.train_pattern) == (6, "manifest")
  assert records.count_examples(str(tmp_path / "records" / "*-of-*")) == (12, "manifest")


def test_count_examples_counts_files_without_manifest(tmp_path):
  path = data_utils.write_records(str(tmp_path / "other-00000"),
                                  [data_utils.example(b"x", 1)] * 3)
  data_utils.write_records(str(tmp_path / "other-00001"), [data_utils.example(b"y", 2)] * 2)
  assert records.count_examples(str(tmp_path / "other-*")) == (5, "counted")
  (tmp_path / "manifest.json").write_text("{not json")  # damaged: counted, with a warning
  assert records.count_examples(path) == (3, "counted")
  with pytest.raises(UserError, match="manifest.json is damaged"):
    records.read_manifest(str(tmp_path))
  assert records.read_manifest(str(tmp_path / "nowhere")) is None
  with pytest.raises(UserError, match="no file matches"):
    records.count_examples(str(tmp_path / "nothing-*"))


def test_rerun_resumes_refuses_other_inputs_and_rebuild_replaces_only_our_files(tmp_path):
  images = data_utils.write_image_folders(str(tmp_path / "images"), num_classes=2, per_class=4)
  out = tmp_path / "out"
  first = records.build(images, str(out), validation_fraction=0.25, train_shards=2, seed=3)
  stamps = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)}
  assert records.build(images, str(out), validation_fraction=0.25, train_shards=2, seed=3) == first
  assert all(os.stat(out / n).st_mtime_ns == t for n, t in stamps.items() if n.startswith("train"))
  (out / "notes.txt").write_text("mine")
  (out / "train-00000-of-00002.bak").write_text("mine too")
  for changes, expected in (
      (dict(seed=4), "seed 3 then, 4 now"),
      (dict(train_shards=3), "train_shards 2 then, 3 now"),
      (dict(validation_fraction=0.5), "validation_fraction 0.25 then, 0.5 now")):
    arguments = {**dict(validation_fraction=0.25, train_shards=2, seed=3), **changes}
    with pytest.raises(records.OutputMismatch, match=expected) as error:
      records.build(images, str(out), **arguments)
    assert str(error.value).startswith(f"output_dir={out}: holds records of other inputs")
    assert error.value.param == "output_dir" and "\n" not in str(error.value)
  cv2.imwrite(os.path.join(images, "class0", "new.jpg"), np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(records.OutputMismatch, match=r"the input files changed \(8 files then, 9 now"):
    records.build(images, str(out), validation_fraction=0.25, train_shards=2, seed=3)
  rebuilt = records.build(images, str(out), validation_fraction=0.25, train_shards=3, seed=3,
                          rebuild=True)
  assert (rebuilt.num_train, rebuilt.num_validation) == (7, 2)
  assert sorted(os.listdir(out)) == [
      "labels.txt", "manifest.json", "notes.txt", "train-00000-of-00002.bak", "train-00000-of-00003",
      "train-00001-of-00003", "train-00002-of-00003", "validation-00000-of-00001"]


def test_shards_without_or_with_a_damaged_manifest_need_rebuild(tmp_path):
  images = data_utils.write_image_folders(str(tmp_path / "images"), num_classes=2, per_class=2)
  out = tmp_path / "out"
  records.build(images, str(out), validation_fraction=0.0)
  os.remove(out / "manifest.json")  # as an older version or another tool leaves the folder
  with pytest.raises(records.OutputMismatch, match=r"holds 1 file\(s\) named like TFRecord shards \(e.g. train-00000-of-00001\) but no manifest.json"):
    records.build(images, str(out), validation_fraction=0.0)
  # Without a manifest of this builder the shards may be another tool's (build_imagenet_data.py
  # names them alike): rebuild refuses and removes nothing.
  before = {name: (out / name).read_bytes() for name in os.listdir(out)}
  with pytest.raises(UserError, match="labels.txt, train-00000-of-00001 are named like this builder's files, "
                     r"but no manifest.json of a build is there .*\(nothing was removed\)"):
    records.build(images, str(out), validation_fraction=0.0, rebuild=True)
  assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
  (out / "manifest.json").write_text('{"format": 1, "inputs": {}, "splits": {"train": 3}}')
  with pytest.raises(records.OutputMismatch, match="manifest.json is damaged: split 'train'"):
    records.build(images, str(out), validation_fraction=0.0)
  assert records.build(images, str(out), validation_fraction=0.0, rebuild=True).num_train == 4
  assert records.read_manifest(str(out))["complete"]


def test_bad_parameters_are_one_line_user_errors_naming_them(tmp_path):
  images = data_utils.write_image_folders(str(tmp_path / "images"), num_classes=1, per_class=1)
  (tmp_path / "file").write_text("")
  for arguments, message in (
      (dict(num_workers=0), "num_workers=0: expected at least 1"),
      (dict(seed=-1), "seed=-1: expected an integer >= 0"),
      (dict(validation_fraction=1.0), "validation_fraction=1.0: expected a fraction in [0, 1)"),
      (dict(validation_fraction=-0.1), "validation_fraction=-0.1: expected a fraction in [0, 1)"),
      (dict(output_dir=str(tmp_path / "file")), f"output_dir={tmp_path / 'file'}: is an existing file"),
      (dict(train_shards=0), "train_shards=0: expected at least 1"),
      (dict(max_short_side=-1), "max_short_side=-1: expected 0"),
      (dict(layout="coco"), "layout=coco: expected one of imagenet, folders")):
    arguments = {"input_dir": images, "output_dir": str(tmp_path / "out"), **arguments}
    with pytest.raises(UserError) as error:
      records.build(**arguments)
    assert str(error.value).startswith(message) and error.value.param == message.split("=")[0]
  assert not os.path.exists(tmp_path / "out")


def test_empty_undecodable_and_non_utf8_files_are_skipped_and_listed(tmp_path, capsys):
  folder = tmp_path / "in" / "things"
  os.makedirs(folder)
  cv2.imwrite(str(folder / "good.jpg"), np.full((8, 8, 3), 100, np.uint8))
  (folder / "empty.jpg").write_bytes(b"")
  (folder / "text.gif").write_bytes(b"GIF89a is not enough")
  with open(os.path.join(os.fsencode(folder), b"bad\xff.jpg"), "wb") as f:
    f.write(data_utils.jpeg_bytes())
  build_tfrecords.define_flags()
  with flagsaver.flagsaver():
    flags.FLAGS(["build_tfrecords", f"--input_dir={tmp_path / 'in'}",
                 f"--output_dir={tmp_path / 'out'}", "--validation_fraction=0"])
    assert build_tfrecords.main(["build_tfrecords"]) == 1  # exit status 1: images were skipped
  printed = capsys.readouterr().out
  assert "1 training records" in printed and "skipped images: 3" in printed
  assert f"skipped {folder}/bad\\xff.jpg: file name is not valid UTF-8" in printed
  assert f"skipped {folder}/empty.jpg: empty file (0 bytes)" in printed
  assert f"skipped {folder}/text.gif: OpenCV cannot decode it" in printed
  manifest = records.read_manifest(str(tmp_path / "out"))
  assert len(manifest["splits"]["train"]["skipped"]) == 3
  again = records.build(str(tmp_path / "in"), str(tmp_path / "out"), validation_fraction=0.0)
  assert len(again.skipped) == 3  # kept shards keep their skipped list


def test_max_short_side_shrinks_large_images_only(tmp_path):
  folder = tmp_path / "in" / "things"
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  cv2.imwrite(str(folder / "large.jpg"), rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
  cv2.imwrite(str(folder / "small.jpg"), rng.integers(0, 255, (16, 12, 3), dtype=np.uint8))
  result = records.build(str(tmp_path / "in"), str(tmp_path / "out"), validation_fraction=0.0,
                         max_short_side=20)
  examples = {_values(e, "image/filename")[0]: e for e in data_utils.read_examples(result.train_pattern)}
  large, small = examples[b"large.jpg"], examples[b"small.jpg"]
  assert (_values(large, "image/height"), _values(large, "image/width")) == ([20], [30])
  assert tf.io.extract_jpeg_shape(_values(large, "image/encoded")[0]).numpy().tolist() == [20, 30, 3]
  assert _values(small, "image/encoded")[0] == (folder / "small.jpg").read_bytes()  # kept as is
  assert records.read_manifest(str(tmp_path / "out"))["inputs"]["max_short_side"] == 20


def _run_program(*args, max_file_bytes=None):
  """Runs `python -m <args>` from the repository's root; with `max_file_bytes`, files it writes
  cannot grow beyond that (RLIMIT_FSIZE, as on a full disk: writes fail with EFBIG)."""
  def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE,
                       (max_file_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                        preexec_fn=limit_file_size if max_file_bytes else None)


def test_program_reports_a_full_disk_on_one_line_and_leaves_no_temporary_file(tmp_path):
  images = data_utils.write_image_folders(str(tmp_path / "images"), num_classes=2, per_class=8)
  out = tmp_path / "out"
  run = _run_program("scripts.build_tfrecords", f"--input_dir={images}", f"--output_dir={out}",
                     "--validation_fraction=0", max_file_bytes=8192)  # a shard needs about 30 KB
  assert run.returncode == 2, run.stderr
  assert "Traceback" not in run.stderr
  errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, run.stderr
  assert errors[0].startswith(f"error: --output_dir={out}: cannot write the records: "), errors
  assert "File too large" in errors[0]
  assert sorted(os.listdir(out)) == ["labels.txt", "manifest.json"]  # no shard, no .tmp- file


def test_programs_name_their_flags_in_user_errors(tmp_path):
  build_tfrecords.define_flags()
  make_demo_data.define_flags()
  empty = tmp_path / "empty"
  os.makedirs(empty)
  for program, argv, expected in (
      (build_tfrecords, [f"--input_dir={empty}", f"--output_dir={tmp_path}/o"],
       f"--input_dir={empty}: has no class sub-folder"),
      (build_tfrecords, [f"--input_dir={empty}", f"--output_dir={tmp_path}/o", "--num_workers=0"],
       "--num_workers=0: expected at least 1"),
      (make_demo_data, [], "--output_dir=: missing")):
    with flagsaver.flagsaver():
      flags.FLAGS(["program", *argv])
      with pytest.raises(UserError) as error:
        program.main(["program"])
    assert cli.flag_message(error.value).startswith(expected)


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
  assert records.count_examples(data.train_pattern) == (1438, "manifest")
  for damage in ("{not json", json.dumps({"num_train": "many"})):
    (tmp_path / "demo" / "demo_data.json").write_text(damage)  # rebuilt; the shards are kept
    assert demo_data.make_demo_data(str(tmp_path / "demo")) == data
    assert os.path.getmtime(tmp_path / "demo" / "train-00000-of-00004") == stamp
  os.remove(tmp_path / "demo" / "demo_data.json")
  os.remove(tmp_path / "demo" / "manifest.json")  # shards no build of ours vouches for: kept
  with pytest.raises(UserError, match=r"no manifest.json of a build is there .*\(nothing was "
                     r"removed\)"):
    demo_data.make_demo_data(str(tmp_path / "demo"))
  assert os.path.getmtime(tmp_path / "demo" / "train-00000-of-00004") == stamp
  with pytest.raises(UserError, match="^output_dir=: missing"):
    demo_data.make_demo_data("")
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match=f"^output_dir={tmp_path / 'file'}: "):
    demo_data.make_demo_data(str(tmp_path / "file"))
