r"""Exports a trained model for serving.

  python scripts/export.py --model_dir runs/demo --export_dir exports/demo/1 [--tflite [--quantize]]

Writes a SavedModel (keras.export.ExportArchive, i.e. tf.saved_model.save) of model_dir's latest
checkpoint with two signatures, both returning the outputs of model.model_fn's PREDICT branch:

  serving_default       input image_bytes: tf.string [N], encoded JPEG, PNG, GIF or BMP images of
                        any size. The evaluation preprocessing of training runs in the graph
                        (dataloader.preprocess_image, training=False): the same resize, central crop
                        and mean as predict.py and the evaluation pass.
  serving_preprocessed  input images: float32 [N, S, S, 3], already preprocessed (RGB, mean
                        subtracted).
  outputs (both)        top_1 int32 [N]; top_5 int32 [N, 5]; probabilities float32 [N, K] (softmax);
                        logits float32 [N, K]; with a label map also top_1_name string [N] and
                        top_5_names string [N, 5] (the label map's name column: synset or folder).

One undecodable image fails the whole serving_default request (a graph has no per-element error);
predict.py reports such images one by one. model_dir's params.json and the label map are copied to
OUT/assets.extra/ for the record.

--tflite also writes OUT/model.tflite: the serving_preprocessed signature (same input and outputs)
for the TFLite interpreter, in float32. --quantize also writes OUT/model_dynamic_range.tflite with
8-bit weights (dynamic-range quantization: weights about 4x smaller, activations stay float; check
its accuracy on the validation set before use). A TFLite app preprocesses images itself (as
predict.py does).

The SavedModel is written to a temporary folder and renamed when complete; an existing OUT is
replaced only with --overwrite.
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from scripts import predict  # noqa: E402
from tools import cli  # noqa: E402
from tools.cli import UserError  # noqa: E402

FLAGS = flags.FLAGS

SERVING_DEFAULT = "serving_default"
SERVING_PREPROCESSED = "serving_preprocessed"
TFLITE_FILENAME = "model.tflite"
TFLITE_QUANTIZED_FILENAME = "model_dynamic_range.tflite"


def _define_flags():
  """Defines the command-line flags; only when run as a script (see predict._define_flags)."""
  flags.DEFINE_string("model_dir", None, "Folder of the trained model (checkpoints, params.json).")
  flags.DEFINE_string("export_dir", None, "Folder to write the SavedModel to (must not exist).")
  flags.DEFINE_string("label_map", None,
                      "labels.txt giving class names (default: found as predict.py finds it).")
  flags.DEFINE_boolean("tflite", False, f"Also write export_dir/{TFLITE_FILENAME} (float32).")
  flags.DEFINE_boolean("quantize", False,
                       f"With --tflite, also write export_dir/{TFLITE_QUANTIZED_FILENAME} "
                       "(dynamic-range quantized weights).")
  flags.DEFINE_boolean("overwrite", False, "Replace an existing --export_dir.")


def serving_functions(trained):
  """The two signature functions of the SavedModel for a predict.TrainedModel.

  Returns:
    (from_bytes, from_images): from_bytes(image_bytes: string [N]) and from_images(images: float32
    [N, S, S, 3]) -> dict of outputs (module docstring).
  """
  size = trained.image_size
  preprocess = predict.preprocess_fn(trained.params)
  predictions = predict.predictions_fn(trained)
  names = None
  if trained.label_map:
    names = tf.constant([entry.name for entry in trained.label_map])  # [K]

  def from_images(images):
    outputs = dict(predictions(images))
    if names is not None:
      outputs["top_1_name"] = tf.gather(names, outputs["top_1"])  # [N]
      outputs["top_5_names"] = tf.gather(names, outputs["top_5"])  # [N, 5]
    return outputs

  def from_bytes(image_bytes):
    images = tf.map_fn(preprocess, image_bytes,  # [N, S, S, 3]
                       fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
    return from_images(images)

  return from_bytes, from_images


def check_export_dir(export_dir, overwrite):
  """Raises UserError when export_dir exists and `overwrite` is False."""
  if tf.io.gfile.exists(export_dir) and not overwrite:
    raise UserError(f"--export_dir={export_dir} already exists; choose a new folder or pass "
                    f"--overwrite")


def export_saved_model(trained, export_dir, overwrite=False):
  """Writes the SavedModel of `trained` (predict.TrainedModel) to export_dir; returns export_dir.

  Raises UserError when export_dir exists and `overwrite` is False.
  """
  check_export_dir(export_dir, overwrite)
  size = trained.image_size
  from_bytes, from_images = serving_functions(trained)
  archive = keras.export.ExportArchive()
  archive.track(trained.network)
  archive.add_endpoint(SERVING_DEFAULT, from_bytes,
                       input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
  archive.add_endpoint(SERVING_PREPROCESSED, from_images,
                       input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32,
                                                      name="images")])
  temporary = f"{export_dir.rstrip('/')}.tmp-{os.getpid()}"
  shutil.rmtree(temporary, ignore_errors=True)
  archive.write_out(temporary, verbose=False)
  extra = os.path.join(temporary, "assets.extra")
  os.makedirs(extra, exist_ok=True)
  shutil.copy(os.path.join(trained.model_dir, predict.PARAMS_FILENAME), extra)
  if trained.label_map_path:
    shutil.copy(trained.label_map_path, extra)
  if tf.io.gfile.exists(export_dir):
    shutil.rmtree(export_dir)
  os.replace(temporary, export_dir)
  logging.info("Wrote the SavedModel %s (signatures %s, %s; step %d).", export_dir, SERVING_DEFAULT,
               SERVING_PREPROCESSED, trained.global_step)
  return export_dir


def convert_tflite(saved_model_dir, quantize=False):
  """The serving_preprocessed signature of a SavedModel as TFLite flatbuffer bytes.

  Args:
    saved_model_dir: written by export_saved_model.
    quantize: dynamic-range quantization (8-bit weights, float activations; tf.lite.Optimize.DEFAULT
      without a representative dataset).
  Raises:
    UserError: the converter failed (the SavedModel itself is complete).
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                       signature_keys=[SERVING_PREPROCESSED])
  if quantize:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  try:
    return converter.convert()
  except Exception as e:  # the converter raises unrelated types (ConverterError, ValueError, ...)
    raise UserError(f"TFLite conversion of {saved_model_dir} failed ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:300]}); the SavedModel is complete") from e


def write_tflite(saved_model_dir, path, quantize=False):
  """Converts (convert_tflite) and writes `path` atomically; returns path."""
  content = convert_tflite(saved_model_dir, quantize)
  with open(path + ".tmp", "wb") as f:
    f.write(content)
  os.replace(path + ".tmp", path)
  logging.info("Wrote %s (%s, %.1f KiB).", path,
               "dynamic-range quantized" if quantize else "float32", len(content) / 1024)
  return path


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; all options are --flags")
  if not FLAGS.model_dir or not FLAGS.export_dir:
    raise UserError("--model_dir and --export_dir are required")
  if FLAGS.quantize and not FLAGS.tflite:
    raise UserError("--quantize applies to the TFLite file: pass --tflite too")
  check_export_dir(FLAGS.export_dir, FLAGS.overwrite)  # before the slow restore
  trained = predict.load_trained_model(FLAGS.model_dir, FLAGS.label_map)
  export_dir = export_saved_model(trained, FLAGS.export_dir, FLAGS.overwrite)
  if FLAGS.tflite:
    write_tflite(export_dir, os.path.join(export_dir, TFLITE_FILENAME))
    if FLAGS.quantize:
      write_tflite(export_dir, os.path.join(export_dir, TFLITE_QUANTIZED_FILENAME), quantize=True)
  print(f"Exported step {trained.global_step} of {FLAGS.model_dir} to {export_dir}", flush=True)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
