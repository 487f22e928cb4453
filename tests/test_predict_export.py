"""Using a trained model: scripts/predict.py and scripts/export.py (SavedModel, TFLite).

One small model_dir is trained once for the module (`tiny_SqNxt`, 40x40 inputs, 6 colour classes,
a few steps: the weights need not be good, only fixed). For the same image files, predict.py
(library and CLI), the SavedModel's two signatures, the TFLite interpreter and Estimator.predict
must agree.
"""

import json
import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import dataloader
import train
from scripts import export
from scripts import predict
from tools.cli import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 40
# BGR colours of the classes; 6 > 5 classes, so that top_5 is a real choice.
COLOURS = [(40, 40, 200), (40, 200, 40), (200, 40, 40), (40, 200, 200), (200, 40, 200),
           (200, 200, 40)]
NUM_CLASSES = len(COLOURS)
TOLERANCE = 1e-4  # probabilities, float32 models (the acceptance)


def _colour_image(rng, colour, height, width):
  return np.clip(rng.normal(colour, 30, size=(height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  """A trained model_dir (with params.json and a label map) and image files to classify."""
  root = tmp_path_factory.mktemp("predict_export")
  rng = np.random.default_rng(0)
  label_map = str(root / "labels.txt")
  dataloader.write_label_map(label_map, [dataloader.LabelEntry(i + 1, f"class{i}", f"colour {i}")
                                         for i in range(NUM_CLASSES)])
  params = train.resolve_params(
      dict(configuration="tiny_SqNxt", image_size=IMAGE_SIZE, num_classes=NUM_CLASSES,
           batch_size=12, max_steps=6, steps_per_loop=3, save_checkpoints_steps=6,
           save_summary_steps=3, log_every_n_steps=3, output_train_images=False, bn_momentum=0.9,
           base_learning_rate=0.01, warmup_start_learning_rate=0.01, warmup_steps=0, seed=0),
      dict(label_map=label_map))
  model_dir = str(root / "model")
  keras.utils.set_random_seed(0)  # the same weights every run
  labels = np.arange(48) % NUM_CLASSES
  train_images = np.stack([_colour_image(rng, COLOURS[c], IMAGE_SIZE, IMAGE_SIZE)[..., ::-1]
                           for c in labels]).astype(np.float32) - np.float32(params["mean_rgb"])
  dataset = tf.data.Dataset.from_tensor_slices(({"image": train_images},
                                                {"class_idx": labels.astype(np.int32)}))
  est = train.build_estimator(params, model_dir)
  est.train(lambda ctx: dataset.repeat().batch(params["batch_size"]), params["max_steps"])
  train.write_params(params, model_dir)

  images = root / "images"
  images.mkdir()
  good = []
  for i, (height, width) in enumerate([(50, 70), (64, 48), (45, 45), (90, 60)]):
    path = str(images / f"{i}_class{i}.jpg")
    cv2.imwrite(path, _colour_image(rng, COLOURS[i], height, width))
    good.append(path)
  png = str(images / "4_class5.png")  # PNG takes the decode_image path of the preprocessing
  cv2.imwrite(png, _colour_image(rng, COLOURS[5], 56, 48))
  good.append(png)
  broken = str(images / "broken.jpg")
  with open(broken, "wb") as f:
    f.write(b"this is not an image" * 10)
  truncated = str(images / "truncated.jpg")
  with open(good[0], "rb") as f:
    data = f.read()
  with open(truncated, "wb") as f:
    f.write(data[:len(data) // 2])
  missing = str(root / "missing.jpg")
  return dict(model_dir=model_dir, params=params, label_map=label_map, good=good, broken=broken,
              truncated=truncated, missing=missing, root=root)


@pytest.fixture(scope="module")
def trained(workspace, cli_runs):
  del cli_runs  # started first, to run meanwhile
  return predict.load_trained_model(workspace["model_dir"])


@pytest.fixture(scope="module")
def reference(workspace):
  """Estimator.predict on the good images, preprocessed by dataloader.preprocess_image directly.

  Returns (images float32 [N, S, S, 3], list of prediction dicts).
  """
  params = workspace["params"]
  images = np.stack([dataloader.preprocess_image(tf.io.read_file(p), False, params).numpy()
                     for p in workspace["good"]])
  est = train.build_estimator(params, workspace["model_dir"])  # a fresh restore of the checkpoint
  input_fn = lambda ctx: tf.data.Dataset.from_tensor_slices({"image": images}).batch(2)
  return images, list(est.predict(input_fn))


def _start(script, *args):
  """Starts `python scripts/<script> args...` (text pipes); the caller waits with communicate()."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", script), *args], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def cli_runs(workspace):
  """export.py and predict.py, each run once, started together as soon as the model is trained
  (their start-up is mostly single-threaded imports: they overlap well with each other and the
  tests).

  export.py writes a SavedModel and float and dynamic-range TFLite files; predict.py classifies the
  image folder (with its two bad files) and a missing file, as JSON lines.
  """
  export_dir = str(workspace["root"] / "export")
  runs = {
      "export": _start("export.py", f"--model_dir={workspace['model_dir']}",
                       f"--export_dir={export_dir}", "--tflite", "--quantize"),
      "predict": _start("predict.py", f"--model_dir={workspace['model_dir']}", "--json",
                        "--batch_size=3", os.path.dirname(workspace["good"][0]),
                        workspace["missing"]),
  }
  yield dict(runs, export_dir=export_dir)
  for process in runs.values():
    if process.poll() is None:
      process.kill()
      process.communicate()


def _finish(process):
  """(exit status, stdout, stderr) of a started script, waiting at most 5 minutes."""
  stdout, stderr = process.communicate(timeout=300)
  return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def exported(cli_runs):
  """The export folder written by export.py."""
  status, _, stderr = _finish(cli_runs["export"])
  assert status == 0, stderr[-3000:]
  return cli_runs["export_dir"]


def _assert_same(predictions, reference_predictions):
  """Same top-1 and probabilities within TOLERANCE, image by image."""
  assert len(predictions) == len(reference_predictions)
  for got, want in zip(predictions, reference_predictions):
    assert int(got["top_1"]) == int(want["top_1"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=TOLERANCE)


def _rows(outputs):
  """dict of batched numpy arrays -> list of per-image dicts."""
  outputs = {k: np.asarray(v) for k, v in outputs.items()}
  return [{k: v[i] for k, v in outputs.items()} for i in range(len(outputs["top_1"]))]


def test_predict_library_matches_estimator_predict(workspace, trained, reference):
  _, want = reference
  results = list(predict.predict_files(trained, workspace["good"], batch_size=2))
  assert [r.path for r in results] == workspace["good"] and all(r.error is None for r in results)
  _assert_same([r.predictions for r in results], want)
  # The reference is not trivial: the images get different top-1 classes.
  assert len({int(p["top_1"]) for p in want}) > 1, [p["probabilities"] for p in want]
  # Most are far from one-hot, so that a tolerance of 1e-4 tells models apart.
  assert sum(p["probabilities"].max() < 0.99 for p in want) >= 3
  assert trained.label_map_path == workspace["label_map"]  # found through params.json


def test_saved_model_signatures_match_estimator_predict(workspace, reference, exported):
  images, want = reference
  loaded = tf.saved_model.load(exported)
  assert set(loaded.signatures) == {"serving_default", "serving_preprocessed"}
  image_bytes = tf.stack([tf.io.read_file(p) for p in workspace["good"]])  # string [N]
  from_bytes = loaded.signatures["serving_default"](image_bytes=image_bytes)
  _assert_same(_rows(from_bytes), want)
  from_images = loaded.signatures["serving_preprocessed"](images=tf.constant(images))
  _assert_same(_rows(from_images), want)
  names = [e.name for e in dataloader.read_label_map(workspace["label_map"])]
  assert [n.decode() for n in from_bytes["top_1_name"].numpy()] == [names[p["top_1"]] for p in want]
  np.testing.assert_array_equal(from_bytes["top_5"].numpy(), np.stack([p["top_5"] for p in want]))
  assert os.path.exists(os.path.join(exported, "assets.extra", "params.json"))


def test_tflite_matches_estimator_predict(reference, exported):
  images, want = reference
  interpreter = tf.lite.Interpreter(model_path=os.path.join(exported, export.TFLITE_FILENAME))
  runner = interpreter.get_signature_runner(export.SERVING_PREPROCESSED)
  _assert_same(_rows(runner(images=images)), want)

  quantized_path = os.path.join(exported, export.TFLITE_QUANTIZED_FILENAME)
  assert os.path.getsize(quantized_path) < os.path.getsize(os.path.join(exported,
                                                                        export.TFLITE_FILENAME))
  quantized = tf.lite.Interpreter(model_path=quantized_path).get_signature_runner(
      export.SERVING_PREPROCESSED)(images=images)
  assert quantized["probabilities"].shape == (len(images), NUM_CLASSES)
  np.testing.assert_allclose(quantized["probabilities"].sum(axis=1), 1.0, atol=1e-4)


def test_predict_cli_json_and_per_image_errors(workspace, reference, cli_runs):
  """A folder plus a missing file: bad images get an error line, the others are classified."""
  _, want = reference
  status, stdout, stderr = _finish(cli_runs["predict"])
  assert status == 1, stderr[-3000:]  # some images failed
  assert "3 of 8 images could not be classified" in stderr  # broken, truncated, missing
  lines = [json.loads(line) for line in stdout.splitlines()]
  by_image = {line["image"]: line for line in lines}
  expected_order = sorted(workspace["good"] + [workspace["broken"], workspace["truncated"]])
  assert [line["image"] for line in lines] == expected_order + [workspace["missing"]]
  assert by_image[workspace["missing"]]["error"] == "no such file"
  assert "cannot decode image" in by_image[workspace["broken"]]["error"]
  assert "cannot decode image" in by_image[workspace["truncated"]]["error"]
  for path, reference_prediction in zip(workspace["good"], want):
    top_5 = by_image[path]["top_5"]
    assert [c["class_idx"] for c in top_5] == list(reference_prediction["top_5"])
    np.testing.assert_allclose([c["probability"] for c in top_5],
                               reference_prediction["probabilities"][reference_prediction["top_5"]],
                               atol=TOLERANCE)
    assert top_5[0]["name"] == f"class{top_5[0]['class_idx']}"
    assert top_5[0]["text"] == f"colour {top_5[0]['class_idx']}"


def test_errors_do_not_stop_the_others(workspace, trained):
  good = workspace["good"]
  paths = [good[0], workspace["missing"], workspace["broken"], good[1], workspace["truncated"]]
  results = list(predict.predict_files(trained, paths, batch_size=2))
  assert [r.path for r in results] == paths
  assert [r.error is None for r in results] == [True, False, False, True, False]
  assert results[1].error == "no such file"
  assert results[2].error.startswith("cannot decode image: ")
  assert "{{" not in results[2].error and "[Op:" not in results[2].error  # TF's annotations removed
  text = predict.format_text(results[2], trained.label_map)
  assert text.startswith(f"{workspace['broken']}: error: cannot decode image")
  assert "class" in predict.format_text(results[0], trained.label_map)


def test_the_crop_is_central(trained):
  """An image bright in the centre and dark in the corners (not square, so rows and columns differ)
  must come out as Caffe's evaluation crop: resize to R = round(S * 256 / 227) square, crop S x S at
  offset (R - S) // 2 (DESIGN.md 3). A corner crop, the seed's bug, differs from it by far more."""
  height, width = 90, 120
  y, x = np.mgrid[0:height, 0:width]
  radius = np.hypot((y - (height - 1) / 2) / height, (x - (width - 1) / 2) / width)
  value = np.clip(255 * (1 - radius / 0.71), 0, 255)
  rgb = np.stack([value, 255 - value, value / 2], axis=-1).astype(np.uint8)
  _, png = cv2.imencode(".png", rgb[..., ::-1])  # lossless: only the geometry is tested
  params = trained.params
  got = predict.preprocess_fn(params)(tf.constant(png.tobytes())).numpy() + params["mean_rgb"]

  size = IMAGE_SIZE
  resize = round(size * 256 / 227)  # 45
  resized = cv2.resize(rgb.astype(np.float32), (resize, resize), interpolation=cv2.INTER_LINEAR)
  offset = (resize - size) // 2
  central = resized[offset:offset + size, offset:offset + size]
  corner = resized[:size, :size]
  assert np.abs(got - central).max() < 2.0
  assert np.abs(got - corner).max() > 15.0
  assert got[size // 2, size // 2, 0] > 240 and got[0, 0, 0] < 60  # bright centre, dark corner


def test_restores_the_network_of_a_float16_run(workspace, tmp_path):
  """A float16 run checkpoints a loss-scale optimizer; inference restores only the network, in
  float32, and still matches the checkpoint's weights."""
  params = dict(workspace["params"], dtype="float16", max_steps=1)
  model_dir = str(tmp_path / "float16")
  images = np.zeros([4, IMAGE_SIZE, IMAGE_SIZE, 3], np.float32)
  dataset = tf.data.Dataset.from_tensors(({"image": images}, {"class_idx": np.arange(4) % 2}))
  train.build_estimator(params, model_dir).train(lambda ctx: dataset.repeat(), 1)
  train.write_params(params, model_dir)
  trained = predict.load_trained_model(model_dir)
  assert trained.global_step == 1 and trained.network.compute_dtype == "float32"
  checkpoint = tf.train.load_checkpoint(trained.checkpoint_path)
  kernel = trained.network.get_layer("classifier").kernel
  np.testing.assert_array_equal(kernel.numpy(), checkpoint.get_tensor(
      "network/classifier.Skernel/.ATTRIBUTES/VARIABLE_VALUE"))
  result, = predict.predict_files(trained, workspace["good"][:1])
  assert result.error is None and np.isfinite(result.predictions["probabilities"]).all()


def test_user_errors(workspace, tmp_path):
  with pytest.raises(UserError, match="params.json"):
    predict.load_trained_model(str(tmp_path))
  train.write_params(workspace["params"], str(tmp_path))
  with pytest.raises(UserError, match="no checkpoint"):
    predict.load_trained_model(str(tmp_path))
  short_map = str(tmp_path / "short.txt")
  dataloader.write_label_map(short_map, [dataloader.LabelEntry(1, "a", "a"),
                                         dataloader.LabelEntry(2, "b", "b")])
  with pytest.raises(UserError, match="has 2 classes"):
    predict.load_trained_model(workspace["model_dir"], short_map)
  other_params = dict(workspace["params"], num_classes=NUM_CLASSES + 1)
  with pytest.raises(UserError, match="does not fit"):
    predict.restore_scaffold(other_params, tf.train.latest_checkpoint(workspace["model_dir"]))
  with pytest.raises(UserError, match="holds no image"):
    predict.list_images([str(tmp_path)])
  with pytest.raises(UserError, match="already exists"):
    export.export_saved_model(predict.load_trained_model(workspace["model_dir"]), str(tmp_path))
