"""Command-line plumbing shared by every entry point (train.py, tools/*, scripts/*).

A user error (a bad flag, a missing file, a wrong configuration name) must reach the user as one line
naming what was wrong and what was expected, with a non-zero exit status and no Python traceback.
Library code signals such errors by raising `UserError`; `run(main)` is `absl.app.run(main)` that turns
a `UserError` into that one line. Every other exception is a bug and keeps its traceback.
"""

import sys

from absl import app
from absl import logging

# Exit status for a user error; 2 is the usual "bad usage" status of command-line tools (argparse too).
USER_ERROR_EXIT_CODE = 2


class UserError(ValueError):
  """Bad input from the user: a flag value, a file or pattern, a data record, a checkpoint.

  The message is shown as is on one line, so it names the flag/file/value and what is accepted.
  Subclasses ValueError so library callers that catch ValueError keep working.
  """


def _main_with_user_errors(main):
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      message = " ".join(str(e).split())  # one line, whatever the message's layout
      logging.flush()
      print(f"error: {message}", file=sys.stderr, flush=True)
      sys.exit(USER_ERROR_EXIT_CODE)
  return wrapped


def run(main, **kwargs):
  """Runs `main(argv)` like `absl.app.run`, printing a `UserError` as `error: <message>` and exiting 2.

  Args:
    main: the program's main function, taking the argv list left after flag parsing.
    **kwargs: passed to `absl.app.run` (e.g. `flags_parser`).
  """
  app.run(_main_with_user_errors(main), **kwargs)
