"""The faults users cause, tried on train.py as a user would: each case asserts the one-line error
(or the documented warning), no traceback, the exit status, and that nothing was lost.

The command lines of this module run in ONE real process (tests/cli_cases.py), started once for
the module by the `outcomes` fixture, so that TensorFlow's start-up is paid once: the flag and
TF_CONFIG catalogue, a non-finite loss, the schedule and params checks, and the model_dir failures
(not writable, another network, a disk full at start or while saving); only the port-in-use case
needs a process of its own. Ctrl-C uses a real `train.py` process; locks, kills and preemptions
are in test_reliability.py."""

import concurrent.futures
import glob
import json
import os
import signal
import socket
import time

import numpy as np
import pytest
import tensorflow as tf

from cli_cases import file_digests
import data_utils
from process_utils import one_error_line
from process_utils import run_cases
from process_utils import start
from process_utils import TRAIN
from tools.recipe import experiment
from tools.recipe import params as params_lib

# The tests of the shared process run on one xdist worker, which starts the process once.
cases_process = pytest.mark.xdist_group("train_cli")
# A checkpoint of tiny_SqNxt takes about 190 KB; the other files of a run (params.json,
# model_stats.csv, event files, a checkpoint's index) take less than this each.
FULL_DISK_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return data_utils.build_records(tmp_path_factory.mktemp("faults"))


def args(records, model_dir, *extra):
  return [f"--model_dir={model_dir}", f"--train_file_pattern={records.train_pattern}",
          "--configuration=tiny_SqNxt", "--image_size=32", f"--num_classes={records.num_classes}",
          "--batch_size=4", "--max_steps=4", "--steps_per_loop=2", "--save_checkpoints_steps=2",
          "--log_every_n_steps=1", "--output_train_images=false", "--precise_bn_examples=0",
          *extra]


# ------------------------------------------------------------------------------------------------
# The cases of each test, in the order the shared process runs them.

def common_flags(records, model_dir):
  return [f"--model_dir={model_dir}", f"--train_file_pattern={records.train_pattern}",
          "--configuration=tiny_SqNxt", "--image_size=32", "--num_classes=3", "--batch_size=4",
          "--max_steps=10", "--log_every_n_steps=5", "--steps_per_loop=5"]


def mismatched_checkpoint(folder):
  """A checkpoint with no variable of SqueezeNext's names."""
  checkpoint = tf.train.Checkpoint(network={"other_layer/kernel": tf.Variable([1.0])})
  return checkpoint.save(str(folder / "other" / "ckpt"))


def cli_cases(records, folder):
  """{what the single error line names: argv}; --num_cpu_devices splits the CPU before TensorFlow
  starts, so its case ("--batch_size=4") is the first of the process."""
  flags = common_flags(records, folder / "run")
  return {
      "--batch_size=4": flags + ["--num_cpu_devices=3"],
      "model_dir": flags[1:],
      "nothing-*": flags + [f"--train_file_pattern={folder}/nothing-*"],
      "v_9": flags + ["--configuration=v_9"],
      "--fine_tune_ckpt": flags + [f"--fine_tune_ckpt={folder}/none"],
      "--fine_tune_ckpt=": flags + [f"--fine_tune_ckpt={mismatched_checkpoint(folder)}"],
      # Trains until the loss is not finite: stops with an error, no checkpoint of bad weights.
      "non-finite": common_flags(records, folder / "diverged") + [
          "--max_steps=30", "--steps_per_loop=1", "--save_checkpoints_steps=3",
          "--base_learning_rate=1e30", "--warmup_start_learning_rate=1e30",
          "--precise_bn_examples=0", "--output_train_images=false"],
  }


# Flag values -> the text the single error line must hold (it names the flag the user set).
BAD_FLAGS = {
    "--num_epochs=nan": "--num_epochs=nan", "--num_epochs=inf": "--num_epochs=inf",
    "--num_epochs=-1": "--num_epochs=-1", "--keep_checkpoint_max=0": "--keep_checkpoint_max=0",
    "--seed=-1": "--seed=-1", "--num_examples_per_epoch=0": "--num_examples_per_epoch=0",
    "--base_learning_rate=-1": "--base_learning_rate=-1", "--weight_decay=-1": "--weight_decay=-1",
    "--bn_momentum=5": "--bn_momentum=5", "--num_gpus=-1": "--num_gpus=-1",
    "--image_size=100000": "--image_size=100000", "--image_size=8": "--image_size=8 is too small",
}


def bad_value_cases(records, folder):
  model_dir = folder / "run"
  cases = [args(records, model_dir, flag) for flag in BAD_FLAGS]
  cases.append(args(records, model_dir, "--warmup_steps=5", "--warmup_epochs=1"))
  service = "--data_service_address=grpc://localhost:1"  # no dispatcher there (test_data_service)
  cases += [args(records, model_dir, service), args(records, model_dir, service, "--deterministic")]
  tf_configs = ["", "{not json", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                              "task": {"type": "worker", "index": 3}})]
  cases += [{"argv": args(records, model_dir), "env": {"TF_CONFIG": c}} for c in tf_configs]
  empty = folder / "empty-00000-of-00001"
  empty.write_bytes(b"")
  cases.append(args(records, model_dir, f"--train_file_pattern={empty}"))
  compressed = folder / "train-00000-of-00001.gz"  # as TFX and Beam pipelines write them
  with tf.io.TFRecordWriter(str(compressed), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
    w.write(data_utils.example(data_utils.jpeg_bytes(), 1).SerializeToString())
  cases.append(args(records, model_dir, f"--train_file_pattern={compressed}"))
  jpeg = folder / "photo.jpg"  # images given where records are expected
  jpeg.write_bytes(data_utils.jpeg_bytes())
  cases.append(args(records, model_dir, f"--train_file_pattern={jpeg}"))
  listed = data_utils.example(data_utils.jpeg_bytes(), 1)
  listed.features.feature["image/class/label"].int64_list.value.append(2)  # two labels
  without_classes = [a for a in args(records, model_dir) if not a.startswith("--num_classes")]
  cases.append(without_classes + ["--train_file_pattern=" + data_utils.write_records(
      str(folder / "listed-00000-of-00001"), [listed])])
  return cases


def port_in_use_case(records, folder, port):
  """This task's port is in use by another process (the test's socket on `port`). A process of its
  own: a multi-worker start must come before TensorFlow starts, and a failed one leaves TensorFlow
  unusable for other cases."""
  cluster = {"worker": [f"127.0.0.1:{port}", "127.0.0.1:1"]}
  config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
  return {"argv": args(records, folder / "run"), "env": {"TF_CONFIG": config}}


def schedule_cases(records, folder):
  base = [a for a in args(records, folder / "run") if not a.startswith("--max_steps")]
  return [
      {"argv": base + ["--num_epochs=1"], "snapshot": str(folder / "run")},
      # Another image size: refused (after the warning about the validation files, at start-up).
      base + ["--num_epochs=2", "--image_size=40",
              f"--validation_file_pattern={records.train_pattern}"],
      base + ["--num_epochs=2", "--image_size=40", "--allow_params_change"],
  ]


def model_dir_cases(records, folder):
  """Not writable, trained (ckpt-2 and ckpt-4), another network, a disk that fills up while the
  checkpoint of step 6 is written."""
  blocked = folder / "a_file"  # root may write anywhere: a file in the way stands for it
  blocked.write_text("")
  run_dir = folder / "run"
  return [args(records, blocked / "run"), args(records, run_dir),
          args(records, run_dir, "--configuration=v_1_0_SqNxt_23", "--max_steps=6"),
          {"argv": args(records, run_dir, "--max_steps=6"), "max_file_bytes": FULL_DISK_BYTES}]


def other_tools_cases(records, folder):
  """Records of other tools, no --num_classes: TensorFlow Datasets' keys (0-based labels), keys of
  no known schema (refused), the same keys given by flags with 0-based labels."""
  cases = []
  for name, keys, extra in (("tfds", ("image", "label"), []), ("unknown", ("jpeg", "class"), []),
                            ("given", ("jpeg", "class"), ["--image_key=jpeg", "--label_key=class"])):
    patterns = [data_utils.foreign_records(pattern, str(folder / f"{name}-{split}-00000-of-00001"),
                                           *keys, label_shift=-1)
                for split, pattern in (("train", records.train_pattern),
                                       ("validation", records.validation_pattern))]
    argv = [a for a in args(records, folder / name, *extra) if not a.startswith("--num_classes")]
    cases.append(argv + ["--max_steps=2", f"--train_file_pattern={patterns[0]}",
                         f"--validation_file_pattern={patterns[1]}"])
  # Too few classes for the labels: found by the pass over the records, before anything is built.
  cases.append([a for a in cases[0] if not a.startswith("--model_dir")] + [
      f"--model_dir={folder / 'too_few'}", "--num_classes=2"])
  return cases


def retry_cases(records, folder):
  """A start that fails at its first batch (labels below --label_offset; the count is given, so the
  records are not read before), then the corrected command in the same model_dir."""
  failing = args(records, folder / "run", "--label_offset=2", "--num_examples_per_epoch=9")
  return [failing, args(records, folder / "run")]


def disk_full_at_start_case(records, folder):
  # Writes past 16 bytes fail, as on a full disk (EFBIG instead of ENOSPC).
  return {"argv": args(records, folder / "run"), "max_file_bytes": 16}


@pytest.fixture(scope="module")
def outcomes(records, tmp_path_factory):
  """{test: [outcome of each of its cases]}, "folder": {test: its folder}, "cli_names": the names
  of test_cli_user_errors_are_one_line's cases, "defaults": TensorFlow's reports of the process's
  kernels and allocator. Every case runs in one real process, in order, except the port-in-use case, whose
  process runs meanwhile."""
  root = tmp_path_factory.mktemp("cases")
  folders = {name: root / name for name in ("cli", "bad_values", "schedule", "model_dir",
                                            "disk_full_at_start", "other_tools", "retry")}
  for folder in folders.values():
    folder.mkdir()
  cli = cli_cases(records, folders["cli"])
  cases = {"cli": list(cli.values()), "bad_values": bad_value_cases(records, folders["bad_values"]),
           "schedule": schedule_cases(records, folders["schedule"]),
           "model_dir": model_dir_cases(records, folders["model_dir"]),
           "disk_full_at_start": [disk_full_at_start_case(records, folders["disk_full_at_start"])],
           "other_tools": other_tools_cases(records, folders["other_tools"]),
           "retry": retry_cases(records, folders["retry"])}
  with socket.socket() as taken, concurrent.futures.ThreadPoolExecutor(1) as pool:
    taken.bind(("127.0.0.1", 0))  # in use by this process until both processes end
    taken.listen()
    port_in_use = pool.submit(run_cases, "train", [
        port_in_use_case(records, folders["bad_values"], taken.getsockname()[1])])
    # The programs' defaults: an environment without TF_ENABLE_ONEDNN_OPTS, TF_CPU_ALLOCATOR_USE_BFC.
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC")}
    results, defaults = run_cases("train", [case for section in cases.values() for case in section],
                                  timeout=900, env=env, with_defaults=True)
    by_test, start_index = {"folder": folders, "cli_names": list(cli), "defaults": defaults}, 0
    for name, section in cases.items():
      by_test[name] = results[start_index:start_index + len(section)]
      start_index += len(section)
    by_test["bad_values"] += port_in_use.result()
  return by_test


# ------------------------------------------------------------------------------------------------
# The tests of the shared process.

@cases_process
def test_cli_user_errors_are_one_line(outcomes):
  folder = outcomes["folder"]["cli"]
  for name, outcome in zip(outcomes["cli_names"], outcomes["cli"], strict=True):
    assert outcome["code"] != 0 and "Traceback" not in outcome["stderr"], outcome["stderr"]
    error_lines = [l for l in outcome["stderr"].splitlines() if l.startswith(("error:", "FATAL"))]
    assert len(error_lines) == 1 and name in error_lines[0], outcome["stderr"]
  assert not (folder / "run").exists()  # nothing written
  for prefix in glob.glob(str(folder / "diverged" / "ckpt-*.index")):  # what was saved is finite
    reader = tf.train.load_checkpoint(prefix[:-len(".index")])
    for key in reader.get_variable_to_shape_map():
      if key.startswith("network/"):
        assert np.all(np.isfinite(reader.get_tensor(key))), key


@cases_process
def test_bad_values_and_tf_config_are_one_line_errors_and_write_nothing(outcomes):
  expected = list(BAD_FLAGS.values()) + [
      "warmup_epochs", "no dispatcher answers there",
      "cannot be combined with --checkpoint_input_pipeline", "TF_CONFIG", "TF_CONFIG",
      "task index 3", "no record", "GZIP-compressed",
      "damaged or not a TFRecord file (images become records with python -m "
      "scripts.build_tfrecords)", "a record's image/class/label is not one int64",
      "is the port in use"]
  assert len(outcomes["bad_values"]) == len(expected)
  for outcome, text in zip(outcomes["bad_values"], expected):
    line = one_error_line(outcome)
    assert text in line, (text, line)
    assert outcome["code"] == 2
  assert not (outcomes["folder"]["bad_values"] / "run").exists()  # nothing written by any of them


@cases_process
def test_schedule_from_the_data_overlap_warning_and_changed_params(records, outcomes):
  model_dir = outcomes["folder"]["schedule"] / "run"
  first, refused, changed = outcomes["schedule"]
  assert first["code"] == 0, first["stderr"][-3000:]
  # Without --num_examples_per_epoch the schedule counts the records (from the builder's manifest).
  assert f"{records.num_train} training examples (manifest)" in first["stderr"]
  assert f"{-(-records.num_train // 4)} steps in all" in first["stderr"]  # ceil(1 epoch / batch)
  line = one_error_line(refused)
  assert "image_size 32 -> 40" in line and "allow_params_change" in line
  warning = refused["stderr"]
  assert "share" in warning and "evaluation measures training data" in warning
  assert changed["code"] == 0, changed["stderr"][-3000:]
  # A restart on the same files takes the example count from params.json (the classes are given).
  assert ("From the earlier start's params.json (same file patterns; not counted again): "
          f"num_examples_per_epoch {records.num_train}, label_offset 1") in changed["stderr"]
  history = json.load(open(model_dir / "params.json"))["history"]
  assert len(history) == 2 and "--allow_params_change" in history[1]["argv"]
  # The first run's checkpoints (digests taken right after it) are untouched by the two others,
  # or deleted by the changed run's checkpoint rotation (the run's own files), never written over.
  first_checkpoints = {k: v for k, v in first["snapshot"].items() if k.startswith("ckpt-")}
  assert first_checkpoints
  now = file_digests(model_dir)
  for name, digest in first_checkpoints.items():
    assert now.get(name, digest) == digest, name


@cases_process
def test_records_of_other_tools_train_with_the_classes_they_hold(records, outcomes):
  folder = outcomes["folder"]["other_tools"]
  tfds, unknown, given, too_few_classes = outcomes["other_tools"]
  for outcome, model_dir, keys in ((tfds, "tfds", ("image", "label")),
                                   (given, "given", ("jpeg", "class"))):
    assert outcome["code"] == 0, outcome["stderr"][-3000:]
    assert "num_classes 3, label_offset 0: the records' labels run from 0 to 2" in outcome["stderr"]
    assert "top-1 " in outcome["stdout"] and f"on {records.num_validation} examples" in outcome[
        "stdout"]
    saved = json.load(open(folder / model_dir / "params.json"))["input"]
    assert (saved["image_key"], saved["label_key"], saved["label_offset"]) == (*keys, 0)
  line = one_error_line(unknown)
  assert "has the keys class, jpeg" in line and "image/encoded and image/class/label" in line
  assert not (folder / "unknown").exists()
  line = one_error_line(too_few_classes)
  assert "--num_classes / --label_offset: the records' labels run from 0 to 2, outside 0..1" in line
  assert not (folder / "too_few").exists()


@cases_process
def test_a_start_that_failed_before_a_checkpoint_takes_the_corrected_flags(outcomes):
  failed, corrected = outcomes["retry"]
  line = one_error_line(failed)
  assert "label 1 is outside 2..4 (num_classes=3, label_offset=2)" in line
  assert "Skipped" not in failed["stderr"]  # the records are fine: none is counted as skipped
  assert (outcomes["folder"]["retry"] / "run" / "params.json").exists()
  assert corrected["code"] == 0, corrected["stderr"][-3000:]


@cases_process
def test_model_dir_not_writable_holding_another_network_or_full_while_saving(records, outcomes):
  folder = outcomes["folder"]["model_dir"]
  run_dir = folder / "run"
  blocked, trained, other_network, disk_full = outcomes["model_dir"]
  line = one_error_line(blocked)
  assert "--model_dir" in line and "not a writable folder" in line
  assert trained["code"] == 0, trained["stderr"][-3000:]
  line = one_error_line(other_network)
  assert f"--model_dir={run_dir}" in line and "does not fit this network" in line

  # The disk filled up while the checkpoint of step 6 was written: room for the event files, not
  # for a checkpoint.
  data_file = tf.io.gfile.glob(str(run_dir / "ckpt-4.data-*"))[0]
  assert os.path.getsize(data_file) > 2 * FULL_DISK_BYTES
  line = one_error_line(disk_full)
  assert disk_full["code"] == 2
  assert "could not write the checkpoint of step 6" in line and "ckpt-4" in line
  assert not glob.glob(str(run_dir / "*_temp*")) and not glob.glob(str(run_dir / "*.tmp-*"))
  assert tf.train.latest_checkpoint(run_dir).endswith("ckpt-4")  # nothing new written
  # And it resumes (in-process: the Estimator train.py builds, on the same params).
  user = dict(configuration="tiny_SqNxt", image_size=32, num_classes=records.num_classes,
              batch_size=4, max_steps=6, steps_per_loop=2, save_checkpoints_steps=2,
              output_train_images=False, precise_bn_examples=0)
  params = params_lib.resolve_params(user, dict(train_file_pattern=records.train_pattern,
                                                num_examples_per_epoch=records.num_train))
  resumed = experiment.build_estimator(params, str(run_dir))
  resumed.restore()
  assert resumed.global_step == 4
  resumed.train(experiment.make_input_fn(params, records.train_pattern, True), 6)
  assert tf.train.latest_checkpoint(run_dir).endswith("ckpt-6")


@cases_process
def test_train_runs_onednn_kernels_unless_the_environment_says_otherwise(outcomes):
  # tools/cli/tf_env.py, imported by train.py before TensorFlow: TensorFlow's own report (no public API
  # in TF 2.21) in the process of the cases, started without TF_ENABLE_ONEDNN_OPTS. This test
  # process keeps TensorFlow's choice; TF_ENABLE_ONEDNN_OPTS=0 and the BFC allocator are tested on
  # the scripts (test_stats.py).
  assert outcomes["defaults"]["onednn"] is True
  assert outcomes["defaults"]["sklearn_skipped"] is True  # a faster start (tools/cli/tf_env.py)


@cases_process
def test_a_full_disk_at_start_is_one_line_and_leaves_no_partial_file(outcomes):
  model_dir = outcomes["folder"]["disk_full_at_start"] / "run"
  line = one_error_line(outcomes["disk_full_at_start"][0])
  assert f"--model_dir={model_dir}: cannot write there" in line
  assert not [n for n in os.listdir(model_dir) if n == "params.json" or ".tmp-" in n]


# ------------------------------------------------------------------------------------------------
# A real process of its own.

def test_ctrl_c_during_start_up_exits_130_quietly_and_writes_nothing(records, tmp_path):
  process = start([TRAIN, *args(records, tmp_path / "run")])
  time.sleep(2)  # importing TensorFlow
  process.send_signal(signal.SIGINT)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 130, output[-3000:]
  assert "Traceback" not in output and "interrupted" in output
  assert not glob.glob(str(tmp_path / "run" / "*"))
