r"""Exports a trained model for serving (the library: tools/serving/inference.py, whose docstring describes
the export folder: SavedModel signatures, outputs, assets.extra, marker).

  python -m scripts.export --model_dir runs/demo --export_dir exports/demo/1
  python -m scripts.export --model_dir runs/demo --export_base exports/demo   # exports/demo/<N+1>
  python -m scripts.export --model_dir runs/demo --export_base exports/demo --tflite \
      --quantize float16,dynamic_range,int8 [--representative_examples 100] [--onnx]

--export_dir must not exist; --overwrite replaces it only when it is an earlier export of this
program (squeezenext_export.json at its top) holding no model_dir, checkpoints, numbered versions or
other export. --export_base writes the next free integer version below it (TF Serving's layout) and
never replaces anything. The folder is written under a temporary name and renamed when complete.

--tflite also writes model.tflite (float32) into the export folder: the serving_preprocessed
signature, for LiteRT. --quantize adds, each written atomically: model_float16.tflite (float16
weights), model_dynamic_range.tflite (8-bit weights, float activations) and model_int8.tflite (full
integer: int8 input and float outputs; calibrated on --representative_examples training images
through the evaluation preprocessing, or those of --representative_file_pattern). A TFLite app preprocesses images itself, as
`python -m scripts.predict --tflite FILE` does.

--onnx also writes model.onnx (ONNX opset 17, converted by tf2onnx from the same signature): the
input contract of model.tflite (`images` float32 [batch, S, S, 3], preprocessed; any batch size),
the SavedModel's outputs, and the preprocessing and class names in its metadata_props. It needs the
optional packages of requirements-onnx.txt (tf2onnx, onnx, onnxruntime); without them --onnx is a
one-line error before anything is written. `python -m scripts.predict --onnx FILE` runs it.

After writing, every artefact is evaluated on the validation records (--validation_file_pattern, or
else the model's params.json validation_file_pattern; without any, one line says the table is
skipped; --noevaluate skips it): the SavedModel (serving_preprocessed signature), model.tflite,
each quantized variant and model.onnx (ONNX Runtime, CPU), through the evaluation preprocessing of
training. The table printed and written to EXPORT/accuracy.json gives per artefact: top-1 and
top-5 accuracy, agreement of top-1 with the SavedModel, size in bytes (SavedModel: saved_model.pb,
variables/, assets/), latency in milliseconds per image at batch 1 on this CPU (median of
--latency_runs; LiteRT and ONNX Runtime with --latency_threads threads, the SavedModel with
TensorFlow's) and the largest difference of its logits from the SavedModel's, as a fraction of
their range. A variant losing more than
--max_top1_drop points of top-1 gets a `warning:` line on stderr.

Exit status 0, or 2 with one line on stderr for a user error.
"""

import sys

from absl import flags
import tensorflow as tf

from tools.cli import flags as cli
from tools.serving import inference
from tools.recipe import params as params_lib
from tools.common import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defines the program's flags once (importing this module defines none)."""
  cli.define_flag("string", "model_dir", None,
                  "Folder of the trained model (checkpoints, params.json).")
  cli.define_flag("string", "export_dir", None, "Folder to write the export to (must not exist).")
  cli.define_flag("string", "export_base", None,
                  "Write the export to EXPORT_BASE/<next free integer version> "
                  "(TF Serving's layout).")
  cli.define_flag("string", "label_map", None,
                  "labels.txt giving class names (default: found as scripts.predict finds it).")
  cli.define_flag("boolean", "tflite", False, "Also write model.tflite (float32) into the export.")
  cli.define_flag("list", "quantize", [],
                  "With --tflite, also write these quantized variants (comma-separated): "
                  f"{', '.join(inference.QUANTIZATIONS)}.")
  cli.define_flag("boolean", "onnx", False,
                  "Also write model.onnx into the export (needs requirements-onnx.txt).")
  cli.define_flag("integer", "representative_examples", inference.DEFAULT_REPRESENTATIVE_EXAMPLES,
                  "Training images calibrating the int8 model.")
  cli.define_flag("string", "representative_file_pattern", None,
                  "TFRecords whose first --representative_examples images calibrate the int8 "
                  "model (default: the model's training records; an imported model has none).")
  cli.define_flag("boolean", "overwrite", False,
                  "Replace --export_dir when it holds an earlier export of this program "
                  "(nothing else).")
  cli.define_flag("boolean", "evaluate", True,
                  "Evaluate every artefact on the validation records (accuracy.json); "
                  "--noevaluate skips it.")
  cli.define_flag("string", "validation_file_pattern", None,
                  "TFRecords to evaluate on (default: validation_file_pattern of params.json).")
  cli.define_flag("float", "max_top1_drop", inference.DEFAULT_MAX_TOP1_DROP,
                  "Warn when a variant loses more top-1 points than this against the SavedModel.")
  cli.define_flag("integer", "latency_runs", inference.DEFAULT_LATENCY_RUNS,
                  "Timed batch-1 runs per artefact (the median is reported).")
  cli.define_flag("integer", "latency_threads", 1,
                  "Threads of the LiteRT interpreter and of ONNX Runtime.")


def _check_flags(argv):
  """Checks the flags before the slow restore; returns the export folder to write."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; all options are --flags")
  if not FLAGS.model_dir:
    raise UserError("--model_dir is required: the folder train.py wrote")
  if bool(FLAGS.export_dir) == bool(FLAGS.export_base):
    raise UserError("give one of --export_dir (a new folder) and --export_base (a folder of "
                    "numbered versions)")
  if FLAGS.export_base and FLAGS.overwrite:
    raise UserError(f"--export_base={FLAGS.export_base}: writes a new version and replaces "
                    f"nothing; drop --overwrite")
  unknown = [q for q in FLAGS.quantize if q not in inference.QUANTIZATIONS]
  if unknown:
    raise UserError(f"--quantize={','.join(FLAGS.quantize)}: unknown {', '.join(unknown)}; "
                    f"expected some of {', '.join(inference.QUANTIZATIONS)}")
  if FLAGS.quantize and not FLAGS.tflite:
    raise UserError("--quantize applies to the TFLite files: pass --tflite too")
  if FLAGS.onnx:  # the packages are optional: say so before the slow restore
    inference.require_packages(("tf2onnx", "onnx", "onnxruntime"), "--onnx")
  if FLAGS.representative_examples < 1:
    raise UserError(f"--representative_examples={FLAGS.representative_examples}: expected at "
                    f"least 1")
  for name, least in (("latency_runs", 1), ("latency_threads", 1), ("max_top1_drop", 0)):
    if FLAGS[name].value < least:
      raise UserError(f"--{name}={FLAGS[name].value}: expected at least {least}")
  if FLAGS.evaluate and FLAGS.validation_file_pattern:
    inference.check_validation_pattern(FLAGS.validation_file_pattern)
  if FLAGS.export_base:
    return inference.next_version_dir(FLAGS.export_base)
  inference.check_export_dir(FLAGS.export_dir, FLAGS.overwrite)
  return FLAGS.export_dir


def _validation_pattern(params):
  """(pattern, None) of the records to evaluate on, or (None, why the table is skipped)."""
  if not FLAGS.evaluate:
    return None, "--noevaluate"
  if FLAGS.validation_file_pattern:
    return FLAGS.validation_file_pattern, None  # checked by _check_flags
  pattern = params.run.validation_file_pattern
  if not pattern:
    return None, (f"no validation records: {FLAGS.model_dir}'s params.json names none; pass "
                  f"--validation_file_pattern")
  if not tf.io.gfile.glob(pattern):
    return None, (f"no validation records: validation_file_pattern={pattern} of "
                  f"{FLAGS.model_dir}'s params.json matches no file; pass "
                  f"--validation_file_pattern")
  return pattern, None


def _evaluate(export_dir, pattern):
  """Prints the accuracy table of the export (and its warnings, on stderr); writes its JSON."""
  evaluation = inference.evaluate_export(export_dir, pattern, FLAGS.latency_runs,
                                         FLAGS.latency_threads, FLAGS.max_top1_drop)
  path = inference.write_accuracy_json(evaluation)
  print(inference.format_accuracy_table(evaluation), flush=True)
  print(f"Saved the table to {path}", flush=True)
  for warning in evaluation.warnings():
    print(f"warning: {warning.replace('max_top1_drop=', '--max_top1_drop=')}", file=sys.stderr,
          flush=True)


def main(argv):
  """Writes the export of the flags, prints its folder, then evaluates it (module docstring)."""
  export_dir = _check_flags(argv)
  params = params_lib.load_params(FLAGS.model_dir)
  representative = None
  if "int8" in FLAGS.quantize:  # before the slow restore and export: the records must be there
    representative = inference.representative_images(params, FLAGS.representative_examples,
                                                      FLAGS.representative_file_pattern)
  pattern, skipped = _validation_pattern(params)
  trained = inference.load_trained_model(FLAGS.model_dir, FLAGS.label_map)
  inference.export_saved_model(trained, export_dir, FLAGS.overwrite)
  if FLAGS.tflite:
    for quantization in [None, *dict.fromkeys(FLAGS.quantize)]:
      inference.write_tflite(export_dir, quantization, representative)
  if FLAGS.onnx:
    inference.write_onnx(export_dir)
  print(f"Exported step {trained.global_step} of {FLAGS.model_dir} to {export_dir}", flush=True)
  if pattern:
    _evaluate(export_dir, pattern)
  elif FLAGS.evaluate:
    print(f"Accuracy table skipped: {skipped}.", flush=True)
  return 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
