"""ONNX export and ONNX Runtime: tools/serving/inference.py (convert_onnx, write_onnx, load_onnx_model, the
ONNX row of evaluate_export) and the programs' --onnx (scripts/export.py, scripts/predict.py).

tf2onnx, onnx and onnxruntime are optional (requirements-onnx.txt): the tests of a real model skip
with the reason where they are missing; the one-line errors that a user without them gets are tested
everywhere. One small model_dir is trained for the module (`tiny_SqNxt` at 32x32 on records of 6
colour classes built by tests/data_utils.py, a few steps: the weights need not be good, only
fixed) and exported once by the export program with --tflite --onnx.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import data_utils
import dataloader
import process_utils
from tools.recipe import experiment
from tools.serving import inference
from tools.recipe import params as params_lib
from tools.common import UserError

IMAGE_SIZE = 32
NUM_CLASSES = 6  # > 5, so that top_5 is a real choice
ONNX_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")
MISSING_REASON = ("tf2onnx, onnx and onnxruntime are not installed (pip install -r "
                  "requirements-onnx.txt)")
# The acceptance bound of issue 27: ONNX logits within 1e-4 of the SavedModel's logit range.
LOGIT_ERROR = 1e-4
# Two runtimes may order two classes whose probabilities are this close either way (float32
# rounding); top-1 is compared only where the best class leads the second by more.
TIE = 1e-4

# One worker builds the module fixture (a trained model and its export) once for these tests.
pytestmark = pytest.mark.xdist_group("onnx")


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _start(program, *args):
  """Starts `python -m scripts.<program> args...` (text pipes, stdout and stderr apart)."""
  return subprocess.Popen([sys.executable, "-m", f"scripts.{program}", *args],
                          cwd=process_utils.ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(process):
  """{"code", "stdout", "stderr"} of a started program, waiting at most 5 minutes."""
  stdout, stderr = process.communicate(timeout=300)
  return {"code": process.returncode, "stdout": stdout, "stderr": stderr}


def _train(root):
  """Trains tiny_SqNxt on records under root for 6 steps; returns (model_dir, BuildResult)."""
  records = data_utils.build_records(str(root), num_classes=NUM_CLASSES, per_class=6, size=40)
  user = dict(configuration="tiny_SqNxt", image_size=IMAGE_SIZE, num_classes=NUM_CLASSES,
              batch_size=6, max_steps=6, save_checkpoints_steps=6, save_summary_steps=6,
              log_every_n_steps=6, steps_per_loop=3, output_train_images=False, bn_momentum=0.5,
              base_learning_rate=0.01, warmup_start_learning_rate=0.01, warmup_steps=0, seed=0,
              precise_bn_examples=0, eval_every_n_steps=0)
  data = dict(train_file_pattern=records.train_pattern,
              validation_file_pattern=records.validation_pattern,
              num_examples_per_epoch=records.num_train, label_map=records.label_map)
  params = params_lib.resolve_params(user, data)
  model_dir = str(root / "model")
  keras.utils.set_random_seed(0)
  est = experiment.build_estimator(params, model_dir)
  os.makedirs(model_dir)
  params_lib.save_params(params, model_dir, ["test"])
  experiment.run(est, params)
  return model_dir, records


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  """A trained model_dir, its export (SavedModel, model.tflite, model.onnx, accuracy.json) written
  by `scripts.export --tflite --onnx`, and image files: the JPEGs of the data and a broken one."""
  for name in ONNX_PACKAGES:
    pytest.importorskip(name, reason=MISSING_REASON)
  root = tmp_path_factory.mktemp("onnx")
  model_dir, records = _train(root)
  export_dir = str(root / "export")
  export = process_utils.run(["-m", "scripts.export", f"--model_dir={model_dir}",
                              f"--export_dir={export_dir}", "--tflite", "--onnx",
                              "--latency_runs=3"], env=_env())
  assert export.returncode == 0 and "Traceback" not in export.stderr, export.stderr[-3000:]
  images = sorted(str(p) for p in (root / "images").rglob("*.jpg"))
  broken = root / "broken.jpg"
  broken.write_bytes(b"this is not an image" * 10)
  return dict(root=root, model_dir=model_dir, records=records, export_dir=export_dir,
              export_stdout=export.stdout, images=images, broken=str(broken))


def _validation_images(workspace):
  """The validation records through the evaluation preprocessing: float32 [n, S, S, 3]."""
  params = inference.load_saved_model(workspace["export_dir"]).params
  dataset = dataloader.input_fn(workspace["records"].validation_pattern, False, params.input,
                                IMAGE_SIZE, 64, NUM_CLASSES)
  return np.concatenate([features["image"].numpy() for features, _ in dataset])


def _clear_top_1(probabilities):
  """bool [N]: the best class leads the second by more than TIE."""
  best = np.sort(probabilities, axis=-1)
  return best[:, -1] - best[:, -2] > TIE


def test_onnx_logits_are_the_saved_models_on_real_images(workspace):
  """On the validation images and the image files, at batch N and at batch 1 (dynamic batch)."""
  saved = inference.load_saved_model(workspace["export_dir"])
  onnx_model = inference.load_onnx_model(os.path.join(workspace["export_dir"], "model.onnx"))
  preprocess = inference.preprocess_fn(saved.params)
  files = np.stack([preprocess(tf.io.read_file(p)).numpy() for p in workspace["images"]])
  images = np.concatenate([_validation_images(workspace), files])
  want = saved.predict_batch(images)
  got = onnx_model.predict_batch(images)
  one = [onnx_model.predict_batch(images[i:i + 1]) for i in range(3)]
  assert len(images) > 30 and got["logits"].shape == (len(images), NUM_CLASSES)
  logit_range = np.ptp(want["logits"])
  assert logit_range > 0
  np.testing.assert_allclose(got["logits"], want["logits"], atol=LOGIT_ERROR * logit_range, rtol=0)
  np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.concatenate([o["logits"] for o in one]), want["logits"][:3],
                             atol=LOGIT_ERROR * logit_range, rtol=0)
  clear = _clear_top_1(want["probabilities"])
  assert clear.mean() > 0.9  # the comparison below is not empty
  np.testing.assert_array_equal(got["top_1"][clear], want["top_1"][clear])
  assert got["top_1"].dtype == np.int32 and got["top_5"].shape == (len(images), 5)
  names = np.vectorize(lambda b: b.decode())(want["top_1_name"])
  np.testing.assert_array_equal(got["top_1_name"][clear], names[clear])


def test_onnx_file_has_the_contract_of_the_tflite_files(workspace):
  """Input `images` float32 [batch, S, S, 3] (symbolic batch), the SavedModel's outputs, only ONNX
  ops of opset 17, and what an app needs (preprocessing, size, mean, labels) in its metadata."""
  import onnx  # pylint: disable=import-outside-toplevel
  path = os.path.join(workspace["export_dir"], "model.onnx")
  proto = onnx.load(path)
  onnx.checker.check_model(proto, full_check=True)
  assert {(o.domain, o.version) for o in proto.opset_import} >= {("", inference.ONNX_OPSET)}
  assert {node.domain for node in proto.graph.node} == {""}
  (image,) = proto.graph.input
  dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
  assert image.name == "images" and dims == ["batch", IMAGE_SIZE, IMAGE_SIZE, 3]
  assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
  outputs = {o.name: o.type.tensor_type for o in proto.graph.output}
  assert sorted(outputs) == ["logits", "probabilities", "top_1", "top_1_name", "top_5",
                             "top_5_names"]
  assert outputs["top_1"].elem_type == onnx.TensorProto.INT32
  assert all(t.shape.dim[0].dim_param == "batch" for t in outputs.values())
  metadata = {p.key: json.loads(p.value) for p in proto.metadata_props}
  lite_metadata = json.loads(open(os.path.join(workspace["export_dir"], "model.json")).read())
  assert metadata == {k: lite_metadata[k] for k in ("preprocessing", "image_size", "mean_rgb", "std_rgb",
                                                    "labels")}
  assert metadata["labels"] == [f"class{i}" for i in range(NUM_CLASSES)]


def test_export_table_has_the_onnx_row(workspace):
  """ONNX Runtime with one thread, the same top-1 as the SavedModel, the file's size."""
  path = os.path.join(workspace["export_dir"], inference.ACCURACY_FILENAME)
  rows = {row["artefact"]: row for row in json.loads(open(path).read())["rows"]}
  assert list(rows) == ["SavedModel", "TFLite float32", "ONNX"]
  onnx_row = rows["ONNX"]
  assert onnx_row["file"] == "model.onnx" and onnx_row["runtime"] == "ONNX Runtime"
  assert onnx_row["threads"] == 1 and onnx_row["latency_ms"] > 0
  assert onnx_row["size_bytes"] == os.path.getsize(os.path.join(workspace["export_dir"],
                                                                "model.onnx"))
  assert onnx_row["top_1_agreement"] >= 0.9
  assert 0 <= onnx_row["logit_error"] <= LOGIT_ERROR and rows["SavedModel"]["logit_error"] == 0
  printed = [[cell.strip() for cell in line.strip("|").split("|")]
             for line in workspace["export_stdout"].splitlines() if line.startswith("| ONNX ")]
  assert len(printed) == 1, workspace["export_stdout"]
  assert printed[0][1] == "model.onnx" and printed[0][7:] == [
      "ONNX Runtime (1)", f"{onnx_row['logit_error']:.1e}"]


def test_predict_onnx_gives_the_top_1_of_predict_tflite(workspace):
  """The same files, the same JSON lines: the top-1 class (where it is not a near tie), its name,
  probabilities within float32 rounding, and the broken file's error line."""
  export_dir = workspace["export_dir"]
  files = [*workspace["images"], workspace["broken"]]
  runs = [_start("predict", f"--{kind}={os.path.join(export_dir, name)}", "--json",
                 "--batch_size=7", *files)
          for kind, name in (("onnx", "model.onnx"), ("tflite", "model.tflite"))]
  onnx_run, tflite_run = [_finish(run) for run in runs]
  for run in (onnx_run, tflite_run):
    assert run["code"] == 1 and "Traceback" not in run["stderr"], run["stderr"][-3000:]
  onnx_lines = [json.loads(line) for line in onnx_run["stdout"].splitlines()]
  tflite_lines = [json.loads(line) for line in tflite_run["stdout"].splitlines()]
  assert [line["image"] for line in onnx_lines] == files
  assert onnx_lines[-1] == tflite_lines[-1] and "error" in onnx_lines[-1]
  compared = 0
  for got, want in zip(onnx_lines[:-1], tflite_lines[:-1], strict=True):
    probabilities = [c["probability"] for c in want["top_5"]]
    np.testing.assert_allclose([c["probability"] for c in got["top_5"]], probabilities, atol=1e-4)
    if probabilities[0] - probabilities[1] > TIE:
      assert got["top_5"][0] == {**want["top_5"][0], "probability": got["top_5"][0]["probability"]}
      compared += 1
  assert compared > 0.9 * len(files)


def test_bad_onnx_files_are_one_line_errors(workspace, tmp_path):
  import onnx  # pylint: disable=import-outside-toplevel
  garbage = tmp_path / "garbage.onnx"
  garbage.write_bytes(b"not a protobuf" * 8)
  other = tmp_path / "other.onnx"  # a valid ONNX file with another contract
  x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
  y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
  graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
  onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)],
                                   ir_version=8), str(other))  # IR 8: the version of opset 17
  cases = [(tmp_path / "missing.onnx", "no such file"), (tmp_path, "is a folder, not a .onnx file"),
           (other, "has inputs ['x'] and outputs ['y'], not those of an export (images -> top_1, "
                   "top_5, probabilities, logits)")]
  for path, reason in cases:
    with pytest.raises(UserError) as info:
      inference.load_onnx_model(str(path), model_dir=workspace["model_dir"])
    assert str(info.value) == f"onnx={path}: {reason}" and info.value.param == "onnx"
  with pytest.raises(UserError, match=r"^onnx=.*garbage\.onnx: cannot be loaded \(.+\)$"):
    inference.load_onnx_model(str(garbage), model_dir=workspace["model_dir"])
  with pytest.raises(UserError, match=r": no params\.json in .*assets\.extra \(not in an export "):
    inference.load_onnx_model(str(other))


def test_without_the_packages_onnx_is_a_one_line_error(monkeypatch, tmp_path):
  """Here or where they are installed (hidden from import): export's --onnx check, the conversion
  and predict's --onnx each name requirements-onnx.txt."""
  for name in ONNX_PACKAGES:
    monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
  hint = "not installed here: pip install -r requirements-onnx.txt"
  with pytest.raises(UserError) as info:
    inference.require_packages(ONNX_PACKAGES, "--onnx")
  assert str(info.value) == f"--onnx needs the optional packages tf2onnx, onnx, onnxruntime, {hint}"
  with pytest.raises(UserError) as info:
    inference.convert_onnx(str(tmp_path))
  assert str(info.value) == f"ONNX conversion needs the optional packages tf2onnx, onnx, {hint}"
  path = str(tmp_path / "model.onnx")
  with pytest.raises(UserError) as info:
    inference.load_onnx_model(path)
  assert str(info.value) == (f"onnx={path}: running it needs the optional package onnxruntime, "
                             f"{hint}")
  assert info.value.param == "onnx"
