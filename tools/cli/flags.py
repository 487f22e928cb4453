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

import re
import sys
import typing

from absl import app
from absl import flags
from absl import logging

from tools.common import UserError

# Exit status for a user error; 2 is the usual "bad usage" status of command-line tools (argparse too).
USER_ERROR_EXIT_CODE = 2
# Exit status after SIGINT (128 + 2), as shells report it.
INTERRUPTED_EXIT_CODE = 130


def flag_message(error):
  """The one-line text of a UserError, its parameter shown as the flag of the same name.

  A single `param` is shown as a flag where the message starts with it (`param=...` or
  `param: ...`); a tuple of params (an error about several) wherever the message names them.
  """
  message = " ".join(str(error).split())
  param = getattr(error, "param", None)
  if isinstance(param, tuple):
    for name in (p for p in param if p in flags.FLAGS):
      message = re.sub(rf"(?<![\w-]){re.escape(name)}\b", f"--{name}", message)
  elif param and param in flags.FLAGS and message.startswith((f"{param}=", f"{param}:")):
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


# The absl flag kind of a declared parameter's type (tools/common.param), None removed from a union.
_FLAG_KINDS = {str: "string", int: "integer", float: "float", bool: "boolean"}


def define_param_flags(declared, help_fn):
  """One flag per declared parameter field (tools/recipe/params.flag_fields()), of the same name.

  Its kind follows the field's type (an enum when the declaration lists choices); its default is
  None, so that the program passes on only what the user set (tools/recipe/params.resolve_params applies
  the declared defaults). `help_fn(field)` gives its help (tools/recipe/params.flag_help).
  """
  for field in declared:
    choices = field.metadata["choices"]
    types = [t for t in (typing.get_args(field.type) or (field.type,)) if t is not type(None)]
    kind = "enum" if choices else _FLAG_KINDS[types[0]]
    define_flag(kind, field.name, None, help_fn(field),
                **({"enum_values": list(choices)} if choices else {}))
