"""The project's programs, run as `python -m scripts.NAME` from the repository's root.

The package sets the project's TensorFlow defaults (tools/cli/tf_env.py) before any program imports
TensorFlow."""
from tools.cli import tf_env  # pylint: disable=unused-import
