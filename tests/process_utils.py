"""Helpers for tests that run the project's command-line programs as real processes."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")


def free_ports(count):
  """`count` distinct TCP ports on 127.0.0.1 that are free now (for TF_CONFIG clusters of local
  workers). The sockets stay open until all are chosen, so the ports differ."""
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def run(args, env=None, timeout=300, preexec_fn=None):
  """Runs `python args...` from the repository root; returns the CompletedProcess (text output).

  `preexec_fn` runs in the child before Python starts (e.g. to set a resource limit)."""
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=env, preexec_fn=preexec_fn)


def start(args, env=None):
  """Starts `python args...` with stderr merged into a text stdout pipe; returns the Popen."""
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)


def run_cases(module, cases, timeout=300, env=None, with_defaults=False):
  """Runs `module`'s main for each case in one real process (tests/cli_cases.py).

  Args:
    module: "train", "scripts.predict", ...
    cases: list of argv lists, or of {"argv": [...], "env": {...}} dicts.
    timeout: seconds the process may take.
    env: the process's environment (default: this one's).
    with_defaults: also return TensorFlow's reports of the process's CPU kernels and allocator.
  Returns:
    list of {"code", "stdout", "stderr"}, one per case; with `with_defaults`, (that list,
    {"onednn": bool, "allocator_stats": bool}) (tests/cli_cases.py).
  """
  cases = [c if isinstance(c, dict) else {"argv": c} for c in cases]
  result = subprocess.run([sys.executable, "-m", "tests.cli_cases", module], cwd=ROOT, env=env,
                          input=json.dumps(cases), capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  return (report["outcomes"], report["defaults"]) if with_defaults else report["outcomes"]


def one_error_line(outcome):
  """The single `error:` line of a failed run's stderr; asserts no traceback and a non-zero status."""
  assert outcome["code"] != 0 and "Traceback" not in outcome["stderr"], outcome["stderr"][-3000:]
  lines = [l for l in outcome["stderr"].splitlines() if l.startswith("error:")]
  assert len(lines) == 1, outcome["stderr"][-3000:]
  return lines[0]
