r"""Prints the per-layer parameters and MACs of a SqueezeNext network (tools/recipe/stats.py).

  python -m scripts.stats --configuration v_1_0_SqNxt_23 [--image_size 227] [--num_classes 1000]
      [--csv model_stats.csv]

prints the table and, as its last line, `params=<int> macs=<int>`.
"""

from absl import flags

import model
from tools.cli import flags as cli
from tools.recipe import stats
from tools.common import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defines the program's flags (not at import: tests import this module beside others)."""
  flags.DEFINE_string("configuration", None,
                      f"Network name, one of: {', '.join(model.CONFIGURATIONS)}.")
  flags.DEFINE_integer("image_size", 227, "Input side in pixels.")
  flags.DEFINE_integer("num_classes", 1000, "Number of classes of the classifier.")
  flags.DEFINE_string("csv", None, "If set, also write the table to this CSV file.")
  flags.mark_flag_as_required("configuration")


def main(argv):
  """Prints the statistics table of --configuration; optionally writes it to --csv."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; expected only flags")
  network = model.build_network(FLAGS.configuration, FLAGS.num_classes, FLAGS.image_size)
  rows, totals = stats.model_statistics(network)
  if FLAGS.csv:
    stats.write_csv(rows, FLAGS.csv)
  print("\n".join(stats.format_table(rows, totals)), flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
