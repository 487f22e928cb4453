r"""Imports osmr's published SqueezeNext ImageNet weights (pytorchcv `.pth`, or tf2cv `.tf2.h5`) into
a new model_dir (the library: tools/serving/import_weights.py, whose docstring gives the files, names and
layouts).

  python -m scripts.import_weights --weights sqnxt23_w1-1906-97b74e0c.pth --model_dir runs/sqnxt23_w1
  python train.py --model_dir runs/sqnxt23_w1 --mode evaluate \
      --validation_file_pattern 'data/imagenet/validation-*'

The .pth file is read without PyTorch (tools/serving/torch_file.py: torch.save's zip and legacy formats,
no code from the file is run), a .tf2.h5 file with h5py; nothing is downloaded. --configuration defaults to the one of
model.PYTORCHCV_CONFIGURATIONS the file fits; a file of another network, a truncated or damaged
file is a one-line error naming what does not match. The model_dir holds ckpt-0, params.json
(the network at 224 pixels, the torchvision preprocessing osmr evaluated with) and labels.txt
(ImageNet's 1,000 classes, or --label_map's). train.py --mode evaluate, --fine_tune_ckpt,
scripts.predict and scripts.export take it as their own.

Exit status 0, or 2 with one line on stderr for a user error.
"""

import sys

from absl import flags

from tools.cli import flags as cli
from tools.serving import import_weights
from tools.common import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defines the program's flags once (importing this module defines none)."""
  cli.define_flag("string", "weights", None,
                  "pytorchcv's .pth file of a SqueezeNext (a state_dict), or tf2cv's .tf2.h5.")
  cli.define_flag("string", "model_dir", None, "The model_dir to write (new, or an empty folder).")
  cli.define_flag("string", "configuration", None,
                  "One of pytorchcv's sqnxt23_w1, sqnxt23_w3d2, sqnxt23_w2, sqnxt23v5_w1, "
                  "sqnxt23v5_w3d2, sqnxt23v5_w2. Default: the one the file fits.")
  cli.define_flag("integer", "image_size", 224,
                  "Input side of the imported model in pixels (the weights were trained and "
                  "published at 224; the network is defined from 9).")
  cli.define_flag("string", "label_map", None,
                  "labels.txt of the file's classes (label<TAB>name<TAB>text). Default: "
                  "ImageNet's 1,000 classes for a 1,000-class file, none otherwise.")


def main(argv):
  """Writes the model_dir and prints what to run next."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; all options are --flags")
  for name in ("weights", "model_dir"):
    if not FLAGS[name].value:
      raise UserError(f"--{name} is required")
  params, checkpoint = import_weights.import_pytorchcv(
      FLAGS.weights, FLAGS.model_dir, FLAGS.configuration, FLAGS.label_map, argv=sys.argv,
      image_size=FLAGS.image_size)
  m = params.model
  print(f"Imported {m.configuration} ({m.num_classes} classes, {m.image_size} px, "
        f"{params.input.preprocessing} preprocessing) from {FLAGS.weights} as {checkpoint}. "
        f"Evaluate: python train.py --model_dir {FLAGS.model_dir} --mode evaluate "
        f"--validation_file_pattern 'VALIDATION_RECORDS'", flush=True)
  return 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
