r"""Builds ImageNet-schema TFRecords from image folders (the library: tools/datasets/records.py, whose docstring
describes the layouts, the records, manifest.json and how a re-run resumes).

Prints where the records are and the images it skipped. Exit status: 0 when every image was written,
1 when some were skipped (empty, undecodable, or not-UTF-8-named files), 2 for a user error (one line
on stderr).

Usage (from the repository's root):
  python -m scripts.build_tfrecords --input_dir photos/ --output_dir records/ --layout folders
  python -m scripts.build_tfrecords --input_dir ILSVRC2012/ --output_dir records/ --layout imagenet
"""

from absl import flags

from tools.cli import flags as cli
from tools.datasets import records
from tools.common import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defines the program's flags once (importing this module defines none)."""
  cli.define_flag("string", "input_dir", None, "Folder of images in the --layout.")
  cli.define_flag("string", "output_dir", None, "Folder for the TFRecord shards, labels.txt, manifest.json.")
  cli.define_flag("enum", "layout", "folders", "imagenet: ILSVRC2012 train/ and validation/ folders; "
                  "folders: <class>/ folders.", enum_values=list(records.LAYOUTS))
  cli.define_flag("float", "validation_fraction", 0.1,
                  "Share of each class that goes to validation, in [0, 1) (folders layout).")
  cli.define_flag("integer", "train_shards", None,
                  "Training shards (default: 1024 for imagenet, 1 per 1024 images for folders).")
  cli.define_flag("integer", "validation_shards", None,
                  "Validation shards (default: 128 for imagenet, 1 per 1024 images for folders).")
  cli.define_flag("integer", "num_workers", None, "Threads reading and encoding images (default: CPUs).")
  cli.define_flag("integer", "seed", records.DEFAULT_SEED,
                  "Seeds the validation split and the training shuffle (>= 0).")
  cli.define_flag("boolean", "rebuild", False,
                  "Remove the records of an earlier build in --output_dir (its manifest.json, "
                  "shards and labels.txt) and build them again; needed when they were made from "
                  "other inputs. Files of other tools are never removed.")
  cli.define_flag("integer", "max_short_side", 0,
                  "Store images shrunk so that their shorter side is at most this many pixels (0: as is).")


def main(argv):
  """Builds the records of the flags; returns the exit status (1 when images were skipped)."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  result = records.build(FLAGS.input_dir, FLAGS.output_dir, FLAGS.layout, FLAGS.validation_fraction,
                         FLAGS.train_shards, FLAGS.validation_shards, FLAGS.num_workers, FLAGS.seed,
                         rebuild=FLAGS.rebuild, max_short_side=FLAGS.max_short_side)
  print(f"{result.num_train} training records: {result.train_pattern}\n"
        f"{result.num_validation} validation records: {result.validation_pattern}\n"
        f"label map ({result.num_classes} classes): {result.label_map}\n"
        f"skipped images: {len(result.skipped)}")
  for path, reason in result.skipped:
    print(f"  skipped {path}: {reason}")
  return 1 if result.skipped else 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
