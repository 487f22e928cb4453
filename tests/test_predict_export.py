"""Using a trained model: tools/serving/inference.py and its programs scripts/predict.py, scripts/export.py
(SavedModel, TFLite variants run with LiteRT, safe overwrite, versioned exports).

One small model_dir is trained once for the module with the library (`tiny_SqNxt` at 32x32 on
records of 6 colour classes built by tests/data_utils.py, a few steps: the weights need not be good,
only fixed). For the same image files, the library, the programs, the SavedModel's two signatures,
the LiteRT interpreter and Estimator.predict must agree. Each program runs in one real process
(exit status, no traceback): predict once; export once and then its bad command lines, through
tests/cli_cases.py. Everything else runs in-process. The export also evaluates every artefact on the
validation records (the accuracy table, accuracy.json).
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
from ai_edge_litert.interpreter import Interpreter
import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import data_utils
import dataloader
import estimator as estimator_lib
import model
import process_utils
from scripts import export
from scripts import predict
from tools.cli import flags as cli
from tools.recipe import experiment
from tools.serving import inference
from tools.recipe import params as params_lib
from tools.common import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
NUM_CLASSES = 6  # > 5, so that top_5 is a real choice
TOLERANCE = 1e-4  # probabilities, float32 models
ALL_VARIANTS = [None, *inference.QUANTIZATIONS]
ARTEFACTS = ["SavedModel", "TFLite float32", "TFLite float16", "TFLite dynamic_range",
             "TFLite int8"]

# predict's --tflite (a file) and export's --tflite (a switch) share a name: in this process the
# flags are predict's, so the in-process export runs pass no --tflite (the export process does).
predict.define_flags()
export.define_flags()


# The fixture model is trained until it is confident by construction (each class is one colour plus
# noise), so that its verdicts do not hang on the last bits of a CPU's kernels (oneDNN's rounding
# differs between AVX2 and AVX-512/AMX): every artefact must give the same top-1 on every image,
# and a broken one (e.g. int8 with a wrong scale) gives another.
TRAIN_STEPS = 80
PER_CLASS = 16  # 96 images: 72 for training, 24 (4 per class) for validation


def _train(root):
  """Trains tiny_SqNxt on records under root; returns (model_dir, Params, BuildResult)."""
  records = data_utils.build_records(str(root), num_classes=NUM_CLASSES, per_class=PER_CLASS,
                                     size=40)
  user = dict(configuration="tiny_SqNxt", image_size=IMAGE_SIZE, num_classes=NUM_CLASSES,
              batch_size=12, max_steps=TRAIN_STEPS, save_checkpoints_steps=TRAIN_STEPS,
              save_summary_steps=10, log_every_n_steps=10, steps_per_loop=10,
              output_train_images=False, bn_momentum=0.5, base_learning_rate=0.05,
              warmup_start_learning_rate=0.05, warmup_steps=0, seed=0, precise_bn_examples=72,
              eval_every_n_steps=0)
  data = dict(train_file_pattern=records.train_pattern, num_examples_per_epoch=records.num_train,
              label_map=records.label_map)
  params = params_lib.resolve_params(user, data)
  model_dir = str(root / "model")
  keras.utils.set_random_seed(0)  # the same weights every run
  est = experiment.build_estimator(params, model_dir)
  os.makedirs(model_dir)
  params_lib.save_params(params, model_dir, ["test"])
  experiment.run(est, params)
  return model_dir, params, records


def _true_class(path):
  """The 0-based class k of a photo of the workspace, from its name (`<i>_class<k>.<ext>`)."""
  return int(os.path.basename(path).split("_class")[1].split(".")[0])


def _noisy(rng, label, height, width):
  colour = np.float32(data_utils.class_colour(label, NUM_CLASSES))
  return np.clip(colour + rng.normal(scale=20.0, size=(height, width, 3)), 0, 255).astype(np.uint8)


# One worker builds the module fixtures (a trained model, its exports) once for all these tests.
pytestmark = pytest.mark.xdist_group("predict_export")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  """A trained model_dir (params.json names the label map) and image files to classify."""
  root = tmp_path_factory.mktemp("predict_export")
  model_dir, params, records = _train(root)
  rng = np.random.default_rng(0)
  images = root / "photos"
  images.mkdir()
  good = []
  for i, (height, width) in enumerate([(50, 70), (64, 48), (45, 45), (90, 60)]):
    good.append(str(images / f"{i}_class{i}.jpg"))
    cv2.imwrite(good[-1], _noisy(rng, i + 1, height, width))
  good.append(str(images / "4_class5.png"))  # PNG takes the decode_image path of the preprocessing
  cv2.imwrite(good[-1], _noisy(rng, 6, 56, 48))
  bad = dict(broken=str(images / "broken.jpg"), truncated=str(images / "truncated.jpg"),
             empty=str(images / "empty.jpg"), missing=str(root / "missing.jpg"))
  with open(bad["broken"], "wb") as f:
    f.write(b"this is not an image" * 10)
  with open(good[0], "rb") as f:
    data = f.read()
  with open(bad["truncated"], "wb") as f:
    f.write(data[:len(data) // 2])
  open(bad["empty"], "wb").close()
  non_utf8 = os.path.join(os.fsencode(images), b"bad\xff.jpg")  # a real JPEG, with a bad name
  with open(non_utf8, "wb") as f:
    f.write(data)
  return dict(root=root, model_dir=model_dir, params=params, records=records,
              label_map=records.label_map, good=good, images=str(images),
              non_utf8=os.fsdecode(non_utf8), **bad)


def _start(program, *args):
  """Starts `python -m scripts.<program> args...` (text pipes); wait with _finish."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.Popen([sys.executable, "-m", f"scripts.{program}", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
  """(exit status, stdout, stderr) of a started program, waiting at most 5 minutes."""
  stdout, stderr = process.communicate(timeout=300)
  return process.returncode, stdout, stderr


def _without_training_records(workspace, folder, pattern):
  """A model_dir holding only params.json, whose train_file_pattern is `pattern`."""
  params = workspace["params"]
  params = dataclasses.replace(params, run=dataclasses.replace(params.run,
                                                               train_file_pattern=pattern))
  os.makedirs(folder)
  params_lib.save_params(params, str(folder), ["test"])
  return str(folder)


def _export_bad_input(workspace, root):
  """[(argv, expected error line)] of export command lines failing before any export (EXPORT_DIR
  folders under root)."""
  nothing = str(root / "nothing-*")
  no_train = _without_training_records(workspace, root / "no_train", nothing)
  model_dir = workspace["model_dir"]
  cases = [
      ([f"--model_dir={no_train}", "--tflite", "--quantize=int8"],
       f"--quantize=int8: its calibration reads the training records, and the model's "
       f"train_file_pattern={nothing} matches no file; pass representative_file_pattern"),
      ([f"--model_dir={model_dir}", f"--validation_file_pattern={nothing}"],
       f"--validation_file_pattern={nothing}: matches no file; expected the TFRecords of the "
       f"validation images"),
      ([f"--model_dir={model_dir}", "--latency_runs=0"], "--latency_runs=0: expected at least 1"),
      ([f"--model_dir={model_dir}", "--max_top1_drop=-1"],
       "--max_top1_drop=-1.0: expected at least 0"),
  ]
  return [([*argv, f"--export_dir={root / f'export{i}'}"], f"error: {message}")
          for i, (argv, message) in enumerate(cases)]


@pytest.fixture(scope="module")
def cli_runs(workspace, tmp_path_factory):
  """export and predict, each run in one real process, started together as soon as the model is
  trained (they overlap with each other and the tests). The export process (tests/cli_cases.py)
  first writes the SavedModel and every TFLite variant, then runs the command lines of
  _export_bad_input; predict classifies the photo folder (with its bad files) and a missing
  file."""
  export_dir = str(workspace["root"] / "export")
  bad_root = tmp_path_factory.mktemp("export_bad_input")
  bad = _export_bad_input(workspace, bad_root)
  good = [f"--model_dir={workspace['model_dir']}", f"--export_dir={export_dir}", "--tflite",
          f"--quantize={','.join(inference.QUANTIZATIONS)}", "--representative_examples=8",
          f"--validation_file_pattern={workspace['records'].validation_pattern}",
          "--latency_runs=3"]
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    export_runs = pool.submit(process_utils.run_cases, "scripts.export",
                              [good, *(argv for argv, _ in bad)])
    predict_run = _start("predict", f"--model_dir={workspace['model_dir']}", "--json",
                         "--batch_size=3", workspace["images"], workspace["missing"])
    yield dict(export=export_runs, predict=predict_run, export_dir=export_dir, bad=bad,
               bad_root=bad_root)
    if predict_run.poll() is None:
      predict_run.kill()
      predict_run.communicate()


@pytest.fixture(scope="module")
def export_output(cli_runs):
  """(stdout, stderr) of the export, which succeeded."""
  outcome = cli_runs["export"].result()[0]
  assert outcome["code"] == 0, outcome["stderr"][-3000:]
  assert "Traceback" not in outcome["stderr"]
  assert outcome["stdout"].startswith(f"Exported step {TRAIN_STEPS} of ")
  return outcome["stdout"], outcome["stderr"]


@pytest.fixture(scope="module")
def exported(cli_runs, export_output):
  """The export folder written by the export process."""
  del export_output  # finished
  return cli_runs["export_dir"]


@pytest.fixture(scope="module")
def trained(workspace):
  return inference.load_trained_model(workspace["model_dir"])


@pytest.fixture(scope="module")
def reference(workspace, cli_runs):
  """Estimator.predict on the good images, preprocessed by dataloader.preprocess_image directly.
  The tests using it also use the programs' processes: they are started first, to run meanwhile.

  Returns (images float32 [N, S, S, 3], list of prediction dicts).
  """
  del cli_runs
  params = workspace["params"]
  images = np.stack([dataloader.preprocess_image(tf.io.read_file(p), False, params.input,
                                                 IMAGE_SIZE).numpy() for p in workspace["good"]])
  est = estimator_lib.Estimator(model.model_fn, workspace["model_dir"], params, experiment.scaffold_fn)
  input_fn = lambda ctx: tf.data.Dataset.from_tensor_slices({"image": images}).batch(2)
  return images, list(est.predict(input_fn))


def _assert_same(predictions, reference_predictions, tolerance=TOLERANCE):
  """Same top-1, probabilities within tolerance and logits within tolerance of their range, image by
  image (the logits too: a confident model's probabilities are nearly one-hot and hide errors)."""
  assert len(predictions) == len(reference_predictions)
  for got, want in zip(predictions, reference_predictions):
    assert int(got["top_1"]) == int(want["top_1"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=tolerance)
    if "logits" in got:
      logit_range = float(np.ptp(want["logits"]))
      np.testing.assert_allclose(got["logits"], want["logits"], atol=tolerance * logit_range)


def _rows(outputs):
  """dict of batched arrays -> list of per-image dicts."""
  outputs = {k: np.asarray(v) for k, v in outputs.items()}
  return [{k: v[i] for k, v in outputs.items()} for i in range(len(outputs["top_1"]))]


def _run_main(program, *argv):
  """program.main with the flags of argv (positional arguments passed on); returns its status."""
  with flagsaver.flagsaver():
    remaining = flags.FLAGS([program.__name__, *argv])
    return program.main(remaining)


def _snapshot(folder):
  """{relative path: sha256} of every file under folder."""
  digests = {}
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        digests[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(
            f.read()).hexdigest()
  return digests


# ------------------------------------------------------------------------------------------------
# Prediction.


def test_library_matches_estimator_predict(workspace, trained, reference):
  _, want = reference
  results = list(inference.predict_files(trained, workspace["good"], batch_size=2))
  assert [r.path for r in results] == workspace["good"] and all(r.error is None for r in results)
  _assert_same([r.predictions for r in results], want)
  # The reference is not trivial: each image gets the class its file is named after (the classes
  # differ), and the logits spread over more than a unit.
  assert [int(p["top_1"]) for p in want] == [_true_class(path) for path in workspace["good"]]
  assert all(np.ptp(p["logits"]) > 1.0 for p in want), [p["logits"] for p in want]
  assert trained.label_map_path == workspace["label_map"]  # found through params.json
  assert trained.global_step == TRAIN_STEPS and trained.network.compute_dtype == "float32"
  assert results[0].predictions["top_5"].shape == (5,)


def test_errors_do_not_stop_the_others(workspace, trained):
  good = workspace["good"]
  paths = [good[0], workspace["missing"], workspace["broken"], good[1], workspace["truncated"],
           workspace["empty"], os.fsencode(workspace["non_utf8"]), os.fsencode(good[2])]
  results = list(inference.predict_files(trained, paths, batch_size=3, num_threads=2))
  assert [r.path for r in results] == [os.fsdecode(p) for p in paths]
  assert [r.error is None for r in results] == [True, False, False, True, False, False, False, True]
  assert results[1].error == "no such file"
  assert results[2].error.startswith("cannot decode image: ")
  assert "{{" not in results[2].error and "[Op:" not in results[2].error  # TF's annotations removed
  assert results[5].error == "empty file (0 bytes)"
  assert results[6].error == "file name is not valid UTF-8"
  text = inference.format_text(results[6], trained.label_map)
  assert text == f"{workspace['images']}/bad\\xff.jpg: error: file name is not valid UTF-8"
  assert "class" in inference.format_text(results[0], trained.label_map)
  assert json.loads(inference.format_json(results[6]))["image"].endswith("bad\\xff.jpg")


def test_predict_main_text_and_flag_errors(workspace, capsys):
  good = workspace["good"][:2]
  assert _run_main(predict, f"--model_dir={workspace['model_dir']}", "--num_threads=1", *good) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[0] == good[0] and printed[1].startswith("  1. ") and len(printed) == 12
  for argv, message in (
      (["--batch_size=0"], "--batch_size=0: expected at least 1"),
      (["--num_threads=-1"], "--num_threads=-1: expected 0"),
      ([], "no image given")):
    with pytest.raises(UserError) as error:
      _run_main(predict, f"--model_dir={workspace['model_dir']}", *argv,
                *(good if argv else []))
    assert cli.flag_message(error.value).startswith(message)
  with pytest.raises(UserError) as error:
    _run_main(predict, f"--model_dir={workspace['root']}", *good)
  message = cli.flag_message(error.value)
  assert message.startswith(f"--model_dir={workspace['root']}: no params.json")


def test_the_crop_is_central(trained):
  """An image bright in the centre and dark in the corners (not square, so rows and columns differ)
  must come out as Caffe's evaluation crop: resize to R = round(S * 256 / 227) square, crop S x S at
  offset (R - S) // 2. A corner crop differs from it by far more."""
  height, width = 90, 120
  y, x = np.mgrid[0:height, 0:width]
  radius = np.hypot((y - (height - 1) / 2) / height, (x - (width - 1) / 2) / width)
  value = np.clip(255 * (1 - radius / 0.71), 0, 255)
  rgb = np.stack([value, 255 - value, value / 2], axis=-1).astype(np.uint8)
  _, png = cv2.imencode(".png", rgb[..., ::-1])  # lossless: only the geometry is tested
  params = trained.params
  got = (inference.preprocess_fn(params)(tf.constant(png.tobytes())).numpy()
         + np.float32(dataloader.normalization(params.input)[0]))
  size = IMAGE_SIZE
  resize = round(size * 256 / 227)
  resized = cv2.resize(rgb.astype(np.float32), (resize, resize), interpolation=cv2.INTER_LINEAR)
  offset = (resize - size) // 2
  central = resized[offset:offset + size, offset:offset + size]
  corner = resized[:size, :size]
  assert np.abs(got - central).max() < 3.0  # uint8 rounding of the steep gradient at 32x32
  assert np.abs(got - corner).max() > 15.0


def test_restores_the_network_of_a_float16_run(workspace, tmp_path):
  """A float16 run checkpoints a loss-scale optimizer; inference restores only the network, in
  float32, and still matches the checkpoint's weights."""
  params = workspace["params"].replace_model(dtype="float16")
  params = dataclasses.replace(params, recipe=dataclasses.replace(params.recipe, max_steps=1))
  model_dir = str(tmp_path / "float16")
  est = experiment.build_estimator(params, model_dir)
  est.train(experiment.make_input_fn(params, params.run.train_file_pattern, True), 1)
  params_lib.save_params(params, model_dir, ["test"])
  trained = inference.load_trained_model(model_dir)
  assert trained.global_step == 1 and trained.network.compute_dtype == "float32"
  kernel = trained.network.get_layer("classifier").kernel
  checkpoint = tf.train.load_checkpoint(trained.checkpoint_path)
  np.testing.assert_array_equal(kernel.numpy(), checkpoint.get_tensor(
      estimator_lib.checkpoint_key(kernel.path)))
  result, = inference.predict_files(trained, workspace["good"][:1])
  assert result.error is None and np.isfinite(result.predictions["probabilities"]).all()


def test_user_errors(workspace, tmp_path):
  with pytest.raises(UserError, match="params.json"):
    inference.load_trained_model(str(tmp_path))
  params_lib.save_params(workspace["params"], str(tmp_path), ["test"])
  with pytest.raises(UserError, match="no checkpoint"):
    inference.load_trained_model(str(tmp_path))
  short_map = str(tmp_path / "short.txt")
  dataloader.write_label_map(short_map, [dataloader.LabelEntry(1, "a", "a"),
                                         dataloader.LabelEntry(2, "b", "b")])
  with pytest.raises(UserError, match="has 2 classes"):
    inference.load_trained_model(workspace["model_dir"], short_map)
  other = tmp_path / "other"
  shutil.copytree(workspace["model_dir"], other)
  other_params = workspace["params"].replace_model(num_classes=NUM_CLASSES + 1)
  params_lib.save_params(other_params, str(other), ["test"], allow_changes=True)
  seven = str(tmp_path / "seven.txt")
  dataloader.write_label_map(seven, [dataloader.LabelEntry(i, f"c{i}", "") for i in range(1, 8)])
  with pytest.raises(UserError, match="does not fit"):
    inference.load_trained_model(str(other), seven)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(UserError, match="holds no image"):
    inference.list_images([str(empty)])


def test_predict_process_json_and_per_image_errors(workspace, reference, cli_runs):
  """A folder plus a missing file: bad images get an error line, the others are classified."""
  _, want = reference
  status, stdout, stderr = _finish(cli_runs["predict"])
  assert status == 1, stderr[-3000:]  # some images failed
  assert "Traceback" not in stderr and "5 of 10 images could not be classified" in stderr
  lines = [json.loads(line) for line in stdout.splitlines()]
  expected = inference.list_images([workspace["images"]]) + [workspace["missing"]]
  assert [line["image"] for line in lines] == [inference.display_path(p) for p in expected]
  by_image = {line["image"]: line for line in lines}
  assert by_image[workspace["missing"]]["error"] == "no such file"
  assert by_image[workspace["empty"]]["error"] == "empty file (0 bytes)"
  assert by_image[inference.display_path(workspace["non_utf8"])]["error"] == (
      "file name is not valid UTF-8")
  for name in ("broken", "truncated"):
    assert by_image[workspace[name]]["error"].startswith("cannot decode image")
  for path, reference_prediction in zip(workspace["good"], want):
    top_5 = by_image[path]["top_5"]
    assert [c["class_idx"] for c in top_5] == list(reference_prediction["top_5"])
    np.testing.assert_allclose([c["probability"] for c in top_5],
                               reference_prediction["probabilities"][reference_prediction["top_5"]],
                               atol=TOLERANCE)
    assert top_5[0]["name"] == f"class{top_5[0]['class_idx']}"


# ------------------------------------------------------------------------------------------------
# Export.


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
  assert from_bytes["top_5"].shape == (len(want), min(5, NUM_CLASSES))
  np.testing.assert_array_equal(from_bytes["top_5"].numpy(), np.stack([p["top_5"] for p in want]))
  marker = json.loads(open(os.path.join(exported, inference.EXPORT_MARKER)).read())
  assert marker["global_step"] == TRAIN_STEPS and marker["model_dir"] == workspace["model_dir"]
  for name in ("params.json", "labels.txt"):
    assert os.path.exists(os.path.join(exported, "assets.extra", name))


def test_every_tflite_variant_runs_in_litert(reference, exported):
  images, want = reference
  runners = {}
  for variant in ALL_VARIANTS:
    runners[variant] = Interpreter(model_path=os.path.join(
        exported, inference.TFLITE_FILENAMES[variant])).get_signature_runner("serving_preprocessed")
  _assert_same(_rows(runners[None](images=images)), want)
  _assert_same(_rows(runners["float16"](images=images)), want, tolerance=1e-2)
  sizes = {v: os.path.getsize(os.path.join(exported, inference.TFLITE_FILENAMES[v]))
           for v in ALL_VARIANTS}
  assert max(sizes["dynamic_range"], sizes["int8"], sizes["float16"]) < sizes[None]
  int8 = runners["int8"]
  assert int8.get_input_details()["images"]["dtype"] == np.int8
  outputs = int8.get_output_details()
  assert outputs["probabilities"]["dtype"] == np.int8 and outputs["logits"]["dtype"] == np.int8
  assert outputs["top_1"]["dtype"] == np.int32
  for variant in ALL_VARIANTS:  # the metadata an app needs, beside each file
    path = os.path.splitext(os.path.join(exported, inference.TFLITE_FILENAMES[variant]))[0] + ".json"
    metadata = json.load(open(path))
    assert metadata["quantization"] == (variant or "float32") and metadata["image_size"] == 32
    assert len(metadata["mean_rgb"]) == 3 and metadata["input"]["shape"][1:] == [32, 32, 3]
  metadata = json.load(open(os.path.join(exported, "model_int8.json")))
  scale, zero_point = int8.get_input_details()["images"]["quantization"]
  assert metadata["input"] == {"dtype": "int8", "shape": metadata["input"]["shape"],
                               "scale": pytest.approx(scale), "zero_point": zero_point}


def _int8_top_1(tflite_path, images):
  """The top_1 of the int8 model's own interpreter for float images, quantized by hand."""
  runner = Interpreter(model_path=tflite_path).get_signature_runner("serving_preprocessed")
  details = runner.get_input_details()["images"]
  scale, zero_point = details["quantization"]
  quantized = np.clip(np.round(images / scale + zero_point), -128, 127).astype(np.int8)
  return runner(images=quantized)["top_1"]


def test_predict_tflite_gives_the_interpreters_top_1(workspace, reference, exported, capsys):
  images, want = reference
  for variant in (None, "int8"):
    path = os.path.join(exported, inference.TFLITE_FILENAMES[variant])
    assert _run_main(predict, f"--tflite={path}", "--json", "--batch_size=2",
                     *workspace["good"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    top_1 = [line["top_5"][0]["class_idx"] for line in lines]
    if variant is None:
      assert top_1 == [int(p["top_1"]) for p in want]
    else:
      assert top_1 == list(_int8_top_1(path, images))
    assert lines[0]["top_5"][0]["name"].startswith("class")  # assets.extra/labels.txt


def test_overwrite_refuses_what_it_did_not_write(workspace, exported, tmp_path, capsys):
  base = tmp_path / "serving"
  model_dir = workspace["model_dir"]
  assert inference.next_version_dir(str(base)) == str(base / "1")  # the first version
  shutil.copytree(exported, base / "1")
  assert _run_main(export, f"--model_dir={model_dir}", f"--export_base={base}") == 0
  assert sorted(os.listdir(base)) == ["1", "2"]
  # Its params.json names no validation records: the table is skipped, with one line.
  skipped = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
  assert skipped == [f"Accuracy table skipped: no validation records: {model_dir}'s params.json "
                     f"names none; pass --validation_file_pattern."]
  assert not os.path.exists(base / "2" / inference.ACCURACY_FILENAME)
  assert os.path.exists(base / "2" / inference.EXPORT_MARKER)
  protected = [model_dir, str(workspace["root"]), str(base)]
  before = {folder: _snapshot(folder) for folder in protected}
  for folder, reason in ((model_dir, "holds no squeezenext_export.json"),
                         (str(workspace["root"]), "holds no squeezenext_export.json"),
                         (str(base), "holds no squeezenext_export.json")):
    with pytest.raises(UserError) as error:
      _run_main(export, f"--model_dir={model_dir}", f"--export_dir={folder}", "--overwrite")
    message = cli.flag_message(error.value)
    assert message.startswith(f"--export_dir={folder}: {reason}") and "refusing" in message
  # A marker does not make a folder of versions, checkpoints or a model_dir replaceable.
  shutil.copy(base / "1" / inference.EXPORT_MARKER, base / inference.EXPORT_MARKER)
  with pytest.raises(UserError, match="holds another export|holds numbered versions"):
    inference.check_export_dir(str(base), overwrite=True)
  os.remove(base / inference.EXPORT_MARKER)
  for folder in (model_dir, str(workspace["root"])):  # a model_dir, a parent of one
    shutil.copy(base / "1" / inference.EXPORT_MARKER, folder)
    with pytest.raises(UserError, match="holds a model_dir|holds checkpoints|holds another"):
      inference.check_export_dir(folder, overwrite=True)
    os.remove(os.path.join(folder, inference.EXPORT_MARKER))
  assert {folder: _snapshot(folder) for folder in protected} == before
  with pytest.raises(UserError, match="already exists"):
    _run_main(export, f"--model_dir={model_dir}", f"--export_dir={exported}")
  with pytest.raises(UserError, match="give one of --export_dir"):
    _run_main(export, f"--model_dir={model_dir}", f"--export_dir={tmp_path}/x",
              f"--export_base={base}")
  assert not os.path.exists(tmp_path / "x")


def test_overwrite_replaces_an_earlier_export(workspace, exported, tmp_path, capsys):
  """Also: the validation records of the model's params.json are the default of the table."""
  export_dir = str(tmp_path / "export")
  shutil.copytree(exported, export_dir)
  stale = os.path.join(export_dir, "stale.txt")
  open(stale, "w").close()
  model_dir = workspace["root"] / "with_validation"
  shutil.copytree(workspace["model_dir"], model_dir)
  params = workspace["params"]
  validation = workspace["records"].validation_pattern
  params_lib.save_params(dataclasses.replace(params, run=dataclasses.replace(
      params.run, validation_file_pattern=validation)), str(model_dir), ["test"])
  assert _run_main(export, f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                   "--overwrite", "--latency_runs=2") == 0
  assert not os.path.exists(stale) and os.path.exists(os.path.join(export_dir, "saved_model.pb"))
  assert not os.path.exists(os.path.join(export_dir, "model.tflite"))  # the earlier export's
  assert sorted(os.listdir(tmp_path)) == ["export"]  # no temporary or old folder left
  table = json.loads(open(os.path.join(export_dir, inference.ACCURACY_FILENAME)).read())
  assert table["validation_file_pattern"] == validation
  assert [row["artefact"] for row in table["rows"]] == ["SavedModel"]  # no TFLite file here
  assert _printed_table(capsys.readouterr().out)[0][0] == "SavedModel"


# ------------------------------------------------------------------------------------------------
# The accuracy table of an export.


def _printed_table(stdout):
  """The rows of the markdown table printed by export: list of lists of cells (header dropped)."""
  lines = [line for line in stdout.splitlines() if line.startswith("| ")]
  return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def _validation_predictions(trained, records):
  """(labels, top_1, top_5) of the checkpoint's model on the validation records."""
  params = trained.params
  dataset = dataloader.input_fn(records.validation_pattern, False, params.input, IMAGE_SIZE, 4,
                                NUM_CLASSES)
  labels, top_1, top_5 = [], [], []
  for features, targets in dataset:
    labels.append(targets["class_idx"].numpy())
    predictions = trained.predict_batch(features["image"].numpy())
    top_1.append(predictions["top_1"])
    top_5.append(predictions["top_5"])
  return np.concatenate(labels), np.concatenate(top_1), np.concatenate(top_5)


def test_accuracy_table_has_a_row_per_artefact(workspace, trained, exported, export_output):
  stdout, stderr = export_output
  table = json.loads(open(os.path.join(exported, inference.ACCURACY_FILENAME)).read())
  rows = table["rows"]
  assert [row["artefact"] for row in rows] == ARTEFACTS
  assert table["num_images"] == workspace["records"].num_validation > 0
  assert table["validation_file_pattern"] == workspace["records"].validation_pattern
  assert table["latency"] == {"batch_size": 1, "statistic": "median", "runs": 3,
                              "unit": "milliseconds per image"}
  for row in rows:
    for key in ("top_1", "top_5", "top_1_agreement"):
      assert 0.0 <= row[key] <= 1.0, row
    assert row["size_bytes"] > 0 and row["latency_ms"] > 0 and row["threads"] >= 1, row
  by_name = {row["artefact"]: row for row in rows}
  assert by_name["SavedModel"]["top_1_agreement"] == 1.0
  assert by_name["TFLite float32"]["top_1_agreement"] == 1.0
  assert by_name["TFLite float32"]["size_bytes"] == os.path.getsize(
      os.path.join(exported, "model.tflite"))
  assert by_name["TFLite int8"]["runtime"] == "LiteRT" and by_name["TFLite int8"]["threads"] == 1
  # The SavedModel's accuracy is the checkpoint's on the same records.
  labels, top_1, top_5 = _validation_predictions(trained, workspace["records"])
  assert len(set(top_1.tolist())) > 1, top_1  # agreement is not trivial: several classes predicted
  assert by_name["SavedModel"]["top_1"] == pytest.approx(np.mean(top_1 == labels))
  assert by_name["SavedModel"]["top_5"] == pytest.approx(
      np.mean([label in best for label, best in zip(labels, top_5)]))
  # The printed table is the JSON's rows; the warnings are the JSON's.
  printed = _printed_table(stdout)
  assert [cells[0] for cells in printed] == ARTEFACTS
  for cells, row in zip(printed, rows):
    assert cells[1] == row["file"] and cells[5] == str(row["size_bytes"])
    assert cells[2:5] == [f"{100 * row[k]:.2f}%" for k in ("top_1", "top_5", "top_1_agreement")]
    assert cells[6] == f"{row['latency_ms']:.3f}"
    assert cells[7] == f"{row['runtime']} ({row['threads']})"
  warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
  assert len(warnings) == len(table["warnings"])
  assert "tf.lite.Interpreter is deprecated" not in stderr and "DeprecationWarning" not in stderr


def test_int8_top_1_agrees_with_the_saved_model(exported):
  """On at least 90% of the validation images (the table's agreement column)."""
  table = json.loads(open(os.path.join(exported, inference.ACCURACY_FILENAME)).read())
  int8, = [row for row in table["rows"] if row["artefact"] == "TFLite int8"]
  assert int8["top_1_agreement"] >= 0.9, table


def test_export_bad_input_is_one_line(cli_runs):
  """Exit status 2, one `error:` line, no traceback, failing before any export."""
  outcomes = cli_runs["export"].result()[1:]
  for (_, message), outcome in zip(cli_runs["bad"], outcomes, strict=True):
    process_utils.one_error_line(outcome)
    assert outcome["code"] == cli.USER_ERROR_EXIT_CODE
    assert outcome["stderr"].strip().splitlines()[-1] == message, outcome["stderr"]
  assert not [name for name in os.listdir(cli_runs["bad_root"]) if name.startswith("export")]


def test_predict_tflite_unreadable_file_is_one_line(workspace, tmp_path, capsys):
  garbage = tmp_path / "garbage.tflite"
  garbage.write_bytes(b"not a flatbuffer" * 8)
  unreadable = tmp_path / "unreadable.tflite"
  unreadable.write_bytes(b"")
  unreadable.chmod(0)
  cases = [(garbage, "cannot be loaded (The model is not a valid Flatbuffer buffer)"),
           (tmp_path / "missing.tflite", "no such file"),
           (tmp_path, "is a folder, not a .tflite file")]
  if not os.access(unreadable, os.R_OK):  # root reads anything
    cases.append((unreadable, "cannot be read (permission denied)"))
  for path, reason in cases:
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as exit_info:
      rest = flags.FLAGS(["predict", f"--tflite={path}", f"--model_dir={workspace['model_dir']}",
                          workspace["good"][0]])
      cli._main_with_user_errors(predict.main)(rest)  # pylint: disable=protected-access
    assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err == f"error: --tflite={path}: {reason}\n"


def test_a_variant_losing_top_1_gets_a_warning():
  row = lambda name, top_1: inference.ArtefactRow(name, "f", top_1, 1.0, 1.0, 1, 1.0, "LiteRT", 1)
  evaluation = inference.ExportEvaluation("e", "p", 200, 3, 1.0, [
      row("SavedModel", 0.5), row("TFLite float16", 0.495), row("TFLite int8", 0.48)])
  assert evaluation.warnings() == [
      "TFLite int8 loses 2.00 points of top-1 against the SavedModel (50.00% -> 48.00%), more "
      "than max_top1_drop=1"]
  assert evaluation.to_dict()["warnings"] == evaluation.warnings()
  assert inference.format_accuracy_table(evaluation).splitlines()[-1].startswith("| TFLite int8 ")
