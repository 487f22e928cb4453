"""Importing osmr's published SqueezeNext ImageNet weights (pytorchcv `.pth`, tools/serving/import_weights.py,
tools/serving/torch_file.py): the same logits as pytorchcv on real photographs, from the committed fixture
without PyTorch (scripts/make_import_fixture.py made it) and from pytorchcv itself where the peers
are installed; the imported model_dir through train.py --mode evaluate, scripts.predict,
scripts.export (int8 TFLite) and a fine-tune to 2 classes."""

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow as tf

import data_utils
import dataloader
import model
import process_utils
from scripts import make_import_fixture as fixture_lib
from tools.datasets import demo_data
from tools.serving import import_weights
from tools.serving import inference
from tools.recipe import params as params_lib
from tools.recipe import stats
from tools.serving import torch_file
from tools.common import UserError

WEIGHTS = os.path.join(fixture_lib.FIXTURE_DIR, "weights.pth")
REFERENCE = os.path.join(fixture_lib.FIXTURE_DIR, "reference.npz")
# Logits agree when they differ by at most this share of the reference's range (max - min).
TOLERANCE = 1e-4
# The weights' configuration and classes, as the fixture script made them.
CONFIGURATION, NUM_CLASSES = fixture_lib.FIXTURE_CONFIGURATION, fixture_lib.NUM_CLASSES

# One worker imports the fixture once (module fixtures) for the tests of the imported model; the
# fine-tune, the longest, runs on the other one.
IMPORTED = pytest.mark.xdist_group("imported_weights")


@pytest.fixture(scope="module")
def reference():
  """The fixture's Pillow crops (uint8 [5, 224, 224, 3]), pytorchcv's logits and photo names."""
  with np.load(REFERENCE) as data:
    return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def photos():
  """[(name, encoded bytes)] of the fixture's photographs (scikit-learn's, and crops of them)."""
  return fixture_lib.sample_photos()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """The committed .pth imported into a model_dir: (Params, model_dir)."""
  model_dir = str(tmp_path_factory.mktemp("imported") / "model")
  params, _ = import_weights.import_pytorchcv(WEIGHTS, model_dir)
  return params, model_dir


@pytest.fixture(scope="module")
def photo_records(tmp_path_factory, photos, reference):
  """The photos as ImageNet-schema records with known labels: the reference's top-1 class for the
  first three, its 7th class for the last two. (pattern, labels 0-based)."""
  order = np.argsort(-reference["logits"], axis=1)
  labels = [int(order[i, 0] if i < 3 else order[i, 6]) for i in range(len(photos))]
  path = str(tmp_path_factory.mktemp("photo_records") / "validation-00000-of-00001")
  data_utils.write_records(path, [data_utils.example(data, label + 1)
                                  for (_, data), label in zip(photos, labels)])
  return path, labels


def check_logits(got, want):
  """Asserts that every row has the same top-5 classes (in order) and that the logits differ by at
  most TOLERANCE of want's range; returns that relative difference."""
  difference = float(np.abs(got - want).max() / (want.max() - want.min()))
  np.testing.assert_array_equal(np.argsort(-got, axis=1)[:, :5], np.argsort(-want, axis=1)[:, :5])
  assert difference <= TOLERANCE, difference
  return difference


def test_the_torchvision_preprocessing_is_pillows_on_the_fixture_photos(photos, reference):
  """Bit for bit: JPEG decoding (ISLOW), Pillow's bilinear resize, the central crop; and the
  normalisation is torchvision's ToTensor + Normalize up to float32 rounding."""
  params = dataloader.InputParams(preprocessing="torchvision")
  preprocess = tf.function(lambda b: dataloader.preprocess_image_uint8(b, False, params, 224))
  ours = np.stack([preprocess(tf.constant(data)).numpy() for _, data in photos])
  np.testing.assert_array_equal(ours, reference["images"])
  normalised = dataloader.subtract_mean(tf.constant(ours), params).numpy()
  torchvision = ((ours / np.float32(255) - np.float32(fixture_lib.MEAN_RGB))
                 / np.float32(fixture_lib.STD_RGB))
  np.testing.assert_allclose(normalised, torchvision, atol=2e-6)


@IMPORTED
def test_the_imported_fixture_gives_pytorchcvs_logits(imported, photos, reference):
  params, model_dir = imported
  assert (params.model.configuration, params.model.num_classes, params.model.image_size,
          params.input.preprocessing) == (CONFIGURATION, NUM_CLASSES, 224, "torchvision")
  assert params_lib.load_params(model_dir).to_dict() == params.to_dict()
  trained = inference.load_trained_model(model_dir)  # BatchNorm folded, as predict and export run
  assert trained.global_step == 0 and trained.label_map is None  # 10 classes: no ImageNet names
  images = dataloader.subtract_mean(tf.constant(reference["images"]), params.input)
  check_logits(trained.predict_batch(images.numpy())["logits"], reference["logits"])
  preprocess = inference.preprocess_fn(params)  # from the photo files' bytes, as predict does
  from_bytes = np.stack([preprocess(tf.constant(data)).numpy() for _, data in photos])
  check_logits(trained.predict_batch(from_bytes)["logits"], reference["logits"])


def _zip_pth(path, pickled, extra=()):
  """A zip archive laid out as torch.save's, holding `pickled` as data.pkl (and `extra` records)."""
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickled)
    for name, data in extra:
      archive.writestr(f"archive/{name}", data)
  return path


class _Intruder:
  """Pickles as a call of os.mkdir: what a malicious .pth could make torch.load (unsafe) run."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.mkdir, (self.path,))


def test_the_reader_runs_nothing_from_the_file_and_names_what_is_wrong(tmp_path):
  marker = str(tmp_path / "ran")
  evil = _zip_pth(str(tmp_path / "evil.pth"), pickle.dumps({"x": _Intruder(marker)}, protocol=2))
  with pytest.raises(UserError, match=r"not a PyTorch state_dict .*names posix\.mkdir.*refused"):
    torch_file.read_state_dict(evil)
  assert not os.path.exists(marker)
  no_tensors = _zip_pth(str(tmp_path / "plain.pth"), pickle.dumps({"x": 1}, protocol=2))
  with pytest.raises(UserError, match="holds no state_dict"):
    torch_file.read_state_dict(no_tensors)
  with open(WEIGHTS, "rb") as f:
    content = f.read()
  for name, data in (("cut.pth", content[:len(content) // 2]), ("junk.pth", b"\xff\xd8 not torch")):
    (tmp_path / name).write_bytes(data)
  with pytest.raises(UserError, match=r"cut\.pth: cannot be read, truncated or damaged"):
    torch_file.read_state_dict(str(tmp_path / "cut.pth"))
  with pytest.raises(UserError, match=r"junk\.pth: not a PyTorch state_dict .*neither"):
    torch_file.read_state_dict(str(tmp_path / "junk.pth"))
  tensors = torch_file.read_state_dict(WEIGHTS)
  assert tensors["features.init_block.conv.conv.weight"].shape == (64, 3, 7, 7)
  assert tensors["features.init_block.conv.bn.num_batches_tracked"].dtype == np.int64


def test_another_network_or_a_broken_file_is_a_one_line_error(tmp_path):
  """scripts.import_weights in one process: the errors name what does not match and write
  nothing; the good case writes the model_dir."""
  cut = tmp_path / "cut.pth"
  with open(WEIGHTS, "rb") as f:
    cut.write_bytes(f.read()[:-1000])
  labels = tmp_path / "labels.txt"
  dataloader.write_label_map(str(labels), [dataloader.LabelEntry(i + 1, f"c{i}", f"class {i}")
                                           for i in range(3)])
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "notes.txt").write_text("mine")
  new = str(tmp_path / "new")  # the error cases would write tmp_path/new, the last one does
  cases = [
      ([f"--weights={WEIGHTS}", f"--model_dir={new}", "--configuration=sqnxt23v5_w1"],
       f"error: --weights={WEIGHTS}: not the weights of sqnxt23v5_w1: it lacks "
       f"features.stage3.unit10.conv1.bn.bias (and 179 more); it is a file of sqnxt23_w1"),
      ([f"--weights={WEIGHTS}", f"--model_dir={new}", "--configuration=sqnxt23_w3d2"],
       f"error: --weights={WEIGHTS}: not the weights of sqnxt23_w3d2: "
       f"features.init_block.conv.conv.weight has shape [64, 3, 7, 7], sqnxt23_w3d2 "
       f"[96, 3, 7, 7]; it is a file of sqnxt23_w1"),
      ([f"--weights={cut}", f"--model_dir={new}"],
       f"error: --weights={cut}: cannot be read, truncated or damaged (BadZipFile: File is not a "
       f"zip file)"),
      ([f"--weights={WEIGHTS}", f"--model_dir={taken}"],
       f"error: --model_dir={taken}: exists and is not an empty folder; the import writes a new "
       f"model_dir"),
      ([f"--weights={WEIGHTS}", f"--model_dir={new}", f"--label_map={labels}"],
       f"error: --label_map={labels}: has 3 classes, the weights {NUM_CLASSES}"),
      ([f"--weights={WEIGHTS}", f"--model_dir={new}", "--configuration=v_1_0_SqNxt_23"],
       "error: --configuration=v_1_0_SqNxt_23: expected one of pytorchcv's sqnxt23_w1, "
       "sqnxt23_w3d2, sqnxt23_w2, sqnxt23v5_w1, sqnxt23v5_w3d2, sqnxt23v5_w2"),
  ]
  outcomes = process_utils.run_cases("scripts.import_weights", [argv for argv, _ in cases] + [
      [f"--weights={WEIGHTS}", f"--model_dir={new}", "--image_size=96"]])
  for (_, message), outcome in zip(cases, outcomes):
    assert process_utils.one_error_line(outcome) == message
  assert os.listdir(taken) == ["notes.txt"]
  assert sorted(os.listdir(tmp_path)) == ["cut.pth", "labels.txt", "new", "taken"]  # no leftovers
  assert outcomes[-1]["code"] == 0, outcomes[-1]["stderr"][-2000:]
  assert f"Imported {CONFIGURATION} ({NUM_CLASSES} classes, 96 px" in outcomes[-1]["stdout"]
  assert sorted(os.listdir(new)) == ["checkpoint", "ckpt-0.data-00000-of-00001", "ckpt-0.index",
                                     "params.json"]


def test_keys_the_network_has_not_are_left_out_and_a_missing_key_is_named():
  network = model.build_network(CONFIGURATION, NUM_CLASSES, 224)
  tensors = torch_file.read_state_dict(WEIGHTS)
  extra = {**tensors, "features.stage9.unit1.conv1.conv.weight": np.zeros([1, 1, 1, 1])}
  assigned = import_weights.assignments(network, CONFIGURATION, extra, "w.pth")
  # All but num_batches_tracked of the 111 BatchNorms (stem, 21 blocks x 5, 4 shortcuts, head).
  assert len(assigned) == len(tensors) - (1 + 21 * 5 + 4 + 1)
  kernel = dict((v.path, a) for v, a in assigned)["stage2_block1_conv3/kernel"]
  np.testing.assert_array_equal(  # OIHW -> HWIO, pytorchcv's conv3 is the 1x3
      kernel, tensors["features.stage2.unit1.conv3.conv.weight"].transpose(2, 3, 1, 0))
  assert kernel.shape == (1, 3, 16, 32)
  del tensors["features.final_block.bn.running_var"]
  with pytest.raises(UserError, match=r"w\.pth: not the weights of sqnxt23_w1: it lacks "
                                      r"features\.final_block\.bn\.running_var$"):
    import_weights.assignments(network, CONFIGURATION, tensors, "w.pth")


def write_tf2cv_layout(path, tensors):
  """Writes pytorchcv's `tensors` as tf2cv 0.0.18's save_weights names and lays them out (Keras:
  kernels HWIO, the classifier [C, K]; checked against tf2cv's own files below where tf2cv is
  installed): an HDF5 file without tf2cv."""
  import h5py  # pylint: disable=import-outside-toplevel
  with h5py.File(path, "w") as f:
    for key, value in tensors.items():
      if key.startswith("output."):
        weight = key == "output.weight"
        f[f"output1/squeeze_next/output1/{'kernel' if weight else 'bias'}:0"] = (
            value.T if weight else value)
        continue
      *module, kind, attribute = key.split(".")[1:]
      if attribute == "num_batches_tracked":
        continue
      module = [module[0], *module] if module[0].startswith("stage") else module  # stage1/stage1
      scope = "features/squeeze_next/features/features/" + "/".join(module)
      if kind == "conv":
        f[f"{scope}/conv/conv/{'kernel' if attribute == 'weight' else 'bias'}:0"] = (
            value.transpose(2, 3, 1, 0) if attribute == "weight" else value)
      else:
        bn = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
              "running_var": "moving_variance"}[attribute]
        f[f"{scope}/bn/{bn}:0"] = value
  return path


@IMPORTED
def test_a_tf2cv_file_is_imported_as_its_pytorchcv_twin(reference, tmp_path):
  h5 = write_tf2cv_layout(str(tmp_path / "w.tf2.h5"), torch_file.read_state_dict(WEIGHTS))
  params, _ = import_weights.import_pytorchcv(h5, str(tmp_path / "model"))
  assert params.model.configuration == CONFIGURATION
  trained = inference.load_trained_model(str(tmp_path / "model"))
  images = dataloader.subtract_mean(tf.constant(reference["images"]), params.input).numpy()
  check_logits(trained.predict_batch(images)["logits"], reference["logits"])
  with open(h5, "rb") as f:
    (tmp_path / "cut.tf2.h5").write_bytes(f.read()[:100_000])
  with pytest.raises(UserError, match=r"cut\.tf2\.h5: cannot be read, truncated or damaged"):
    import_weights.read_weights(str(tmp_path / "cut.tf2.h5"))
  import h5py  # pylint: disable=import-outside-toplevel
  with h5py.File(tmp_path / "other.h5", "w") as f:
    f["dense/kernel:0"] = np.zeros([2, 2])
  with pytest.raises(UserError, match=r"an HDF5 file without tf2cv's SqueezeNext weights"):
    import_weights.read_weights(str(tmp_path / "other.h5"))


def _events(folder):
  """{tag: [(step, value)]} of the scalars (floats) and texts (str) of the TensorBoard event files
  in `folder`."""
  found = {}
  for path in tf.io.gfile.glob(os.path.join(folder, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin in ("scalars", "text"):
          tensor = tf.make_ndarray(value.tensor)
          item = tensor.item().decode() if plugin == "text" else float(tensor)
          found.setdefault(value.tag, []).append((event.step, item))
  return found


@IMPORTED
def test_evaluate_mode_is_one_exact_pass_that_writes_no_checkpoint(imported, photo_records,
                                                                  reference):
  _, model_dir = imported
  pattern, labels = photo_records
  before = sorted(os.listdir(model_dir))
  run = process_utils.run([process_utils.TRAIN, f"--model_dir={model_dir}", "--mode=evaluate",
                           f"--validation_file_pattern={pattern}", "--batch_size=2"])
  assert run.returncode == 0, run.stderr[-3000:]
  logits = reference["logits"]
  log_probabilities = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
      1, keepdims=True)) - logits.max(1, keepdims=True)
  loss = -np.mean(log_probabilities[np.arange(len(labels)), labels])
  top_5 = np.mean([label in np.argsort(-row)[:5] for row, label in zip(logits, labels)])
  line = re.search(r"Evaluation at step 0 \(torchvision preprocessing, 224 px\): top-1 0\.6000  "
                   r"top-5 (\S+)  loss (\S+)  on 5 examples", run.stdout)
  assert line, run.stdout
  assert float(line.group(1)) == pytest.approx(top_5) and top_5 == 0.6  # classes 1-5: 3 of 5
  assert float(line.group(2)) == pytest.approx(loss, rel=1e-3)  # logits within 1e-4 of 120
  assert "ckpt-0 (step 0) of sqnxt23_w1, 10 classes, 224 px, torchvision preprocessing" in (
      run.stderr)
  assert sorted(os.listdir(model_dir)) == sorted(before + ["eval"])  # no checkpoint, no params
  events = _events(os.path.join(model_dir, "eval"))
  assert events["eval/top_1_accuracy"] == [(0, pytest.approx(0.6))]
  assert events["eval/num_examples"] == [(0, 5.0)]
  assert "torchvision preprocessing" in events["eval/setup"][0][1]


@IMPORTED
def test_predict_and_int8_export_of_the_imported_model(imported, photos, photo_records, reference,
                                                      tmp_path):
  _, model_dir = imported
  files = []
  for name, data in photos:
    files.append(str(tmp_path / name))
    (tmp_path / name).write_bytes(data)
  pattern, _ = photo_records
  export_dir = str(tmp_path / "export")
  predict, = process_utils.run_cases("scripts.predict", [
      [f"--model_dir={model_dir}", "--json", *files]])
  assert predict["code"] == 0, predict["stderr"][-2000:]
  top_5 = [[c["class_idx"] for c in json.loads(line)["top_5"]]
           for line in predict["stdout"].splitlines()]
  assert top_5 == np.argsort(-reference["logits"], axis=1)[:, :5].tolist()
  export, = process_utils.run_cases("scripts.export", [
      [f"--model_dir={model_dir}", f"--export_dir={export_dir}", "--tflite", "--quantize=int8",
       f"--representative_file_pattern={pattern}", "--representative_examples=5",
       f"--validation_file_pattern={pattern}", "--latency_runs=1"]], timeout=600)
  assert export["code"] == 0, export["stderr"][-3000:]
  rows = {row["artefact"]: row for row in json.loads(
      (tmp_path / "export" / inference.ACCURACY_FILENAME).read_text())["rows"]}
  assert rows["SavedModel"]["top_1"] == pytest.approx(0.6)
  assert set(rows) == {"SavedModel", "TFLite float32", "TFLite int8"}
  assert rows["TFLite float32"]["top_1_agreement"] == 1.0
  metadata = json.loads((tmp_path / "export" / "model_int8.json").read_text())
  assert metadata["preprocessing"] == "torchvision"
  np.testing.assert_allclose(metadata["std_rgb"], [58.395, 57.12, 57.375])


@IMPORTED
def test_evaluate_mode_without_what_it_needs_is_a_one_line_error(imported, photo_records, tmp_path):
  _, model_dir = imported
  pattern, _ = photo_records
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  (untrained / params_lib.PARAMS_FILENAME).write_text(
      (open(os.path.join(model_dir, params_lib.PARAMS_FILENAME)).read()))
  cases = [
      ([f"--model_dir={tmp_path / 'none'}", f"--validation_file_pattern={pattern}"],
       f"error: --model_dir={tmp_path / 'none'}: no such folder"),
      ([f"--model_dir={untrained}", f"--validation_file_pattern={pattern}"],
       f"error: --model_dir={untrained}: no checkpoint (ckpt-*) to evaluate"),
      ([f"--model_dir={model_dir}"],
       f"error: --mode evaluate needs --validation_file_pattern ({model_dir}'s params.json names "
       f"no validation records)"),
      ([f"--model_dir={model_dir}", f"--validation_file_pattern={pattern}",
        f"--fine_tune_ckpt={model_dir}"],
       "error: --fine_tune_ckpt warm-starts a training; --mode evaluate reads --model_dir's own "
       "checkpoint"),
  ]
  outcomes = process_utils.run_cases("train", [["--mode=evaluate", *argv] for argv, _ in cases])
  for (_, message), outcome in zip(cases, outcomes, strict=True):
    assert process_utils.one_error_line(outcome) == message
  assert sorted(os.listdir(untrained)) == [params_lib.PARAMS_FILENAME]


@pytest.mark.xdist_group("imported_fine_tune")
def test_fine_tuning_an_imported_model_to_two_classes(imported, tmp_path):
  """train.py --fine_tune_ckpt on the imported model_dir, on the demo photos (2 classes): the
  network and its input come from the source, the classifier is new, the run evaluates."""
  _, source = imported
  data = demo_data.make_photo_data(str(tmp_path / "photos"), num_workers=2)
  model_dir = str(tmp_path / "fine_tuned")
  run = process_utils.run([
      process_utils.TRAIN, f"--model_dir={model_dir}", f"--fine_tune_ckpt={source}",
      f"--train_file_pattern={data.train_pattern}",
      f"--validation_file_pattern={data.validation_pattern}", "--image_size=64",
      "--batch_size=16", "--max_steps=12", "--precise_bn_examples=64", "--steps_per_loop=4",
      "--base_learning_rate=0.01", "--warmup_steps=2", "--output_train_images=false"],
      timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  params = params_lib.load_params(model_dir)
  assert (params.model.configuration, params.input.preprocessing, params.model.num_classes,
          params.model.image_size) == (CONFIGURATION, "torchvision", 2, 64)
  assert "Fine-tune: skipped classifier/kernel (shape [128, 2] != checkpoint's [128, 10])" in (
      run.stderr)
  assert "Final evaluation at step 12" in run.stdout and "on 100 examples" in run.stdout


# ------------------------------------------------------------------------------------------------
# With the peers installed (requirements-peers.txt): against pytorchcv itself.


@pytest.fixture(scope="module")
def pytorchcv_reference(photos):
  """(torch, calibration images, Pillow crops of the photos) where torch and pytorchcv are
  installed."""
  torch = pytest.importorskip("torch", reason="the peers (requirements-peers.txt) are not installed")
  pytest.importorskip("pytorchcv", reason="the peers (requirements-peers.txt) are not installed")
  crops = np.stack([fixture_lib.torchvision_reference(data) for _, data in photos])
  return torch, fixture_lib.calibration_images(photos), crops


@pytest.mark.parametrize("configuration", model.PYTORCHCV_CONFIGURATIONS)
def test_each_pytorchcv_network_is_imported_exactly(configuration, pytorchcv_reference, photos,
                                                    tmp_path, capsys):
  """pytorchcv's network (seeded, statistics and biases randomised) saved with torch.save, imported,
  and both run on the photos, each preprocessed its own way: ours from the files' bytes in
  TensorFlow, pytorchcv's with Pillow and torch. sqnxt23_w1 also in torch.save's legacy format."""
  torch, calibration, crops = pytorchcv_reference
  from pytorchcv.models.common.model_store import calc_net_weight_count  # pylint: disable=import-outside-toplevel
  network = fixture_lib.pytorchcv_network(configuration, seed=1, calibration=calibration)
  want = fixture_lib.torch_logits(network, crops)
  formats = ["zip", "legacy"] if configuration == "sqnxt23_w1" else ["zip"]
  for kind in formats:
    path = str(tmp_path / f"{kind}.pth")
    torch.save(network.state_dict(), path, _use_new_zipfile_serialization=kind == "zip")
    params, _ = import_weights.import_pytorchcv(path, str(tmp_path / kind))
    trained = inference.load_trained_model(str(tmp_path / kind))
    assert trained.label_map[0].name == "n01440764"  # 1,000 classes: ImageNet's label map
    preprocess = inference.preprocess_fn(params)
    ours = np.stack([preprocess(tf.constant(data)).numpy() for _, data in photos])
    difference = check_logits(trained.predict_batch(ours)["logits"], want)
    with capsys.disabled():
      print(f"\n{configuration} ({kind}): max |logit difference| / logit range = {difference:.2e}")
  _, totals = stats.model_statistics(model.build_network(configuration, 1000, 224))
  assert totals["params"] == calc_net_weight_count(network)


def test_tf2cv_own_file_is_read_exactly(photos, tmp_path, capsys):
  """tf2cv's sqnxt23_w1 saved by tf2cv (Keras 2), imported: pytorchcv's network with tf2cv's
  weights gives tf2cv's logits when tf2cv's max-pool takes PyTorch's ceil mode; tf2cv's own
  max-pool (padded on all sides) is one pixel off (scripts/make_import_fixture.py)."""
  for package in ("tf2cv", "tf_keras"):
    if importlib.util.find_spec(package) is None:
      pytest.skip(f"{package} is not installed (tf2cv 0.0.18 and tf_keras for its Keras 2)")
  made = subprocess.run([sys.executable, "-m", "scripts.make_import_fixture", "--tf2cv",
                         f"--output_dir={tmp_path}"], cwd=process_utils.ROOT, capture_output=True,
                        text=True, timeout=600, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
  assert made.returncode == 0, made.stderr[-3000:]
  params, _ = import_weights.import_pytorchcv(str(tmp_path / "weights.tf2.h5"),
                                              str(tmp_path / "model"))
  trained = inference.load_trained_model(str(tmp_path / "model"))
  preprocess = inference.preprocess_fn(params)
  ours = trained.predict_batch(np.stack([preprocess(tf.constant(d)).numpy() for _, d in photos]))
  with np.load(tmp_path / "reference.npz") as tf2cv:
    difference = check_logits(ours["logits"], tf2cv["logits"])
    own = tf2cv["tf2cv_logits"]
    own_difference = np.abs(ours["logits"] - own).max() / (own.max() - own.min())
  with capsys.disabled():
    print(f"\ntf2cv sqnxt23_w1: {difference:.2e} of the logit range; with tf2cv's own max-pool "
          f"{own_difference:.2e}")


def test_the_committed_fixture_is_what_the_script_makes(pytorchcv_reference, reference, tmp_path):
  del pytorchcv_reference  # only for the skip without the peers
  weights, made = fixture_lib.make_fixture(str(tmp_path))
  with np.load(made) as data:
    np.testing.assert_array_equal(data["images"], reference["images"])
    np.testing.assert_allclose(data["logits"], reference["logits"], rtol=1e-5, atol=1e-4)
  committed, remade = torch_file.read_state_dict(WEIGHTS), torch_file.read_state_dict(weights)
  assert list(committed) == list(remade)
  for key, value in committed.items():
    np.testing.assert_array_equal(remade[key], value, err_msg=key)
