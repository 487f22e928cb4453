"""dataloader.py on TFRecords made by the tests with scripts/build_tfrecords.py."""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

import data_utils
import dataloader
from tools.datasets import records as build_tfrecords
from tools.common import UserError

SIZE = 24  # output side: tiny, fast


def _params(**overrides):
  return {"image_size": SIZE, "batch_size": 4, "num_classes": 3, "seed": 1, **overrides}


def _split(params):
  """(InputParams, image_size, batch_size, num_classes) of a test's flat params dict."""
  p = dict(params)
  size, batch, classes = p.pop("image_size"), p.pop("batch_size"), p.pop("num_classes", None)
  return dataloader.InputParams(**p), size, batch, classes


def input_fn(file_pattern, training, params, input_context=None, skipped=None):
  input_params, size, batch, classes = _split(params)
  return dataloader.input_fn(file_pattern, training, input_params, size, batch, classes,
                             input_context, skipped)


def preprocess(encoded, training, params, bboxes=None, seed=None):
  input_params, size, _, _ = _split(params)
  return dataloader.preprocess_image(encoded, training, input_params, size, bboxes, seed)


def _labels(file_pattern):
  return [e.features.feature["image/class/label"].int64_list.value[0]
          for e in data_utils.read_examples(file_pattern)]


def _eval_class_idx(file_pattern, params, input_context=None, skipped=None):
  dataset = input_fn(file_pattern, False, params, input_context, skipped)
  return [int(c) for _, labels in dataset for c in labels["class_idx"].numpy()]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """3 classes x 8 images of 32x32, 2 training shards and 1 validation shard."""
  return data_utils.build_records(str(tmp_path_factory.mktemp("records")), per_class=8)


@pytest.fixture(scope="module")
def one_per_class(tmp_path_factory):
  """1,001 records in 3 shards, record k of the stored order has its own label (1,001 classes)."""
  folder = tmp_path_factory.mktemp("many")
  for k in range(1001):
    os.makedirs(folder / "images" / f"c{k:04d}")
    cv2.imwrite(str(folder / "images" / f"c{k:04d}" / "a.jpg"), np.full((8, 8, 3), k % 256, np.uint8))
  return build_tfrecords.build(str(folder / "images"), str(folder / "records"), "folders",
                               validation_fraction=0.0, train_shards=3)


@pytest.mark.parametrize("preprocessing", dataloader.PREPROCESSINGS)
@pytest.mark.parametrize("training", [True, False])
def test_batches_have_the_contract_shapes_dtypes_and_ranges(records, preprocessing, training):
  params = _params(preprocessing=preprocessing)
  pattern = records.train_pattern if training else records.validation_pattern
  batches = list(input_fn(pattern, training, params).take(3))
  for features, labels in batches:
    assert features["image"].shape[1:] == (SIZE, SIZE, 3) and features["image"].dtype == tf.float32
    assert labels["class_idx"].dtype == tf.int32
    mean, std = dataloader.normalization(_split(params)[0])
    pixels = features["image"].numpy() * np.float32(std) + np.float32(mean)
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3 and pixels.std() > 5
  class_idx = np.concatenate([labels["class_idx"].numpy() for _, labels in batches])
  assert class_idx.min() >= 0 and class_idx.max() <= 2  # 0-based: labels 1..3 - 1
  if not training:  # the last partial batch kept: 6 validation records = 4 + 2
    assert [int(labels["class_idx"].shape[0]) for _, labels in batches] == [4, 2]
    assert class_idx.tolist() == [label - 1 for label in _labels(records.validation_pattern)]


# The tests of the 1,001 records run on one xdist worker, which writes them once.
@pytest.mark.xdist_group("one_per_class")
def test_evaluation_yields_every_record_once_in_stored_order(one_per_class):
  params = _params(batch_size=64, num_classes=1001)
  class_idx = _eval_class_idx(one_per_class.train_pattern, params)
  assert len(class_idx) == 1001
  assert class_idx == [label - 1 for label in _labels(one_per_class.train_pattern)]


@pytest.mark.xdist_group("one_per_class")
@pytest.mark.parametrize("train_shards", [3, 2])  # shard files; fewer files than pipelines: records
def test_three_input_pipelines_cover_every_record_exactly_once(one_per_class, tmp_path, train_shards):
  pattern = one_per_class.train_pattern
  if train_shards == 2:
    files = sorted(tf.io.gfile.glob(pattern))
    records = [r.numpy() for f in files for r in tf.data.TFRecordDataset(f)]
    pattern = [data_utils.write_records(str(tmp_path / f"part{i}"), records[i::2]) for i in range(2)]
  params = _params(batch_size=6, num_classes=1001)
  seen = []
  for pipeline in range(3):
    context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=pipeline,
                                         num_replicas_in_sync=3)
    part = _eval_class_idx(pattern, params, context)
    assert 300 < len(part) < 370
    seen += part
  assert sorted(seen) == list(range(1001))


def test_the_decoding_map_runs_more_elements_than_cores():
  """In-order map: 4 elements in flight per core this process may use, at least 16, unless set."""
  cores = len(os.sched_getaffinity(0))
  assert dataloader.map_parallelism(dataloader.InputParams()) == max(16, 4 * cores)
  for value in (1, 3, dataloader.AUTOTUNE):
    assert dataloader.map_parallelism(dataloader.InputParams(num_parallel_calls=value)) == value
  # On tf.data service workers, whose cores the trainer cannot count, tf.data tunes it there.
  assert dataloader.map_parallelism(dataloader.InputParams(), remote=True) == dataloader.AUTOTUNE


def test_training_repeats_with_full_per_replica_batches(records):
  context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                       num_replicas_in_sync=2)
  dataset = input_fn(records.train_pattern, True, _params(batch_size=8), context)
  shapes = [features["image"].shape[0] for features, _ in dataset.take(20)]  # 20 x 4 > 18 records
  assert shapes == [4] * 20
  with pytest.raises(UserError, match="batch_size=7"):
    input_fn(records.train_pattern, True, _params(batch_size=7), context)


@pytest.mark.parametrize("preprocessing", dataloader.PREPROCESSINGS)
@pytest.mark.parametrize("training", [True, False])
def test_preprocessing_is_the_same_eagerly_and_in_dataset_map(preprocessing, training):
  params = _params(preprocessing=preprocessing)
  encoded = tf.constant(data_utils.jpeg_bytes(48, 64))
  boxes = tf.constant([[0.1, 0.2, 0.9, 0.6]])
  seed = tf.constant([3, 4])
  eager = preprocess(encoded, training, params, boxes, seed)
  mapped = next(iter(tf.data.Dataset.from_tensors(encoded).map(
      lambda e: preprocess(e, training, params, boxes, seed))))
  assert eager.shape == (SIZE, SIZE, 3) and eager.dtype == tf.float32
  np.testing.assert_allclose(eager.numpy(), mapped.numpy(), atol=1e-4)


def test_random_crops_vary_and_flip_follows_its_parameter():
  image = np.zeros((40, 40, 3), np.uint8)
  image[:, :20] = 255  # left half white
  encoded = tf.constant(cv2.imencode(".png", image)[1].tobytes())  # PNG: decoded without loss
  for flip in (True, False):
    params = _params(preprocessing="caffe", random_flip=flip, mean_rgb=[0.0, 0.0, 0.0])
    outputs = [preprocess(encoded, True, params, seed=tf.constant([s, 0])).numpy()
               for s in range(12)]
    left_white = [o[:, 0].mean() > 128 for o in outputs]
    assert all(left_white) != flip  # some flipped iff flip is on
  evaluation = [preprocess(encoded, False, params).numpy() for _ in range(2)]
  np.testing.assert_array_equal(*evaluation)


def test_png_decodes_like_the_same_jpeg_pixels():
  image = np.zeros((30, 40, 3), np.uint8)
  image[:, :, 2] = np.linspace(0, 255, 40, dtype=np.uint8)[np.newaxis]  # red ramp (BGR)
  png = cv2.imencode(".png", image)[1].tobytes()
  jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                      cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])[1].tobytes()
  for preprocessing in ("caffe", "inception"):
    params = _params(preprocessing=preprocessing)
    from_png, from_jpeg = (preprocess(tf.constant(b), False, params).numpy()
                           for b in (png, jpeg))
    np.testing.assert_allclose(from_png, from_jpeg, atol=8)  # JPEG error on the steep ramp
    assert np.abs(from_png - from_jpeg).mean() < 1.0  # same window, same geometry
    assert from_png[..., 0].mean() > from_png[..., 2].mean()  # RGB order: red is channel 0


def test_add_mean_inverts_the_mean_subtraction():
  params = _params(mean_rgb=[10.0, 20.0, 30.0])
  image = preprocess(tf.constant(data_utils.jpeg_bytes(48, 64)), False, params)
  restored = dataloader.add_mean(image[tf.newaxis], _split(params)[0])
  assert restored.dtype == tf.uint8 and restored.shape == (1, SIZE, SIZE, 3)
  np.testing.assert_allclose(restored.numpy()[0], image.numpy() + [10, 20, 30], atol=0.51)


def test_undecodable_record_is_skipped_and_counted(tmp_path):
  good = data_utils.example(data_utils.jpeg_bytes(), label=2)
  bad = data_utils.example(b"\xff\xd8\xff" + b"not a JPEG" * 20, label=1)
  path = data_utils.write_records(str(tmp_path / "r"), [good, bad, good, b"not an Example", good])
  skipped = dataloader.SkippedRecords()
  assert _eval_class_idx(path, _params(), skipped=skipped) == [1, 1, 1]
  assert skipped.count == 2 and skipped.by_file == {path: 2}
  skipped.reset()
  batches = input_fn(path, True, _params(batch_size=3), skipped=skipped).take(4)
  assert [labels["class_idx"].numpy().tolist() for _, labels in batches] == [[1, 1, 1]] * 4
  assert skipped.count >= 6  # two per epoch, at least 4 epochs read


def _iteration_error(path, training=False, **params):
  with pytest.raises(UserError) as error:
    with dataloader.user_errors_from_data():
      for _ in input_fn(path, training, _params(**params)).take(50):
        pass
  message = str(error.value)
  assert "\n" not in message
  return message


def test_bad_records_are_one_line_errors_naming_file_and_label(tmp_path):
  jpeg = data_utils.jpeg_bytes()
  path = data_utils.write_records(str(tmp_path / "labels"), [data_utils.example(jpeg, 1),
                                                              data_utils.example(jpeg, 4)])
  for training in (False, True):
    message = _iteration_error(path, training)
    assert "label 4 is outside 1..3" in message and path in message
  path = data_utils.write_records(str(tmp_path / "zero"), [data_utils.example(jpeg, 0)])
  assert "label 0 is outside 1..3" in _iteration_error(path)
  path = data_utils.write_records(str(tmp_path / "noimage"), [data_utils.example(None, 1)])
  message = _iteration_error(path)
  assert "no image/encoded" in message and path in message


def test_damaged_tfrecord_file_is_reported_by_name(records, tmp_path):
  data = open(sorted(tf.io.gfile.glob(records.train_pattern))[0], "rb").read()
  damaged = tmp_path / "train-damaged"
  damaged.write_bytes(data[:len(data) // 2] + b"\x00" * 64 + data[len(data) // 2 + 64:])
  for training in (False, True):
    message = _iteration_error(str(damaged), training, batch_size=1)
    assert f"damaged TFRecord file {damaged}" in message


def test_pattern_without_files_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match=f"no file matches the TFRecord pattern '{tmp_path}/x-\\*'"):
    input_fn(f"{tmp_path}/x-*", True, _params())


def test_label_map_round_trip_and_errors(tmp_path):
  entries = [dataloader.LabelEntry(1, "n01440764", "tench, Tinca tinca"),
             dataloader.LabelEntry(2, "n01443537", "goldfish, Carassius auratus")]
  path = str(tmp_path / "labels.txt")
  dataloader.write_label_map(path, entries)
  assert dataloader.read_label_map(path) == entries
  (tmp_path / "bad.txt").write_text("1\ta\ta\n3\tc\tc\n")
  with pytest.raises(UserError, match="line 2"):
    dataloader.read_label_map(str(tmp_path / "bad.txt"))


def _batches(iterator, count):
  return [(features["image"].numpy(), labels["class_idx"].numpy())
          for features, labels in (next(iterator) for _ in range(count))]


def _assert_same_batches(batches, expected):
  assert len(batches) == len(expected)
  for (images, class_idx), (expected_images, expected_class_idx) in zip(batches, expected):
    np.testing.assert_array_equal(class_idx, expected_class_idx)
    np.testing.assert_array_equal(images, expected_images)


def test_training_iterator_checkpoint_restores_the_same_batches(records, tmp_path):
  params = _params(deterministic_training=True, shuffle_buffer_size=8)
  iterator = iter(input_fn(records.train_pattern, True, params))
  _batches(iterator, 3)
  checkpoint = tf.train.Checkpoint(iterator=iterator)
  path = checkpoint.write(str(tmp_path / "iterator"))
  after_save = _batches(iterator, 3)  # 6 batches of 4 > 18 records: crosses an epoch
  checkpoint.restore(path)
  _assert_same_batches(_batches(iterator, 3), after_save)


def test_deterministic_training_with_a_seed_repeats_the_batches(records):
  params = _params(deterministic_training=True)
  first, second = (_batches(iter(input_fn(records.train_pattern, True, params)), 6)
                   for _ in range(2))
  _assert_same_batches(second, first)
  other_seed = _batches(iter(input_fn(records.train_pattern, True,
                                                 {**params, "seed": 2})), 6)
  assert any(not np.array_equal(a[0], b[0]) for a, b in zip(other_seed, first))


def test_data_that_cannot_feed_training_fails_instead_of_spinning(tmp_path):
  # Not a JPEG either (no libjpeg message on stderr for each of the 1,000 tries: the pipeline's
  # prefetching decodes some more after the run stops, outside pytest's capture).
  undecodable = data_utils.write_records(str(tmp_path / "undecodable"),
                                         [data_utils.example(b"not an image at all", 1)] * 5)
  with pytest.raises(UserError) as error:
    with dataloader.user_errors_from_data():
      for _ in input_fn(undecodable, True, _params(), skipped=dataloader.SkippedRecords()):
        pass
  assert f"records in a row cannot be decoded (in {undecodable})" in str(error.value)
  empty = tmp_path / "empty"
  empty.write_bytes(b"")
  with pytest.raises(UserError, match="every matching file is empty"):
    input_fn(str(empty), True, _params())


def test_pil_bilinear_resize_is_pillows_bit_for_bit():
  """From 1/8x to 2x, both orientations, sizes that do not divide: equal to Pillow's
  Image.resize(BILINEAR), the resize of torchvision's evaluation (osmr's)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  photo = load_sample_images().images[1][40:340, 100:540]  # uint8 [300, 440, 3]
  resize = tf.function(dataloader.pil_bilinear_resize)
  for height, width in [(38, 55), (256, 375), (300, 440), (301, 97), (600, 880), (123, 440)]:
    expected = np.asarray(Image.fromarray(photo).resize((width, height), Image.BILINEAR))
    np.testing.assert_array_equal(resize(tf.constant(photo), [height, width]).numpy(), expected,
                                  err_msg=f"{height}x{width}")


def test_torchvision_evaluation_resizes_the_short_side_and_crops_the_centre():
  # 48x64 (landscape): short side to ceil(24 / 0.875) = 28, long side int(28 * 64 / 48) = 37,
  # the central 24x24 at (round(2.0), round(6.5)) = (2, 6): Python rounds half to even.
  from PIL import Image  # pylint: disable=import-outside-toplevel
  image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
  png = cv2.imencode(".png", image[..., ::-1])[1].tobytes()
  params = dataloader.InputParams(preprocessing="torchvision")
  got = dataloader.preprocess_image_uint8(tf.constant(png), False, params, SIZE).numpy()
  resized = np.asarray(Image.fromarray(image).resize((37, 28), Image.BILINEAR))
  np.testing.assert_array_equal(got, resized[2:26, 6:30])
  mean, std = dataloader.normalization(params)
  np.testing.assert_allclose(mean, [123.675, 116.28, 103.53])
  np.testing.assert_allclose(std, [58.395, 57.12, 57.375])
  normalised = dataloader.preprocess_image(tf.constant(png), False, params, SIZE).numpy()
  np.testing.assert_allclose(normalised, (got / 255.0 - [0.485, 0.456, 0.406])
                             / [0.229, 0.224, 0.225], atol=1e-5)
  restored = dataloader.add_mean(tf.constant(normalised), params).numpy()
  np.testing.assert_array_equal(restored, got)
