"""Tests of tools/recipe/stats.py: per-layer parameters and MACs, CSV output, and the command line."""

import csv
import os

import pytest

import model
import process_utils
from tools.recipe import stats

# The five official networks' totals are tested in test_model.py, which builds them once.


def tiny_rows(configuration="tiny_SqNxt", num_classes=10):
  rows, totals = stats.model_statistics(model.build_network(configuration, num_classes, 32))
  return {r.name: r for r in rows}, totals


def test_per_layer_rows():
  rows, totals = tiny_rows()
  # stem: 7x7/2 valid on 32 -> 13x13x16; 7*7*3*16 weights, each used at 13*13 positions.
  assert rows["stem_conv"] == stats.LayerStats("stem_conv", "GroupConv2D", "7x7", "2x2", 1,
                                               "13x13x16", 2352, 13 * 13 * 2352)
  # BN: gamma and beta only (moving mean, variance and count excluded), no MACs.
  assert (rows["stem_bn"].params, rows["stem_bn"].macs) == (32, 0)
  assert rows["stem_pool"].output_shape == "6x6x16"  # Caffe ceil mode: ceil((13 - 3) / 2) + 1
  assert (rows["stage1_block1_conv3"].kernel, rows["stage1_block1_conv4"].kernel) == ("3x1", "1x3")
  assert rows["classifier"] == stats.LayerStats("classifier", "Dense", "", "", 1, "10", 320, 320)
  assert "image" not in rows
  assert totals == {"params": sum(r.params for r in rows.values()),
                    "macs": sum(r.macs for r in rows.values())}


def test_grouped_convolutions_count_one_group_of_inputs():
  grouped = model.SqueezeNextConfig((8, 16, 32, 64), (1, 1, 1, 1), stem_kernel=7, groups=2,
                                    stem_channels=16, head_channels=32)
  plain, _ = tiny_rows()
  rows, _ = tiny_rows(grouped)
  for name in ("stage2_block1_conv1", "stage2_block1_conv3", "stage2_block1_conv4"):
    assert rows[name].groups == 2 and plain[name].groups == 1
    assert 2 * rows[name].params == plain[name].params
    assert 2 * rows[name].macs == plain[name].macs
  assert rows["stage2_block1_conv2"] == plain["stage2_block1_conv2"]


def test_write_csv_is_complete_and_replaces(tmp_path):
  rows, _ = stats.model_statistics(model.build_network("tiny_SqNxt", 10, 32))
  path = tmp_path / "model_stats.csv"
  path.write_text("old content\n")
  stats.write_csv(rows, str(path))
  with open(path, newline="") as f:
    written = list(csv.DictReader(f))
  assert tuple(written[0]) == stats.COLUMNS
  assert [(r["name"], int(r["params"]), int(r["macs"])) for r in written] == [
      (r.name, r.params, r.macs) for r in rows]
  assert os.listdir(tmp_path) == ["model_stats.csv"]  # no temporary file left behind


@pytest.fixture(scope="module")
def command_line(tmp_path_factory):
  """One real process runs the four command lines (tests/cli_cases.py), with
  TF_ENABLE_ONEDNN_OPTS=0 in its environment: ({key: outcome}, csv path, TensorFlow's reports of
  its kernels and allocator)."""
  csv_path = str(tmp_path_factory.mktemp("stats") / "stats.csv")
  keys = ["ok", "name", "classes", "size"]
  without_allocator_choice = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
  outcomes, defaults = process_utils.run_cases("scripts.stats", [
      ["--configuration", "tiny_SqNxt", "--image_size", "32", "--num_classes", "10",
       "--csv", csv_path],
      ["--configuration", "SqNxt_99"],
      ["--configuration", "tiny_SqNxt", "--num_classes", "1"],
      ["--configuration", "v_1_0_SqNxt_23_v5", "--image_size", "8"]],
      env={**without_allocator_choice, "TF_ENABLE_ONEDNN_OPTS": "0"}, with_defaults=True)
  return dict(zip(keys, outcomes)), csv_path, defaults


# The tests of the command-line process run on one xdist worker, which starts it once.
@pytest.mark.xdist_group("stats_command_line")
def test_command_line(command_line):
  outcomes, csv_path, _ = command_line
  ok = outcomes["ok"]
  assert ok["code"] == 0, ok["stderr"][-2000:]
  _, totals = tiny_rows()
  lines = ok["stdout"].strip().splitlines()
  assert lines[-1] == f"params={totals['params']} macs={totals['macs']}"
  assert lines[0].split() == list(stats.COLUMNS) and "stem_conv" in lines[1]
  assert os.path.exists(csv_path)

  expected = {"name": ["'SqNxt_99'", "v_1_0_SqNxt_23", "v_2_0_SqNxt_23_v5"],
              "classes": ["num_classes=1", ">= 2"],
              "size": ["image_size=8", ">= 9"]}
  for key, words in expected.items():
    error = process_utils.one_error_line(outcomes[key])
    assert outcomes[key]["code"] == 2, (key, outcomes[key]["stderr"][-2000:])
    assert all(w in error for w in words), error
    assert "params=" not in outcomes[key]["stdout"]


@pytest.mark.xdist_group("stats_command_line")
def test_programs_keep_tensorflows_kernels_when_the_environment_says_so(command_line):
  # tools/cli/tf_env.py, imported by the scripts package before TensorFlow, turns oneDNN's kernels on
  # unless TF_ENABLE_ONEDNN_OPTS is set: with TF_ENABLE_ONEDNN_OPTS=0 TensorFlow's own choice stays
  # (its own report; on this project's AVX2 CPUs, the Eigen kernels). The default is tested on
  # train.py (test_user_faults.py). The same file's BFC allocator for CPU memory: the Eigen kernels'
  # default allocator keeps no statistics, the BFC allocator does (TensorFlow's own report).
  assert command_line[2] == {"onednn": False, "allocator_stats": True, "sklearn_skipped": True}
