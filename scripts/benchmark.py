"""Benchmarks, one sub-command each, printed as a Markdown table (and optionally saved as JSON).

  python scripts/benchmark.py input --synthetic_jpegs 1024 --preprocessing caffe
  python scripts/benchmark.py input --file_pattern 'DIR/train-*' --preprocessing inception

`input`: images/second of `dataloader.input_fn` (training and evaluation) and of a decode-only pass
(parse + `tf.io.decode_jpeg` of every record, same reading and parallelism) over the same files in the
same run, and their ratio. The decode-only pass is the bound a pipeline that decodes every pixel cannot
beat; input_fn decodes only its crop window, so its training ratio can exceed 1 (DESIGN.md 6). Each
pipeline is measured --rounds times, alternating, and the best round is reported, so that a burst of
other work on the machine does not decide the result.

Adding a sub-command: write `def run_<name>() -> dict` returning {"columns": [...], "rows": [...],
...} and register it in `SUBCOMMANDS`; `main` prints the table and writes the JSON.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dataloader  # noqa: E402
from scripts import build_tfrecords  # noqa: E402
from tools import cli  # noqa: E402
from tools.cli import UserError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_json", None, "Also write the results to this JSON file.")
# input
flags.DEFINE_string("file_pattern", None, "input: TFRecord files to read (or --synthetic_jpegs).")
flags.DEFINE_integer("synthetic_jpegs", 0,
                     "input: first write this many ImageNet-like JPEG records to a temporary folder.")
flags.DEFINE_enum("preprocessing", "caffe", dataloader.PREPROCESSINGS, "input: preprocessing.")
flags.DEFINE_integer("image_size", 227, "Image side in pixels.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("rounds", 3, "input: measurements of each pipeline; the best is reported.")
flags.DEFINE_integer("max_images", 4096, "input: images timed per measurement (at most one pass).")

# ImageNet-like shapes (height, width): most ImageNet photos are 500 wide, 375 or 333 high.
_SYNTHETIC_SHAPES = ((375, 500), (333, 500), (500, 375), (400, 500))
_SYNTHETIC_JPEG_QUALITY = 90
_SYNTHETIC_CLASSES = 10
_SYNTHETIC_SHARDS = 16


# ------------------------------------------------------------------------------------------------
# Shared output helpers.


def markdown_table(columns, rows):
  """A Markdown table: `columns` (list of str) and `rows` (list of dicts keyed by column)."""
  def cell(value):
    return f"{value:.3g}" if isinstance(value, float) and abs(value) < 10 else (
        f"{value:,.0f}" if isinstance(value, float) else str(value))
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


def write_json(path, results):
  """Writes `results` (JSON-serializable) to `path` atomically."""
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w") as f:
    json.dump(results, f, indent=2)
  os.replace(temporary, path)


# ------------------------------------------------------------------------------------------------
# input


def synthetic_photo(rng, height, width):
  """A uint8 [height, width, 3] BGR image with photo-like statistics.

  Smooth noise at several scales (amplitude growing with the scale, like the 1/f spectrum of
  photographs), a colour gradient and fine texture, tuned so that the JPEG files have ImageNet's
  average size (about 110 KB for 500x375 at quality 90; ILSVRC2012 train: 138 GB / 1.28 M images).
  """
  image = np.zeros((height, width, 3), np.float32)
  for scale, amplitude in ((64, 60.0), (16, 30.0), (4, 20.0), (2, 25.0)):
    small = rng.normal(size=(max(height // scale, 2), max(width // scale, 2), 3)).astype(np.float32)
    image += amplitude * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
  ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
  image += 40.0 * ramp * rng.uniform(-1.0, 1.0, size=(1, 1, 3)).astype(np.float32)
  image += rng.normal(scale=10.0, size=image.shape).astype(np.float32)  # fine texture
  return np.clip(image + 128.0, 0, 255).astype(np.uint8)


def write_synthetic_records(num_images, folder, seed=0):
  """Writes `num_images` synthetic photos as JPEG class folders and TFRecords under `folder`.

  Returns:
    str, the pattern of the TFRecord files (16 shards, no validation split).
  """
  rng = np.random.default_rng(seed)
  images_dir = os.path.join(folder, "images")
  for i in range(num_images):
    class_dir = os.path.join(images_dir, f"class{i % _SYNTHETIC_CLASSES}")
    os.makedirs(class_dir, exist_ok=True)
    height, width = _SYNTHETIC_SHAPES[rng.integers(len(_SYNTHETIC_SHAPES))]
    cv2.imwrite(os.path.join(class_dir, f"{i:06d}.jpg"), synthetic_photo(rng, height, width),
                [cv2.IMWRITE_JPEG_QUALITY, _SYNTHETIC_JPEG_QUALITY])
  result = build_tfrecords.build(images_dir, os.path.join(folder, "records"), "folders",
                                 validation_fraction=0.0, train_shards=_SYNTHETIC_SHARDS)
  return result.train_pattern


def _decode_only_dataset(file_pattern, params):
  """Parse + full `tf.io.decode_jpeg` of every record, with input_fn's reading, parallelism, options."""
  p = dataloader.input_params(params)
  files = tf.io.gfile.glob(file_pattern)
  dataset = tf.data.Dataset.from_tensor_slices(sorted(files)).flat_map(
      lambda f: tf.data.TFRecordDataset(f, buffer_size=p["read_buffer_size"]))

  def decode(record):
    encoded = tf.io.parse_single_example(
        record, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})["image/encoded"]
    return tf.shape(tf.io.decode_jpeg(encoded, channels=3))  # only the shape leaves the pipeline
  dataset = dataset.map(decode, num_parallel_calls=p["num_parallel_calls"])
  dataset = dataset.batch(p["batch_size"]).prefetch(p["prefetch_buffer_size"])
  return dataset.with_options(dataloader.dataset_options(p, False, None))


def _images_per_second(dataset, max_images, warmup_batches):
  """Images/second over at most `max_images` images after `warmup_batches` (not timed) batches."""
  iterator = iter(dataset)
  for _ in range(warmup_batches):
    next(iterator)
  images, start = 0, time.perf_counter()
  for batch in iterator:
    labels = batch[1]["class_idx"] if isinstance(batch, tuple) else batch
    images += int(labels.shape[0])
    if images >= max_images:
      break
  return images / (time.perf_counter() - start)


def run_input():
  """The `input` benchmark: input_fn (training, evaluation) against decode-only, same files."""
  with tempfile.TemporaryDirectory() as scratch:
    file_pattern = FLAGS.file_pattern
    if FLAGS.synthetic_jpegs:
      logging.info("Writing %d synthetic JPEG records to %s", FLAGS.synthetic_jpegs, scratch)
      file_pattern = write_synthetic_records(FLAGS.synthetic_jpegs, scratch)
    if not file_pattern:
      raise UserError("input: give --file_pattern or --synthetic_jpegs")
    num_records = sum(1 for f in dataloader.list_files(file_pattern)
                      for _ in tf.data.TFRecordDataset(f))
    params = {"image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size,
              "preprocessing": FLAGS.preprocessing, "shuffle_buffer_size": 1024}
    max_images = min(FLAGS.max_images, num_records)
    pipelines = {  # name: (make the dataset, warm-up batches)
        "decode-only (parse + decode_jpeg)": (lambda: _decode_only_dataset(file_pattern, params), 0),
        "input_fn training": (lambda: dataloader.input_fn(file_pattern, True, params), 2),
        "input_fn evaluation": (lambda: dataloader.input_fn(file_pattern, False, params), 0),
    }
    best = {name: 0.0 for name in pipelines}
    for round_index in range(FLAGS.rounds):
      for name, (make, warmup) in pipelines.items():
        rate = _images_per_second(make(), max_images, warmup)
        logging.info("round %d: %s %.1f images/s", round_index + 1, name, rate)
        best[name] = max(best[name], rate)
  bound = best["decode-only (parse + decode_jpeg)"]
  rows = [{"pipeline": name, "images/s": rate, "ratio to decode-only": rate / bound}
          for name, rate in best.items()]
  return {"benchmark": "input", "columns": ["pipeline", "images/s", "ratio to decode-only"],
          "rows": rows, "records": num_records, "preprocessing": FLAGS.preprocessing,
          "image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size, "rounds": FLAGS.rounds,
          "cpus": os.cpu_count()}


# Sub-command name -> function returning {"columns": [...], "rows": [...], ...}.
SUBCOMMANDS = {
    "input": run_input,
}


def main(argv):
  if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
    raise UserError(f"expected one sub-command, one of {sorted(SUBCOMMANDS)}; got {argv[1:]}")
  results = SUBCOMMANDS[argv[1]]()
  print(f"\n`python scripts/benchmark.py {' '.join(sys.argv[1:])}` ({os.cpu_count()} CPUs)\n")
  print(markdown_table(results["columns"], results["rows"]))
  if FLAGS.output_json:
    write_json(FLAGS.output_json, results)


if __name__ == "__main__":
  cli.run(main)
