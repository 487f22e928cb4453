r"""Classifies image files with a trained model (the library: tools/serving/inference.py).

  python -m scripts.predict --model_dir runs/demo photo.jpg photos/   # a folder: all images in it
  python -m scripts.predict --model_dir runs/demo --json photos/ > predictions.jsonl
  python -m scripts.predict --tflite exports/demo/1/model_int8.tflite photos/   # LiteRT
  python -m scripts.predict --onnx exports/demo/1/model.onnx photos/   # ONNX Runtime

Restores the newest checkpoint of --model_dir with the params train.py saved there and applies
exactly the evaluation preprocessing of training. With --tflite, runs that .tflite file of an export
folder with LiteRT's interpreter instead, with the params and label map of the export folder's
assets.extra (or of --model_dir when given), the same preprocessing and the same output. --onnx
runs a model.onnx of an export folder with ONNX Runtime (CPU) in the same way; it needs the
optional package onnxruntime (requirements-onnx.txt).

Output, in the order of the arguments (folders expanded recursively, file names sorted): the top-5
classes of each image with their probabilities and, when a label map is found, class names.
With --json, one JSON object per image and line:
  {"image": "a.jpg", "top_5": [{"class_idx": 3, "probability": 0.91, "name": "n01443537",
                                "text": "goldfish, Carassius auratus"}, ...]}
  {"image": "b.jpg", "error": "cannot decode image: ..."}
An image that is missing, empty, cannot be decoded or whose file name is not valid UTF-8 gets such
an error line and the other images are still classified; the exit status is then 1 (2 for a user
error such as a bad --model_dir, one line on stderr).

Label map (labels.txt), the first found of: --label_map; the label_map of params.json (the demo sets
it); labels.txt beside the training or validation records; labels.txt in model_dir (or the export's
assets.extra). Without one, classes are shown by index (class_idx = record label - 1).
"""

from absl import flags
from absl import logging

from tools.cli import flags as cli
from tools.serving import inference
from tools.common import Progress
from tools.common import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defines the program's flags once (importing this module defines none)."""
  cli.define_flag("string", "model_dir", None, "Folder of the trained model (checkpoints, params.json).")
  cli.define_flag("string", "tflite", None, "A .tflite file of an export folder, run with LiteRT.")
  cli.define_flag("string", "onnx", None,
                  "A model.onnx of an export folder, run with ONNX Runtime "
                  "(requirements-onnx.txt).")
  cli.define_flag("string", "label_map", None,
                  "labels.txt giving class names (default: found from params.json).")
  cli.define_flag("integer", "batch_size", 64, "Images per forward pass (>= 1).")
  cli.define_flag("integer", "num_threads", 0, "Threads reading and preprocessing (0: one per core).")
  cli.define_flag("boolean", "json", False, "Print one JSON object per image and line instead of text.")


def _check_flags(argv):
  if FLAGS.tflite and FLAGS.onnx:
    raise UserError("give one of --tflite and --onnx, not both")
  if not FLAGS.model_dir and not FLAGS.tflite and not FLAGS.onnx:
    raise UserError("--model_dir (the folder train.py wrote), --tflite or --onnx is required")
  if len(argv) < 2:
    raise UserError("no image given; usage: python -m scripts.predict --model_dir DIR "
                    "IMAGE_OR_FOLDER [...]")
  if FLAGS.batch_size < 1:
    raise UserError(f"--batch_size={FLAGS.batch_size}: expected at least 1")
  if FLAGS.num_threads < 0:
    raise UserError(f"--num_threads={FLAGS.num_threads}: expected 0 (one per core) or more")


def main(argv):
  """Prints the predictions of the images in argv[1:]; returns 1 when some failed, else 0."""
  _check_flags(argv)
  paths = inference.list_images(argv[1:])
  if FLAGS.tflite:
    classifier = inference.load_lite_model(FLAGS.tflite, FLAGS.model_dir, FLAGS.label_map,
                                           FLAGS.num_threads or None)
  elif FLAGS.onnx:
    classifier = inference.load_onnx_model(FLAGS.onnx, FLAGS.model_dir, FLAGS.label_map,
                                           FLAGS.num_threads or None)
  else:
    classifier = inference.load_trained_model(FLAGS.model_dir, FLAGS.label_map)
  formatter = inference.format_json if FLAGS.json else inference.format_text
  progress, failed = Progress("predict", len(paths), "images"), 0
  for result in inference.predict_files(classifier, paths, FLAGS.batch_size, FLAGS.num_threads):
    print(formatter(result, classifier.label_map), flush=True)
    failed += result.error is not None
    progress.advance()
  if failed:
    logging.error("%d of %d images could not be classified (see the error lines); exit status 1.",
                  failed, len(paths))
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
