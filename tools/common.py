"""Small facilities every part of the library shares: the user-error type, the declaration of a
hyperparameter (`param`), atomic writes, a progress reporter, one-line error text and the image file
extensions.

One place for each: the library (model.py, dataloader.py, estimator/, tools/) and the programs
(train.py, scripts/) import them from here; nothing here reads flags.
"""

import contextlib
import dataclasses
import datetime
import math
import os
import re
import shutil
import time

from absl import logging

# What a folder of images is searched for (case-insensitive): the formats the input pipeline and the
# record builder decode (GIF: its first frame).
# The repository's root (programs run from it; assets/ and the child processes' cwd).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class UserError(ValueError):
  """Bad input from the user: a parameter value, a file or pattern, a data record, a checkpoint.

  The message is shown as is on one line, so it names the parameter/file/value and what is accepted.
  Library code names *parameters* (`batch_size=10: ...`); a program whose flags carry the same names
  shows them as flags (`--batch_size=10: ...`, see tools/cli/flags.py). Subclasses ValueError so that
  library callers that catch ValueError keep working.

  Args:
    message: str, one line (white space is folded when shown).
    param: optional name of the parameter the message starts with (`param=value: ...`).
  """

  def __init__(self, message, param=None):
    super().__init__(message)
    self.param = param


def param(default, help_text, *, minimum=None, check=None, choices=None, flag=True, meaning=False,
          default_text=None):
  """A hyperparameter, declared once as a field of a params section (a frozen dataclass).

  Everything else follows from this declaration (tools/recipe/params.py): the program's flag of the same
  name (its kind from the field's type, its help ending with the default), the range check of a
  value, `params.json`, and whether a changed value makes a resumed run another run.

  Args:
    default: the field's default (immutable: a tuple, not a list).
    help_text: one sentence for --help, without the default (it is appended).
    minimum: numbers: the smallest value accepted (inclusive).
    check: numbers: (test(value) -> bool, "what is expected") instead of `minimum`.
    choices: strings: the accepted values (an enum flag).
    flag: False for a parameter that has no flag (set in code, or from the data).
    meaning: True when a resumed run with another value trains another model (refused unless
      allow_params_change).
    default_text: the help's "Default ..." text when the default is computed (None fields).
  Returns:
    dataclasses.Field with this metadata.
  """
  if minimum is not None:
    check = (lambda v: v >= minimum), f"a number >= {minimum}"
  metadata = dict(help=help_text, check=check, choices=choices, flag=flag, meaning=meaning,
                  default_text=default_text)
  return dataclasses.field(default=default, metadata=metadata)


def check_param(field, value):
  """Raises UserError `name=value: expected ...` unless `value` fits the declared field (`param`).

  None is accepted (unset); so are values of fields declared without a check or choices.
  """
  if value is None:
    return
  check, choices = field.metadata.get("check"), field.metadata.get("choices")
  if choices is not None and value not in choices:
    raise UserError(f"{field.name}={value}: expected one of {', '.join(map(str, choices))}",
                    param=field.name)
  if check is None or isinstance(value, bool):
    return
  test, expected = check
  if not isinstance(value, (int, float)) or not math.isfinite(value) or not test(value):
    raise UserError(f"{field.name}={value}: expected {expected}", param=field.name)


def one_line(error, limit=300):
  """The message of an exception on one line, without the node, op and function names TensorFlow
  appends (`{{node ...}}`, `[[...]]`, `[Op:...]`); at most `limit` characters."""
  text = getattr(error, "message", None) or str(error)
  text = re.sub(r"\{\{.*?\}\}|\[\[.*?\]\]|\[Op:.*?\]|name: *$", "", text, flags=re.DOTALL)
  return " ".join(text.split())[:limit]


@contextlib.contextmanager
def atomic_path(path):
  """Context manager yielding a temporary path beside `path`, renamed to `path` when the block ends
  without an error, and removed (file or folder) when it fails: readers see all of `path` or none.

  An existing file at `path` is replaced; an existing folder is not (os.replace refuses a non-empty
  one), callers decide that. Local paths only.
  """
  temporary = f"{path.rstrip('/')}.tmp-{os.getpid()}"
  try:
    yield temporary
    os.replace(temporary, path)
  finally:
    if os.path.isdir(temporary):
      shutil.rmtree(temporary, ignore_errors=True)
    elif os.path.lexists(temporary):
      os.remove(temporary)


def atomic_write(path, content):
  """Writes `content` (str or bytes) to `path` atomically (see atomic_path); returns path."""
  with atomic_path(path) as temporary:
    with open(temporary, "wb" if isinstance(content, bytes) else "w") as f:
      f.write(content)
  return path


def format_duration(seconds):
  """'H:MM:SS' for a number of seconds ('?' when not finite)."""
  if seconds != seconds or seconds in (float("inf"), float("-inf")):
    return "?"
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class Progress:
  """Logs `done/total unit` with the rate and the time left, at most every `interval` seconds.

  Args:
    name: str, what is being done (starts each line).
    total: int, the number of items.
    unit: str, what an item is ("images", "examples").
    interval: float, seconds between lines; the last item always logs.
  """

  def __init__(self, name, total, unit="images", interval=10.0):
    self.name, self.total, self.unit, self.interval = name, total, unit, interval
    self.done = 0
    self.start = self._last = time.monotonic()

  def advance(self, n=1):
    """Counts `n` more items done and logs when it is time."""
    self.done += n
    now = time.monotonic()
    if now - self._last >= self.interval or self.done == self.total:
      self._last = now
      rate = self.done / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / rate if rate > 0 else float("inf")
      logging.info("%s: %d/%d %s (%.0f%%), %.1f %s/s, ETA %s", self.name, self.done, self.total,
                   self.unit, 100.0 * self.done / max(self.total, 1), rate, self.unit,
                   format_duration(eta))


class LockHeld(Exception):
  """Another living process holds the lock; the message names it."""


def acquire_lock(path):
  """Takes an exclusive lock on the file `path` for the life of this process (fcntl.flock).

  The kernel releases the lock when its process dies, so a lock file left by a killed process is
  taken over (with a warning naming it). The file holds the holder's host name and process id.

  Returns:
    The open file object; keep a reference to it (closing it releases the lock).
  Raises:
    LockHeld: another living process holds it.
  """
  import fcntl  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  handle = open(path, "a+")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise LockHeld(holder) from e
  handle.seek(0)
  previous = handle.read().strip()
  if previous:
    logging.warning("Taking over the lock %s left by %s, which is no longer running.", path,
                    previous)
  handle.seek(0)
  handle.truncate()
  handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
  handle.flush()
  return handle


def release_lock(handle):
  """Empties and releases a lock taken by acquire_lock (a clean exit leaves no holder behind)."""
  handle.seek(0)
  handle.truncate()
  handle.close()
