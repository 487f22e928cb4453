"""tf.data service on loopback: a dispatcher and two workers, real `scripts.data_service` processes
on 127.0.0.1, run the training input pipeline of this process, alone and in a training run as
`train.py` makes it (experiment.run)."""

import collections
import math
import subprocess
import sys
import time

import pytest

import data_utils
import dataloader
from tools.recipe import experiment
from tools.recipe import params as params_lib
from process_utils import free_ports
from process_utils import one_error_line
from process_utils import ROOT
from process_utils import run_cases


# One worker starts the module's service (dispatcher and workers) once for all these tests.
pytestmark = pytest.mark.xdist_group("data_service")


def _start(args, log_path):
  """Starts `python -m scripts.data_service args...` (output to log_path); returns the Popen."""
  return subprocess.Popen([sys.executable, "-m", "scripts.data_service", *args], cwd=ROOT,
                          stdout=open(log_path, "w"), stderr=subprocess.STDOUT, text=True)


def _wait_until_listening(process, log_path):
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None:
    if "listening on port" in open(log_path).read():
      return
    time.sleep(0.2)
  raise AssertionError(open(log_path).read()[-3000:])


@pytest.fixture(scope="module")
def service(tmp_path_factory):
  """(address, worker log paths) of a dispatcher with two workers, stopped after the module. The
  three start together (the workers retry until the dispatcher answers)."""
  logs = tmp_path_factory.mktemp("service")
  port = free_ports(1)[0]
  names = ["dispatcher", "worker0", "worker1"]
  roles = [["dispatcher", f"--port={port}"]] + [
      ["worker", f"--dispatcher_address=localhost:{port}", "--port=0"]] * 2
  processes = [_start(role, logs / f"{name}.log") for role, name in zip(roles, names)]
  try:
    for process, name in zip(processes, names):
      _wait_until_listening(process, logs / f"{name}.log")
    yield f"grpc://localhost:{port}", [logs / f"{name}.log" for name in names[1:]]
  finally:
    for process in processes:
      process.kill()
      process.wait()


def test_both_workers_feed_every_record_and_log_the_skipped_ones(service, tmp_path):
  address, worker_logs = service
  good = [data_utils.example(data_utils.jpeg_bytes(value=40 * k), label=k) for k in range(1, 7)]
  bad = data_utils.example(b"\xff\xd8\xff" + b"not a JPEG" * 20, label=1)
  path = data_utils.write_records(str(tmp_path / "train"), [*good[:3], bad, *good[3:]])
  params = dataloader.InputParams(data_service_address=address)
  dataset = dataloader.input_fn(path, True, params, 16, 4, num_classes=6).take(24)  # 16 epochs
  counts = collections.Counter(int(c) for _, labels in dataset for c in labels["class_idx"].numpy())
  # Each worker sends whole shuffled epochs, the last one maybe cut: every record alike, +-2.
  assert sorted(counts) == list(range(6)) and max(counts.values()) - min(counts.values()) <= 2
  deadline = time.time() + 30  # the workers' tf.print lines reach their logs soon after
  while time.time() < deadline and not any(
      "dataloader: skipped" in open(log).read() for log in worker_logs):
    time.sleep(0.5)
  assert any("dataloader: skipped [1] record(s)" in open(log).read() and path in open(log).read()
             for log in worker_logs)


def test_a_training_run_through_the_service_runs_as_a_local_one(service, tmp_path):
  # experiment.run, as train.py runs it (the local pipeline's own tests are in test_train.py): every
  # step, a finite loss, and an evaluation (local, exact) that counts every validation record once.
  records = data_utils.build_records(tmp_path / "data")
  user = dict(configuration="tiny_SqNxt", image_size=32, num_classes=records.num_classes,
              batch_size=4, max_steps=6, output_train_images=False, precise_bn_examples=0,
              data_service_address=service[0])
  data = dict(train_file_pattern=records.train_pattern, num_examples_per_epoch=records.num_train,
              validation_file_pattern=records.validation_pattern)
  params = params_lib.resolve_params(user, data)
  results = experiment.run(experiment.build_estimator(params, str(tmp_path / "served")), params)
  assert results["global_step"] == 6 and math.isfinite(results["loss"])
  assert results["num_examples"] == records.num_validation


def test_bad_service_command_lines_are_one_line_errors():
  # train.py's --data_service_address errors are in test_user_faults.py's one-process catalogue.
  for outcome in run_cases("scripts.data_service", [[], ["worker"], ["dispatcher", "--port=70000"]]):
    one_error_line(outcome)
