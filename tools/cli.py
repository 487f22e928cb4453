"""Command-line plumbing of the programs (train.py, scripts/*); the library never imports it.

A user error (a bad flag, a missing file, a wrong configuration name) must reach the user as one line
naming what was wrong and what was expected, with a non-zero exit status and no Python traceback.
Library code raises `tools.common.UserError` naming its *parameter* (`batch_size=10: ...`);
`run(main)` is `absl.app.run(main)` that prints it as `error: --batch_size=10: ...` (the flag of the
same name) and exits 2. A Ctrl-C before the program handles signals itself exits 130, quietly.
Every other exception is a bug and keeps its traceback.

Run the programs as modules from the repository's root: `python train.py ...`,
`python -m scripts.predict ...`.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from tools.common import UserError

# Exit status for a user error; 2 is the usual "bad usage" status of command-line tools (argparse too).
USER_ERROR_EXIT_CODE = 2
# Exit status after SIGINT (128 + 2), as shells report it.
INTERRUPTED_EXIT_CODE = 130


def flag_message(error):
  """The one-line text of a UserError, its parameter shown as the flag of the same name."""
  message = " ".join(str(error).split())
  param = getattr(error, "param", None)
  if param and param in flags.FLAGS and message.startswith(f"{param}="):
    message = "--" + message
  return message


def _main_with_user_errors(main):
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      logging.flush()
      print(f"error: {flag_message(e)}", file=sys.stderr, flush=True)
      sys.exit(USER_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
      logging.flush()
      print("interrupted", file=sys.stderr, flush=True)
      sys.exit(INTERRUPTED_EXIT_CODE)
  return wrapped


def run(main, **kwargs):
  """Runs `main(argv)` like `absl.app.run`, printing a `UserError` as `error: <message>` and exiting 2.

  Args:
    main: the program's main function, taking the argv list left after flag parsing.
    **kwargs: passed to `absl.app.run` (e.g. `flags_parser`).
  """
  app.run(_main_with_user_errors(main), **kwargs)


def define_flag(kind, name, default, text, **kwargs):
  """`flags.DEFINE_<kind>(name, default, help=text, **kwargs)` unless a flag of that name exists:
  tests define the flags of several programs in one process (the first definition is kept)."""
  if name not in flags.FLAGS:
    getattr(flags, f"DEFINE_{kind}")(name, default, help=text, **kwargs)
    # Also a flag of the program's main module (absl names it sys.argv[0]), which --help lists.
    flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS[name])
