"""Runs many command lines of one program in ONE Python process, for the one-line-error catalogue:
a real process (exit status, stderr, no traceback) without paying TensorFlow's start-up per case.

  python -m tests.cli_cases MODULE < cases.json > results.json   (from the repository's root)

cases.json: a list of {"argv": [...], "env": {...}, "max_file_bytes": N, "snapshot": DIR} (env:
variables set for that case only, None removes one; max_file_bytes, optional: during that case no
file can grow beyond N bytes, as on a full disk: RLIMIT_FSIZE with SIGXFSZ ignored, so writes fail
with EFBIG; snapshot, optional: after the case, the outcome's "snapshot" holds {name: SHA-256 hex}
of the files directly in DIR, for a later case's "nothing was written over" check).
results.json: {"outcomes": [...], "defaults": {...}}: outcomes, one {"code": int, "stderr": str,
"stdout": str} per case ("code" is the exit status the program would have had, and "stderr" holds
"Traceback" when main raised); defaults, TensorFlow's own reports of the process's CPU kernels
("onednn": bool) and of its CPU allocator ("allocator_stats": bool, True when the allocator keeps
statistics: the BFC allocator and oneDNN's do, the Eigen kernels' default does not), the programs'
defaults of tools/cli/tf_env.py, so that their tests need no process of their own.
Used by tests/process_utils.run_cases; the cases should fail (or finish) before training starts.
"""

import contextlib
import hashlib
import importlib
import io
import json
import os
import resource
import signal
import sys
import traceback

from absl import flags
from absl import logging



@contextlib.contextmanager
def file_size_limit(max_file_bytes):
  """Writes past `max_file_bytes` fail (EFBIG) inside the block; no limit for None."""
  if max_file_bytes is None:
    yield
    return
  previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, previous_limit[1]))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
    signal.signal(signal.SIGXFSZ, previous_handler)


def run_case(module, argv, env, max_file_bytes=None):
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update({k: v for k, v in env.items() if v is not None})
  for k in (k for k, v in env.items() if v is None):
    os.environ.pop(k, None)
  out, err = io.StringIO(), io.StringIO()
  code = 0
  handler = logging.get_absl_handler().python_handler
  saved_stream, handler.stream = handler.stream, err  # absl's log lines too
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), file_size_limit(
      max_file_bytes):
    try:
      flags.FLAGS.unparse_flags()
      sys.argv = [module.__file__, *argv]
      rest = flags.FLAGS([module.__name__, *argv])
      logging.set_verbosity(logging.INFO)  # parsing reset it
      code = module.cli._main_with_user_errors(module.main)(rest) or 0  # pylint: disable=protected-access
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
    except flags.Error as e:
      print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
      code = 1
    except Exception:  # pylint: disable=broad-except
      traceback.print_exc()
      code = 1
  handler.stream = saved_stream
  for k, v in saved.items():
    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
  return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main():
  module = importlib.import_module(sys.argv[1])
  module.define_flags()
  logging.use_absl_handler()  # as absl.app.run does: log lines in absl's format
  cases = json.load(sys.stdin)
  outcomes = []
  for c in cases:
    outcomes.append(run_case(module, c["argv"], c.get("env", {}), c.get("max_file_bytes")))
    if c.get("snapshot"):
      outcomes[-1]["snapshot"] = file_digests(c["snapshot"])
  json.dump({"outcomes": outcomes, "defaults": tensorflow_defaults()}, sys.stdout)


def file_digests(folder):
  """{name: SHA-256 hex} of the files directly in `folder`."""
  digests = {}
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      with open(path, "rb") as f:
        digests[name] = hashlib.sha256(f.read()).hexdigest()
  return digests


def tensorflow_defaults():
  """{"onednn": bool, "allocator_stats": bool, "sklearn_skipped": bool}: TensorFlow's reports
  (module docstring); allocator_stats is None when TensorFlow cannot start after the cases (a case's
  TF_CONFIG). sklearn_skipped: Keras's scikit-learn wrappers, imported with TensorFlow, found no
  scikit-learn, which is installed and importable (tools/cli/tf_env.py)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from keras.src.wrappers import fixes  # pylint: disable=import-outside-toplevel
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-direct-tensorflow-import,import-outside-toplevel
  sklearn_skipped = fixes.sklearn is None and importlib.util.find_spec("sklearn") is not None
  try:
    allocator_stats = bool(tf.config.experimental.get_memory_info("CPU:0"))
  except ValueError:  # "Allocator stats not available"
    allocator_stats = False
  except tf.errors.OpError:
    allocator_stats = None
  return {"onednn": bool(_pywrap_util_port.IsMklEnabled()), "allocator_stats": allocator_stats,
          "sklearn_skipped": sklearn_skipped}


if __name__ == "__main__":
  main()
