"""Builds the built-in demo data set (handwritten digits as JPEG folders and TFRecords) in --output_dir;
the library is tools/datasets/demo_data.py. Idempotent: a finished build is reused.

Usage (from the repository's root):
  python -m scripts.make_demo_data --output_dir demo_data
  python -m scripts.make_demo_data --photos --output_dir data/photos   # 500 crops of 2 real photos
"""

from absl import flags

from tools.cli import flags as cli
from tools.datasets import demo_data
from tools.common import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defines the program's flag once (importing this module defines none)."""
  if "output_dir" not in FLAGS:  # tests define the flags of several programs in one process
    flags.DEFINE_string("output_dir", None, "Folder for the demo images and TFRecords.")
  if "photos" not in FLAGS:
    flags.DEFINE_boolean("photos", False, "Build the photo crops (tools/datasets/demo_data.make_photo_data) "
                         "instead of the handwritten digits.")


def main(argv):
  """Builds (or finds) the demo data and prints where it is."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  if FLAGS.photos:
    data = demo_data.make_photo_data(FLAGS.output_dir)
  else:
    data = demo_data.make_demo_data(FLAGS.output_dir)
  print(f"{data.num_train} training records: {data.train_pattern}\n"
        f"{data.num_validation} validation records: {data.validation_pattern}\n"
        f"label map ({data.num_classes} classes): {data.label_map}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
