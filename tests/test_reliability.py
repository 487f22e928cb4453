"""A killed or preempted run, a damaged checkpoint or a dead worker loses nothing, and one run at a
time holds a model_dir: the processes are real `train.py` runs on small records (tiny_SqNxt at
32x32), stopped and killed with real signals."""

import glob
import json
import os
import random
import signal

import numpy as np
import pytest
import tensorflow as tf

import data_utils
from process_utils import free_ports
from process_utils import one_error_line
from process_utils import run
from process_utils import start
from process_utils import TRAIN


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return data_utils.build_records(tmp_path_factory.mktemp("reliability"))


def flags_for(records, model_dir, max_steps=30, *extra):
  return [TRAIN, f"--model_dir={model_dir}",
          f"--train_file_pattern={records.train_pattern}", "--configuration=tiny_SqNxt",
          "--image_size=32", f"--num_classes={records.num_classes}", "--batch_size=4",
          f"--max_steps={max_steps}", "--log_every_n_steps=1", "--steps_per_loop=1",
          "--save_checkpoints_steps=3", "--base_learning_rate=0.05", "--warmup_steps=2",
          "--output_train_images=false", "--precise_bn_examples=0", *extra]


def wait_for_step(process, step, log):
  """Reads the process's log until it reports `step` (or a later one); returns the step seen."""
  for line in process.stdout:
    log.append(line)
    if " step " in line and "/" in line.split(" step ")[1]:
      seen = int(line.split(" step ")[1].split("/")[0])
      if seen >= step:
        return seen
  raise AssertionError("".join(log[-30:]))


def network_weights(model_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith("network/")}


def checkpoint_step(model_dir):
  return int(os.path.basename(tf.train.latest_checkpoint(model_dir)).split("-")[1])


def file_bytes(folder, prefix="ckpt-"):
  """{name: bytes} of the files directly in `folder` whose name starts with `prefix`."""
  return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)
          if name.startswith(prefix) and os.path.isfile(os.path.join(folder, name))}


def test_killed_and_preempted_runs_end_with_the_uninterrupted_weights(records, tmp_path):
  # One run stopped three times at random steps after its second checkpoint, then a last start to
  # the end, against a run never interrupted: bitwise the same weights. Precise BN on (the last
  # flag wins): the final checkpoints hold recomputed statistics too. All checkpoints are kept, so
  # that none is seen deleted as written over.
  deterministic = ["--deterministic", "--checkpoint_input_pipeline", "--seed=7",
                   "--precise_bn_examples=40", "--keep_checkpoint_max=10"]
  args = lambda folder: flags_for(records, tmp_path / folder, 20, *deterministic)
  model_dir = tmp_path / "killed"
  reference = start(args("reference"))  # meanwhile:
  # After ckpt-6 (two checkpoints to choose from) and a few steps before the end (the last stop
  # must find the run alive).
  kill_at, preempt_at, stop_at = sorted(random.Random(0).sample(range(7, 17), 3))

  # 1. SIGKILL; then its newest checkpoint is damaged, as by a save killed half-way.
  process = start(args("killed"))
  wait_for_step(process, kill_at, [])
  process.send_signal(signal.SIGKILL)
  process.communicate(timeout=120)
  damaged = checkpoint_step(model_dir)
  previous = max(int(name.split("-")[1].split(".")[0]) for name in file_bytes(model_dir)
                 if not name.startswith(f"ckpt-{damaged}."))
  for data_file in glob.glob(f"{model_dir}/ckpt-{damaged}.data-*"):
    with open(data_file, "r+b") as f:
      f.truncate(os.path.getsize(data_file) // 2)

  # 2. It resumes at the checkpoint before the damaged one; SIGTERM (a preemption) writes a
  # checkpoint at the step reached and exits 0.
  process, log = start(args("killed")), []
  wait_for_step(process, preempt_at, log)
  process.send_signal(signal.SIGTERM)
  log = "".join(log) + process.communicate(timeout=120)[0]
  assert f"ckpt-{damaged} is unreadable" in log, log[-3000:]
  assert f"ckpt-{previous} (global step {previous}), the newest readable checkpoint" in log
  assert process.returncode == 0 and "Stopped by SIGTERM" in log, log[-3000:]
  preempted = checkpoint_step(model_dir)
  assert preempted >= preempt_at

  # 3. Restored at the preempted step and continued at the next one. One run per model_dir: stopped
  # (SIGSTOP) while it holds the lock, a second start on its model_dir is refused in one line; the
  # checkpoint state file is lost; SIGKILL leaves the lock file behind.
  process, log = start(args("killed")), []
  wait_for_step(process, stop_at, log)
  assert f"global step {preempted})" in "".join(log), "".join(log)[-3000:]
  assert f"step {preempted + 1}/20" in "".join(log), "".join(log)[-3000:]
  process.send_signal(signal.SIGSTOP)  # alive and holding the lock, but training no further
  try:
    second = run(args("killed"), timeout=60)  # refused at start-up, not after a wait
    line = one_error_line({"code": second.returncode, "stderr": second.stderr})
    assert f"--model_dir={model_dir} is in use by process {process.pid}" in line
    os.remove(model_dir / "checkpoint")  # the checkpoint state file, lost mid-run
  finally:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=120)

  # 4. The last start takes over the stale lock, resumes at the newest checkpoint file (not the
  # first) and writes over none of the older ones.
  before = file_bytes(model_dir)
  newest = max(int(name.split("-")[1].split(".")[0]) for name in before)
  final = run(args("killed"))
  assert final.returncode == 0, final.stderr[-3000:]
  assert "Taking over the lock" in final.stderr and "Restored" in final.stderr
  assert "state file is missing or unreadable" in final.stderr
  assert f"ckpt-{newest} (global step {newest})" in final.stderr  # the newest, not the first
  for name, content in before.items():
    assert open(model_dir / name, "rb").read() == content, name
  reference_log = reference.communicate(timeout=300)[0]
  assert reference.returncode == 0, reference_log[-3000:]

  expected, actual = network_weights(tmp_path / "reference"), network_weights(model_dir)
  assert expected.keys() == actual.keys()
  for key in expected:
    np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)  # bitwise


def final_loss(log, step):
  """The loss of the progress line of `step` in a log."""
  return [line.split(" loss ")[1].split()[0] for line in log.splitlines() if f" step {step}/" in line]


def test_a_dead_worker_stops_the_other_and_both_resume_in_lock_step(records, tmp_path):
  cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
  def env(index):
    return dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster,
                                                  "task": {"type": "worker", "index": index}}))
  args = flags_for(records, tmp_path, 100000)  # a checkpoint every 3 steps
  chief, worker = start(args, env(0)), start(args, env(1))
  wait_for_step(worker, 4, [])  # past the first checkpoint
  worker.send_signal(signal.SIGKILL)
  output, _ = chief.communicate(timeout=120)  # stops by itself, in the heartbeat's time (~18 s)
  worker.wait()
  assert chief.returncode != 0
  assert "error: lost contact with another worker" in output, output[-3000:]
  assert "Traceback" not in output
  last = checkpoint_step(tmp_path)

  # Restarted, both resume from the chief's last checkpoint and train 3 steps in lock-step.
  args = flags_for(records, tmp_path, last + 3)
  chief, worker = start(args, env(0)), start(args, env(1))
  outputs = [chief.communicate(timeout=300)[0], worker.communicate(timeout=300)[0]]
  assert [chief.returncode, worker.returncode] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert all(f"global step {last})" in output for output in outputs)
  losses = [final_loss(output, last + 3) for output in outputs]
  assert losses[0] and losses[0] == losses[1]  # the same all-reduced loss at the same step
  assert tf.train.latest_checkpoint(tmp_path).endswith(f"ckpt-{last + 3}")  # by the chief
  assert not glob.glob(str(tmp_path / ".worker_*" / "*"))  # the other worker's copy is removed
