"""The faults users cause, tried on train.py as a user would: each case asserts the one-line error
(or the documented warning), no traceback, the exit status, and that nothing was lost.

The one-line cases run in one real process (tests/cli_cases.py); locks, kills and signals use real
`train.py` processes."""

import glob
import json
import os
import signal
import socket
import time

import pytest

import data_utils
from process_utils import one_error_line
from process_utils import run
from process_utils import run_cases
from process_utils import start
from process_utils import TRAIN


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return data_utils.build_records(tmp_path_factory.mktemp("faults"))


def args(records, model_dir, *extra):
  return [f"--model_dir={model_dir}", f"--train_file_pattern={records.train_pattern}",
          "--configuration=tiny_SqNxt", "--image_size=32", f"--num_classes={records.num_classes}",
          "--batch_size=4", "--max_steps=4", "--steps_per_loop=2", "--save_checkpoints_steps=2",
          "--log_every_n_steps=1", "--output_train_images=false", "--precise_bn_examples=0",
          *extra]


def file_bytes(folder):
  """{name: bytes} of every file directly in `folder`."""
  return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)
          if os.path.isfile(os.path.join(folder, name))}


# Flag values -> the text the single error line must hold (it names the flag the user set).
BAD_FLAGS = {
    "--num_epochs=nan": "--num_epochs=nan", "--num_epochs=inf": "--num_epochs=inf",
    "--num_epochs=-1": "--num_epochs=-1", "--keep_checkpoint_max=0": "--keep_checkpoint_max=0",
    "--seed=-1": "--seed=-1", "--num_examples_per_epoch=0": "--num_examples_per_epoch=0",
    "--base_learning_rate=-1": "--base_learning_rate=-1", "--weight_decay=-1": "--weight_decay=-1",
    "--bn_momentum=5": "--bn_momentum=5", "--num_gpus=-1": "--num_gpus=-1",
    "--image_size=100000": "--image_size=100000",
}


def test_bad_values_and_tf_config_are_one_line_errors_and_write_nothing(records, tmp_path):
  model_dir = tmp_path / "run"
  cases = [args(records, model_dir, flag) for flag in BAD_FLAGS]
  cases.append(args(records, model_dir, "--warmup_steps=5", "--warmup_epochs=1"))
  service = "--data_service_address=grpc://localhost:1"  # no dispatcher there (test_data_service)
  cases += [args(records, model_dir, service), args(records, model_dir, service, "--deterministic")]
  tf_configs = ["", "{not json", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                              "task": {"type": "worker", "index": 3}})]
  cases += [{"argv": args(records, model_dir), "env": {"TF_CONFIG": c}} for c in tf_configs]
  empty = tmp_path / "empty-00000-of-00001"
  empty.write_bytes(b"")
  cases.append(args(records, model_dir, f"--train_file_pattern={empty}"))
  outcomes = run_cases("train", cases)
  with socket.socket() as taken:  # this task's port is in use by another process
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cluster = {"worker": [f"127.0.0.1:{taken.getsockname()[1]}", "127.0.0.1:1"]}
    # A process of its own: a failed multi-worker start leaves TensorFlow unusable for other cases.
    config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    outcomes += run_cases("train", [{"argv": args(records, model_dir),
                                     "env": {"TF_CONFIG": config}}])
  expected = list(BAD_FLAGS.values()) + [
      "warmup_epochs", "no dispatcher answers there",
      "cannot be combined with --checkpoint_input_pipeline", "TF_CONFIG", "TF_CONFIG",
      "task index 3", "no record", "is the port in use"]
  assert len(outcomes) == len(expected)
  for outcome, text in zip(outcomes, expected):
    line = one_error_line(outcome)
    assert text in line, (text, line)
    assert outcome["code"] == 2
  assert not model_dir.exists()  # nothing written by any of them


def test_schedule_from_the_data_overlap_warning_and_changed_params(records, tmp_path):
  model_dir = tmp_path / "run"
  base = [a for a in args(records, model_dir) if not a.startswith("--max_steps")]
  outcomes = run_cases("train", [
      base + ["--num_epochs=1"],
      # Another image size: refused (after the warning about the validation files, at start-up).
      base + ["--num_epochs=2", "--image_size=40",
              f"--validation_file_pattern={records.train_pattern}"],
      base + ["--num_epochs=2", "--image_size=40", "--allow_params_change"],
  ])
  first = outcomes[0]
  assert first["code"] == 0, first["stderr"][-3000:]
  # Without --num_examples_per_epoch the schedule counts the records (from the builder's manifest).
  assert f"{records.num_train} training examples (manifest)" in first["stderr"]
  assert f"{-(-records.num_train // 4)} steps in all" in first["stderr"]  # ceil(1 epoch / batch)
  checkpoints = file_bytes(model_dir)
  line = one_error_line(outcomes[1])
  assert "image_size 32 -> 40" in line and "allow_params_change" in line
  warning = outcomes[1]["stderr"]
  assert "share" in warning and "evaluation measures training data" in warning
  assert outcomes[2]["code"] == 0, outcomes[2]["stderr"][-3000:]
  history = json.load(open(model_dir / "params.json"))["history"]
  assert len(history) == 2 and "--allow_params_change" in history[1]["argv"]
  for name, content in checkpoints.items():  # the first run's checkpoints are untouched
    if name.startswith("ckpt-"):
      assert open(model_dir / name, "rb").read() == content, name


def wait_for_step(process, step, log):
  for line in process.stdout:
    log.append(line)
    if " step " in line and "/" in line.split(" step ")[1]:
      if int(line.split(" step ")[1].split("/")[0]) >= step:
        return
  raise AssertionError("".join(log[-30:]))


def test_one_run_per_model_dir_then_a_stale_lock_and_a_lost_state_file_resume(records, tmp_path):
  long_run = args(records, tmp_path, "--max_steps=100000", "--steps_per_loop=1")
  first, log = start([TRAIN, *long_run]), []
  wait_for_step(first, 7, log)  # ckpt-2, -4 and -6 at least
  first.send_signal(signal.SIGSTOP)  # alive and holding the lock, but training no further
  try:
    started = time.time()
    second = run([TRAIN, *long_run])
    assert time.time() - started < 60
    line = one_error_line({"code": second.returncode, "stderr": second.stderr})
    assert f"--model_dir={tmp_path} is in use by process {first.pid}" in line
    os.remove(tmp_path / "checkpoint")  # the checkpoint state file, lost mid-run
  finally:
    first.send_signal(signal.SIGKILL)  # its lock file is left behind
    first.wait()
  before = {name: content for name, content in file_bytes(tmp_path).items()
            if name.startswith("ckpt-")}
  newest = max(int(name.split("-")[1].split(".")[0]) for name in before)
  third = run([TRAIN, *args(records, tmp_path, f"--max_steps={newest + 2}")])
  assert third.returncode == 0, third.stderr[-3000:]
  assert "Taking over the lock" in third.stderr and "Restored" in third.stderr
  assert "state file is missing or unreadable" in third.stderr
  assert f"ckpt-{newest} (global step {newest})" in third.stderr  # the newest, not the first
  for name, content in before.items():
    assert open(tmp_path / name, "rb").read() == content, name


def test_ctrl_c_during_start_up_exits_130_quietly_and_writes_nothing(records, tmp_path):
  process = start([TRAIN, *args(records, tmp_path / "run")])
  time.sleep(2)  # importing TensorFlow
  process.send_signal(signal.SIGINT)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 130, output[-3000:]
  assert "Traceback" not in output and "interrupted" in output
  assert not glob.glob(str(tmp_path / "run" / "*"))
