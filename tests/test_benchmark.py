"""Tests of scripts/benchmark.py, in-process with absl's flagsaver: every sub-command on small data
made here (no timing asserted)."""

import importlib
import json
import os
import random
import statistics

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest

from scripts import benchmark
from tools.recipe import hardware

FLAGS = flags.FLAGS
# The smallest runs: tiny network, small images and batches, one timed round.
SMALL = dict(configuration=["tiny_SqNxt"], image_size=32, batch_size=4, steps=2, rounds=1,
             matmul_size=128, onednn_probe=False)
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_PEERS = HAS_TORCH and importlib.util.find_spec("pytorchcv") is not None


@pytest.fixture(autouse=True)
def parsed_flags():
  """benchmark's flags at their defaults (as if run without options); restored after each test."""
  benchmark.define_flags()
  if not FLAGS.is_parsed():
    FLAGS.mark_as_parsed()
  with flagsaver.flagsaver():
    yield


def test_complexity_matches_the_official_figures(tmp_path, capsys):
  """Through main: the printed tables and --output_json. Two of the five networks (all five are
  built and counted against the official figures in test_model.py's test_official_statistics)
  and one of pytorchcv's (all six: test_model.py's test_pytorchcv_networks_have_...)."""
  names = ["v_1_0_SqNxt_23", "v_1_0_G_SqNxt_23"]
  with flagsaver.flagsaver(output_json=str(tmp_path / "out.json")):
    benchmark.FLAGS["configuration"].parse(",".join(names + ["sqnxt23_w1"]))  # as typed
    benchmark.main(["benchmark", "complexity"])
  printed = capsys.readouterr().out
  assert "complexity:" in printed and "| 1.0-SqNxt-23 |" in printed
  results = json.loads((tmp_path / "out.json").read_text())
  rows = {row["configuration"]: row for row in results["rows"]}
  assert list(rows) == names
  for name in names:
    published = benchmark.PUBLISHED[name]
    assert rows[name]["params"] == rows[name]["official params"] == published.params
    assert abs(float(rows[name]["MACs ratio"]) - 1.0) <= 0.005, name
  assert rows["v_1_0_SqNxt_23"]["MMACs"] == "278.0"
  assert (rows["v_1_0_SqNxt_23"]["top-1 %"], rows["v_1_0_SqNxt_23"]["top-5 %"]) == (
      "59.05", "82.60")
  assert rows["v_1_0_G_SqNxt_23"]["top-1 %"] == "-"  # the paper gives no accuracy for it
  pytorchcv, = results["sections"]
  assert pytorchcv["image_size"] == 224 and "pytorchcv" in pytorchcv["benchmark"]
  row, = pytorchcv["rows"]
  assert (row["configuration"], row["params"], row["official params"], row["top-1 %"]) == (
      "sqnxt23_w1", 724_056, 724_056, "57.49")
  with flagsaver.flagsaver(), pytest.raises(benchmark.UserError, match="tiny_SqNxt has none"):
    benchmark.FLAGS["configuration"].parse("tiny_SqNxt")
    benchmark.run_complexity()
  table = benchmark.markdown_table(results["columns"], results["rows"])
  assert table.splitlines()[2].startswith("| 1.0-SqNxt-23 | v_1_0_SqNxt_23 | 717280 | 717280 |")
  with pytest.raises(benchmark.UserError, match="sub-command"):
    benchmark.main(["benchmark", "nothing"])


def _check_speed_rows(results, inputs):
  assert results["columns"] == benchmark._SPEED_COLUMNS
  assert [row["input"] for row in results["rows"]] == inputs
  for row in results["rows"]:
    assert set(results["columns"]) <= set(row)
    assert row["network"] == "tiny_SqNxt" and row["images/s"] > 0 and row["GFLOP/s"] > 0
    assert float(row["% of matmul peak"]) > 0
  synthetic = results["rows"][0]
  assert synthetic["bare images/s"] > 0
  paired = statistics.median(r["runner"] / r["bare"] for r in synthetic["rounds"])
  assert float(synthetic["runner/bare"]) == pytest.approx(paired, rel=1e-2)
  assert results["matmul_peak_gflops"] > 0 and results["cores"] >= 1


def test_train_and_inference_run_end_to_end():
  with flagsaver.flagsaver(synthetic_jpegs=4, **SMALL):
    results = benchmark.run_train()
  _check_speed_rows(results, ["synthetic", "pipeline (caffe)"])
  assert results["notes"][-1] == results["hardware"]  # the CPU beside every table
  assert results["hardware"].startswith(f"Hardware: {results['cpu']}, {results['cores']} cores")
  if HAS_PEERS:  # tiny_SqNxt has no pytorchcv counterpart: said in one line, no peer table
    assert results["notes"][:-1] == ["tiny_SqNxt: no pytorchcv counterpart, no peer timed"]
  else:
    assert "pip install -r requirements-peers.txt" in results["notes"][0]
  assert results["rows"][0]["vs float32"] == "1.000"  # float32 against itself, same rounds
  with flagsaver.flagsaver(dtype=["bfloat16", "float32"], **SMALL):
    results = benchmark.run_inference()
  assert [row["dtype"] for row in results["rows"]] == ["bfloat16", "float32"]
  for row in results["rows"]:  # both dtypes timed in the same rounds: the ratio is paired
    _check_speed_rows({**results, "rows": [row]}, ["synthetic"])
    paired = statistics.median(r["runner"] / f["runner"] for r, f in zip(
        row["rounds"], results["rows"][1]["rounds"]))
    assert float(row["vs float32"]) == pytest.approx(paired, rel=1e-2)
  assert "sections" not in results


def test_unknown_dtype_is_a_user_error():
  with flagsaver.flagsaver(dtype=["float64"]), pytest.raises(benchmark.UserError, match="--dtype"):
    benchmark.run_train()


def test_input_compares_the_pipelines_on_the_same_files():
  with flagsaver.flagsaver(synthetic_jpegs=8, image_size=32, batch_size=2, max_images=4, rounds=1,
                           preprocessing="inception"):
    results = benchmark.run_input()
  rows = {row["pipeline"]: row for row in results["rows"]}
  names = ["decode-only (parse + decode_jpeg)", "tf.data reference (Model Garden ResNet)",
           "tf.data reference evaluation", "input_fn training", "input_fn evaluation",
           "input_fn training, tf.data service, 1 local worker",
           "input_fn training, tf.data service, 2 local workers"]
  assert list(rows)[:7] == names and results["records"] == 8
  assert rows["input_fn training"]["ratio to input_fn training"] == 1.0
  for row in rows.values():
    assert row["images/s"] > 0 and row["CPU cores per 10,000 images/s"] >= 0
  if HAS_TORCH:
    assert list(rows)[7].startswith("PyTorch DataLoader") and not results["notes"]
  else:
    assert len(rows) == len(names) and "pip install -r requirements-peers.txt" in results["notes"][0]
  printed = benchmark.format_results(results)
  assert "| input_fn training |" in printed


def test_input_without_peers_and_with_a_smaller_short_side():
  """Without PyTorch: one line says how to install it. --max_short_side: records of a smaller
  short side are timed too."""
  with flagsaver.flagsaver(synthetic_jpegs=4, image_size=32, batch_size=2, max_images=2, rounds=1,
                           max_short_side=64):
    original = benchmark._import_or_none
    benchmark._import_or_none = lambda name: None if name == "torch" else original(name)
    try:
      results = benchmark.run_input()
    finally:
      benchmark._import_or_none = original
  assert not any(row["pipeline"].startswith("PyTorch") for row in results["rows"])
  assert results["notes"] == ["PyTorch DataLoader: skipped, PyTorch not installed "
                              "(pip install -r requirements-peers.txt)"]
  rows = {row["pipeline"]: row for row in results["rows"]}
  for name in ("input_fn training, short side <= 64", "input_fn evaluation, short side <= 64"):
    assert rows[name]["images/s"] > 0


def test_pillow_transforms_crop_flip_and_normalise():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.fromarray(np.full((30, 40, 3), 200, np.uint8))
  for preprocessing in ("caffe", "inception"):
    out = benchmark.pillow_transform(image, preprocessing, 16, (123.0, 117.0, 104.0),
                                     random.Random(0))
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 5, 5], [77.0, 83.0, 96.0], atol=1.0)
  rng = random.Random(1)
  for _ in range(50):
    left, top, right, bottom = benchmark.random_resized_crop_box(40, 30, (0.05, 1.0),
                                                                 (3 / 4, 4 / 3), rng)
    assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30


def test_tfrecord_index_reads_the_framing(tmp_path):
  import data_utils  # pylint: disable=g-import-not-at-top
  path = data_utils.write_records(str(tmp_path / "r.tfrecord"),
                                  [data_utils.example(b"x" * n, 1) for n in (3, 300, 0)])
  index = benchmark.tfrecord_index([path])
  assert [length for _, _, length in index] == [
      len(data_utils.example(b"x" * n, 1).SerializeToString()) for n in (3, 300, 0)]


def test_time_attribution_shares_overlaps_and_counts_idle_time():
  ops = [(0, 10, "a"), (5, 15, "b"), (30, 40, "a"), (100, 200, "outside")]
  shares = benchmark.attribute_time(ops, [(0, 50)], lambda name: name)
  assert shares == {"a": 17.5, "b": 7.5, None: 25.0}  # 0-5 a, 5-10 a+b halves, 10-15 b, 30-40 a
  names = {"stage1_block1_conv1", "stage1_block1_relu", "head_conv"}
  assert benchmark.op_layer("model_1/stage1_block1_conv1_1/convolution", names) == (
      "stage1_block1_conv1", "forward")
  assert benchmark.op_layer("gradient_tape/model_1/head_conv_1/convolution/Conv2DBackpropInput",
                            names) == ("head_conv", "backward")
  assert benchmark.op_layer("sgd/Mul_3", names) == (None, "forward")


@pytest.mark.parametrize("mode", ["train", "inference"])
def test_layers_profiles_every_layer(tmp_path, mode):
  with flagsaver.flagsaver(mode=mode, profile_dir=str(tmp_path / "profile"), **SMALL):
    results = benchmark.run_layers()
  network = benchmark.model.build_network("tiny_SqNxt", 1000, 32)
  stats_rows, totals = benchmark.stats.model_statistics(network)
  rows = results["rows"]
  assert [row["layer"] for row in rows[:len(stats_rows)]] == [r.name for r in stats_rows]
  assert [row["layer"] for row in rows[len(stats_rows):]] == [
      benchmark._OTHER_OPS, benchmark._IDLE, "total (measured step)"]
  total = rows[-1]
  assert (total["params"], total["MACs"]) == (totals["params"], totals["macs"])
  assert sum(row["ms"] for row in rows[:-1]) == pytest.approx(total["ms"], rel=1e-6)
  assert all(row["ms"] >= 0 for row in rows)
  convolutions = [row for row in rows if row.get("type") == "GroupConv2D"]
  assert all(row["FLOP/byte"] > 0 for row in convolutions)
  # The network's intensity counts the elementwise layers' bytes too: below its convolutions'.
  assert 0 < total["FLOP/byte"] < max(row["FLOP/byte"] for row in convolutions)
  assert sum(row["ms"] for row in convolutions) > 0  # the profiler saw the convolutions
  if mode == "inference":
    assert all(row.get("backward ms", "-") == "-" for row in rows)
  kinds = results["sections"][0]["rows"]  # the rows summed by type, costliest first
  assert sum(kind["ms"] for kind in kinds) == pytest.approx(total["ms"], rel=1e-6)
  assert [kind["ms"] for kind in kinds] == sorted((kind["ms"] for kind in kinds), reverse=True)
  assert {kind["kind"] for kind in kinds} == {row.get("type", row["layer"]) for row in rows[:-1]}
  assert sum(kind["layers"] for kind in kinds) == len(stats_rows)
  assert list((tmp_path / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert "tensorboard --logdir" in results["notes"][0]


def test_layers_takes_one_network_and_dtype():
  with flagsaver.flagsaver(configuration=["tiny_SqNxt", "v_1_0_SqNxt_23"]), pytest.raises(
      benchmark.UserError, match="one network"):
    benchmark.run_layers()


@pytest.mark.skipif(not HAS_PEERS, reason="the peers are not installed")
def test_peer_step_times_pytorchcv_squeezenext():
  """Training in float32, inference with bfloat16 autocast (a bfloat16 training step is slow on
  CPU)."""
  with flagsaver.flagsaver(image_size=227, batch_size=1):
    params = benchmark.benchmark_params("v_1_0_SqNxt_23", "float32", 1)
  for mode, dtype in (("train", "float32"), ("inference", "bfloat16")):
    peer = benchmark.PeerStep(mode, "v_1_0_SqNxt_23", dtype, params)
    measures = peer.measures(steps=1, compile_too=False)
    assert list(measures) == ["peer eager"]
    best = {name: min(measure()) for name, measure in measures.items()}
    rows = peer.rows(best, project_rate=10.0)
    assert rows[0]["peer"] == "pytorchcv sqnxt23_w1" and rows[0]["peer images/s"] > 0
    assert float(rows[0]["project/peer"]) == pytest.approx(10.0 / rows[0]["peer images/s"],
                                                           rel=1e-2)


def test_hardware_note_names_the_cpu_and_the_kernels_onednn_runs():
  # One real probe: a training step of tiny_SqNxt in float32 in a child process with
  # ONEDNN_VERBOSE=1 (the other tests leave it out: onednn_probe=False).
  note = benchmark.hardware_note("tiny_SqNxt", ("float32",))
  assert note.startswith(f"Hardware: {hardware.cpu_model()}, {os.cpu_count()} cores, ")
  assert all(name in note for name, _ in hardware.CPU_FEATURES)  # each one, present or "no ..."
  # oneDNN names its convolution kernels with their instruction set (e.g. avx512_core), unless
  # TensorFlow runs its Eigen kernels on this CPU.
  assert ("float32 convolution " in note and "oneDNN v" in note) or "Eigen kernels" in note
  assert benchmark.hardware_note("tiny_SqNxt", ("float32",), probe=False) == note.split("; ")[0]


def test_kernel_isas_reads_onednn_implementation_names():
  assert hardware.kernel_isas(["brg_conv_bwd:avx512_core+brgconv_1x1:avx512_core",
                               "jit_bf16:avx512_core_bf16", "nspc_bnorm:any"]) == [
                                   "avx512_core", "avx512_core_bf16", "reference"]
