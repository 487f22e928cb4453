"""Tests of scripts/benchmark.py: complexity, train and inference sub-commands (no timing asserted)."""

from absl import flags
from absl.testing import flagsaver
import pytest

from scripts import benchmark

FLAGS = flags.FLAGS


@pytest.fixture(autouse=True)
def parsed_flags():
  """benchmark's flags at their defaults (as if run without options); restored after each test."""
  if not FLAGS.is_parsed():
    FLAGS.mark_as_parsed()
  with flagsaver.flagsaver():
    yield


def test_complexity_matches_the_official_figures():
  results = benchmark.run_complexity()
  rows = {row["configuration"]: row for row in results["rows"]}
  assert list(rows) == list(benchmark.PUBLISHED)  # the five official networks, in order
  for name, published in benchmark.PUBLISHED.items():
    assert rows[name]["params"] == rows[name]["official params"] == published.params
    assert abs(float(rows[name]["MACs ratio"]) - 1.0) <= 0.005, name
  assert rows["v_1_0_SqNxt_23"]["MMACs"] == "278.0"
  assert (rows["v_2_0_SqNxt_23_v5"]["top-1 %"], rows["v_2_0_SqNxt_23_v5"]["top-5 %"]) == (
      "67.44", "88.20")
  assert rows["v_1_0_G_SqNxt_23"]["top-1 %"] == "-"  # the paper gives no accuracy for it
  table = benchmark.markdown_table(results["columns"], results["rows"])
  assert table.splitlines()[2].startswith("| 1.0-SqNxt-23 | v_1_0_SqNxt_23 | 717280 | 717280 |")


def _check_speed_rows(results, inputs):
  assert results["columns"] == benchmark._SPEED_COLUMNS
  assert [row["input"] for row in results["rows"]] == inputs
  for row in results["rows"]:
    assert set(results["columns"]) <= set(row)
    assert row["network"] == "tiny_SqNxt" and row["images/s"] > 0 and row["GFLOP/s"] > 0
    assert float(row["% of matmul peak"]) > 0
  synthetic = results["rows"][0]
  assert synthetic["bare images/s"] > 0
  assert float(synthetic["runner/bare"]) == pytest.approx(
      synthetic["images/s"] / synthetic["bare images/s"], rel=1e-2)
  assert results["matmul_peak_gflops"] > 0 and results["cores"] >= 1


def test_train_and_inference_run_end_to_end():
  small = dict(configuration=["tiny_SqNxt"], image_size=32, batch_size=4, steps=2, rounds=1,
               matmul_size=128)
  with flagsaver.flagsaver(synthetic_jpegs=4, **small):
    _check_speed_rows(benchmark.run_train(), ["synthetic", "pipeline (caffe)"])
  with flagsaver.flagsaver(dtype=["bfloat16"], **small):
    results = benchmark.run_inference()
  _check_speed_rows(results, ["synthetic"])
  assert results["rows"][0]["dtype"] == "bfloat16"


def test_unknown_dtype_is_a_user_error():
  with flagsaver.flagsaver(dtype=["float64"]), pytest.raises(benchmark.UserError, match="--dtype"):
    benchmark.run_train()
