"""Benchmarks, one sub-command each, printed as a Markdown table (and optionally saved as JSON).

  python scripts/benchmark.py input --synthetic_jpegs 1024 --preprocessing caffe
  python scripts/benchmark.py input --file_pattern 'DIR/train-*' --preprocessing inception

`input`: images/second of `dataloader.input_fn` (training and evaluation) and of a decode-only pass
(parse + `tf.io.decode_jpeg` of every record, same reading and parallelism) over the same files in the
same run, and their ratio. The decode-only pass is the bound a pipeline that decodes every pixel cannot
beat by decoding; input_fn decodes only its crop window, but on ImageNet-like JPEGs entropy decoding
of every row dominates (the caffe window costs about a full decode) and the resize to image_size adds
about 20%, so its ratios stay below 1 here (DESIGN.md 6). Each pipeline is measured --rounds times,
alternating, and the best round is reported, so that a burst of other work on the machine does not
decide the result; the load average is in the JSON.

  python scripts/benchmark.py complexity
  python scripts/benchmark.py train [--configuration v_1_0_SqNxt_23|official] [--dtype float32,bfloat16]
  python scripts/benchmark.py inference [same flags]
  python scripts/benchmark.py all [--synthetic_jpegs 512]

`complexity`: params and MACs at 227 of the five official networks measured from the built model
(tools/stats.py) next to the official figures (`PUBLISHED`, the one place they are kept), and the
published top-1/top-5. `train` / `inference`: images/second of the training step (Estimator.train ->
model_fn TRAIN: forward, backward, update) and of evaluation (Estimator.evaluate -> model_fn EVAL) on
one in-memory batch repeated (the model alone), and on the real pipeline with --file_pattern or
--synthetic_jpegs; next to a bare tf.function GradientTape (or forward) loop over the same network
with the same loss and recipe, the ratio runner/bare, and the nominal FLOP rate (2 FLOP per MAC;
training 3 x forward) as a share of the best float32 --matmul_size matmul rate measured in the run.
Runner, bare loop and matmul are measured in alternating rounds, the best of each reported.
`all`: the machine (CPU, cores, TensorFlow, date, command, load) and every table.

Adding a sub-command: write `def run_<name>() -> dict` returning {"columns": [...], "rows": [...],
...} and register it in `SUBCOMMANDS`; `main` prints the table and writes the JSON.
"""

import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dataloader  # noqa: E402
import model  # noqa: E402
from scripts import build_tfrecords  # noqa: E402
import train  # noqa: E402
from tools import cli  # noqa: E402
from tools import estimator as estimator_lib  # noqa: E402
from tools import optimizer as optimizer_lib  # noqa: E402
from tools import stats  # noqa: E402
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
    # input_fn's IDCT (dct_method) too: the bound must decode the way the pipeline does.
    image = tf.io.decode_jpeg(encoded, channels=3, dct_method=p["dct_method"])
    return tf.shape(image)  # only the shape leaves the pipeline
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
    # Every pipeline starts timing after the same 2 untimed batches (start-up: threads, autotuning),
    # so that the rates are the steady state that feeds an accelerator.
    pipelines = {  # name: (make the dataset, warm-up batches)
        "decode-only (parse + decode_jpeg)": (lambda: _decode_only_dataset(file_pattern, params), 2),
        "input_fn training": (lambda: dataloader.input_fn(file_pattern, True, params), 2),
        "input_fn evaluation": (lambda: dataloader.input_fn(file_pattern, False, params), 2),
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
          "cpus": os.cpu_count(), "load_average": os.getloadavg()}  # other work on the host


# ------------------------------------------------------------------------------------------------
# complexity, train, inference, all


@dataclasses.dataclass(frozen=True)
class Published:
  """What the official release and the paper state about one network.

  Attributes:
    name: the paper's name (e.g. "1.0-SqNxt-23").
    params: trainable parameters (convolution and FC kernels, BN scale and shift).
    macs: multiply-accumulates per 227x227 image, convolutions and FC (DESIGN.md section 4).
    top_1, top_5: published ImageNet accuracy in %, single 227 crop (arXiv 1803.10615); None where
      the paper gives none.
  """
  name: str
  params: int
  macs: float
  top_1: float = None
  top_5: float = None


# The official figures, in this one place (shared/DESIGN.md section 4: official prototxts and paper).
PUBLISHED = {
    "v_1_0_SqNxt_23": Published("1.0-SqNxt-23", 717_280, 278.0e6, 59.05, 82.60),
    "v_1_0_G_SqNxt_23": Published("1.0-G-SqNxt-23", 543_072, 224.2e6),
    "v_1_0_SqNxt_23_v5": Published("1.0-SqNxt-23v5", 930_016, 224.9e6, 59.24, 82.41),
    "v_2_0_SqNxt_23": Published("2.0-SqNxt-23", 2_361_728, 742.1e6, 67.18, 88.17),
    "v_2_0_SqNxt_23_v5": Published("2.0-SqNxt-23v5", 3_222_912, 702.6e6, 67.44, 88.20),
}
_PUBLISHED_SIZE = 227  # the input side of the published MACs and accuracies
_IMAGENET_CLASSES = 1000

flags.DEFINE_list("configuration", ["v_1_0_SqNxt_23"],
                  "train/inference: networks (names in model.CONFIGURATIONS, comma-separated, or "
                  "'official' for the five official ones).")
flags.DEFINE_list("dtype", ["float32"],
                  "train/inference: compute dtypes, comma-separated, of float32|bfloat16|float16 "
                  "(16-bit: Keras mixed precision, float32 variables).")
flags.DEFINE_integer("steps", 5, "train/inference: steps (batches) per timed measurement.")
flags.DEFINE_integer("matmul_size", 4096,
                     "train/inference: side N of the float32 N x N matmul whose rate is the peak.")


def _network_label(configuration):
  published = PUBLISHED.get(configuration)
  return published.name if published else configuration


def run_complexity():
  """The `complexity` benchmark: params and MACs at 227 of each official network, measured from the
  built model (tools/stats.py), next to the official figures and the published accuracy."""
  rows = []
  for configuration, published in PUBLISHED.items():
    network = model.build_network(configuration, _IMAGENET_CLASSES, _PUBLISHED_SIZE)
    _, totals = stats.model_statistics(network)
    rows.append({
        "network": published.name, "configuration": configuration,
        "params": totals["params"], "official params": published.params,
        "params ratio": f"{totals['params'] / published.params:.4f}",
        "MMACs": f"{totals['macs'] / 1e6:.1f}", "official MMACs": f"{published.macs / 1e6:.1f}",
        "MACs ratio": f"{totals['macs'] / published.macs:.4f}",
        "top-1 %": f"{published.top_1:.2f}" if published.top_1 else "-",
        "top-5 %": f"{published.top_5:.2f}" if published.top_5 else "-"})
    keras.backend.clear_session()
  columns = ["network", "configuration", "params", "official params", "params ratio", "MMACs",
             "official MMACs", "MACs ratio", "top-1 %", "top-5 %"]
  return {"benchmark": "complexity", "columns": columns, "rows": rows,
          "image_size": _PUBLISHED_SIZE, "num_classes": _IMAGENET_CLASSES}


def matmul_peak(size, repeats=3):
  """Best rate, in FLOP/s, of a dense float32 [size, size] x [size, size] tf.matmul in a tf.function
  (2 * size**3 FLOP per product) over `repeats` timed calls after one untimed call."""
  a = tf.random.uniform([size, size])
  b = tf.random.uniform([size, size])
  product = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
  product(a, b).numpy()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    product(a, b).numpy()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best


def _benchmark_params(configuration, dtype, steps_per_loop):
  """train.py's params for a benchmark run: ImageNet defaults with the flags' batch, size and dtype,
  no summaries or progress lines, a checkpoint only at the end of each `train` call."""
  if dtype not in ("float32", "bfloat16", "float16"):
    raise UserError(f"--dtype={dtype}: expected float32, bfloat16 or float16")
  model.get_config(configuration)  # UserError naming the known configurations
  user = dict(configuration=configuration, dtype=dtype, batch_size=FLAGS.batch_size,
              image_size=FLAGS.image_size, num_classes=_IMAGENET_CLASSES, max_steps=10 ** 6,
              steps_per_loop=steps_per_loop, save_checkpoints_steps=0, save_summary_steps=0,
              log_every_n_steps=0, image_summary_steps=0, output_train_images=False,
              preprocessing=FLAGS.preprocessing, shuffle_buffer_size=1024)
  return train.resolve_params(user, {})


def _synthetic_batch(params):
  """One in-memory batch: float32 images [B, S, S, 3] (mean-subtracted range), int32 labels [B]."""
  size, batch = params["image_size"], params["batch_size"]
  images = tf.random.uniform([batch, size, size, 3], -128.0, 128.0, seed=1)
  labels = tf.random.uniform([batch], 0, params["num_classes"], tf.int32, seed=2)
  return images, labels


class _StepTimer(estimator_lib.Hook):
  """Host times at the start of `Estimator.train` and after each of its loops (one step each with
  steps_per_loop 1), so that the step times leave out set-up and the final checkpoint."""

  def begin(self, estimator):
    self.times = [time.perf_counter()]

  def after_step(self, estimator, step, outputs):
    self.times.append(time.perf_counter())
    return False


def _runner_train_seconds(estimator, input_fn, steps):
  """Seconds of each of `steps` training steps through Estimator.train and model_fn (list)."""
  timer = _StepTimer()
  estimator.train(input_fn, estimator.global_step + steps, hooks=(timer,))
  return list(np.diff(timer.times))


def _runner_inference_seconds(estimator, input_fn, steps):
  """Seconds per batch of one Estimator.evaluate pass (model_fn's EVAL branch) over `steps` batches,
  set-up and summaries included (evaluate has no hooks); a one-element list."""
  start = time.perf_counter()
  estimator.evaluate(lambda ctx: input_fn(ctx).take(steps))
  return [(time.perf_counter() - start) / steps]


def _bare_train_loop(network, params, images, labels):
  """`loop(num_steps)`: a plain tf.function GradientTape loop over `network` with model_fn's loss
  (cross-entropy + weight decay, model.train_loss) and its own optimizer of the same recipe."""
  optimizer = optimizer_lib.build_optimizer(model.recipe_from_params(params),
                                            loss_scale=params["dtype"] == "float16")
  variables = network.trainable_variables
  optimizer.build(variables)

  @tf.function
  def loop(num_steps):
    loss = tf.constant(0.0)
    for _ in tf.range(num_steps):
      with tf.GradientTape() as tape:
        loss = model.train_loss(network, images, labels, params)[0]
        scaled_loss = optimizer.scale_loss(loss)
      optimizer.apply(tape.gradient(scaled_loss, variables), variables)
    return loss
  return loop


def _bare_inference_loop(network, images):
  """`loop(num_steps)`: a plain tf.function loop of network(images, training=False)."""
  @tf.function
  def loop(num_steps):
    total = tf.constant(0.0)
    for _ in tf.range(num_steps):
      total += tf.reduce_sum(network(images, training=False))
    return total
  return loop


def _bare_seconds(loop, steps, per_step):
  """Seconds of `steps` steps of `loop`: each timed alone (per_step), or all in one call (one
  element: seconds per step)."""
  def timed(n):
    start = time.perf_counter()
    loop(tf.constant(n)).numpy()
    return time.perf_counter() - start
  return [timed(1) for _ in range(steps)] if per_step else [timed(steps) / steps]


def _pipeline_pattern(scratch):
  """The real pipeline's TFRecords: --file_pattern, --synthetic_jpegs written to `scratch`, or None."""
  if FLAGS.synthetic_jpegs:
    logging.info("Writing %d synthetic JPEG records to %s", FLAGS.synthetic_jpegs, scratch)
    return write_synthetic_records(FLAGS.synthetic_jpegs, scratch)
  return FLAGS.file_pattern


def _measure_network(mode, configuration, dtype, pattern, steps, rounds):
  """Rows for one network and dtype, and the matmul peaks (FLOP/s) measured meanwhile.

  Synthetic input (one in-memory batch, repeated): rounds of [matmul peak, runner, bare loop], the
  first round untimed (tracing, warm-up); each rate is the best step (training: every step timed
  on its own; inference: a pass of `steps` batches) over the rounds. Short, interleaved
  measurements let other work on the machine hit every measurement alike. Then, when `pattern` is
  set, the runner on the real pipeline: mean step time after a warm-up pass (a step's best would
  credit batches the pipeline prefetched while the model waited).
  """
  training = mode == "train"
  params = _benchmark_params(configuration, dtype, 1 if training else steps)
  runner = _runner_train_seconds if training else _runner_inference_seconds
  batch_size, peaks, rounds_detail = params["batch_size"], [], []
  with tempfile.TemporaryDirectory() as model_dir:
    estimator = train.build_estimator(params, model_dir)
    network = estimator.scaffold.network
    _, totals = stats.model_statistics(network)
    images, labels = _synthetic_batch(params)
    synthetic_fn = lambda ctx: tf.data.Dataset.from_tensors(
        ({"image": images}, {"class_idx": labels})).repeat()
    bare = (_bare_train_loop(network, params, images, labels) if training
            else _bare_inference_loop(network, images))
    best = {"runner": float("inf"), "bare": float("inf")}
    for round_index in range(rounds + 1):
      peaks.append(matmul_peak(FLAGS.matmul_size))
      measure = {"runner": lambda: runner(estimator, synthetic_fn, steps),
                 "bare": lambda: _bare_seconds(bare, steps, per_step=training)}
      order = ["runner", "bare"] if round_index % 2 else ["bare", "runner"]  # no order bias
      seconds = {k: min(measure[k]()) for k in order}
      rates = {k: batch_size / v for k, v in seconds.items()}
      rounds_detail.append({"matmul_gflops": peaks[-1] / 1e9, **rates})
      logging.info("%s %s %s round %d/%d: runner %.1f, bare %.1f images/s, matmul %.1f GFLOP/s",
                   mode, configuration, dtype, round_index, rounds, rates["runner"], rates["bare"],
                   peaks[-1] / 1e9)
      if round_index:  # round 0 traces the functions
        best = {k: min(v, seconds[k]) for k, v in best.items()}
    rows = [dict(input="synthetic", runner=batch_size / best["runner"],
                 bare=batch_size / best["bare"], rounds=rounds_detail[1:])]
    if pattern:
      pipeline_fn = lambda ctx: dataloader.input_fn(pattern, training, params, ctx).repeat()
      runner(estimator, pipeline_fn, steps)  # warm-up: fills the shuffle buffer, tunes tf.data
      step_seconds = runner(estimator, pipeline_fn, steps * rounds)
      rows.append(dict(input=f"pipeline ({params['preprocessing']})",
                       runner=batch_size / float(np.mean(step_seconds))))
  # Nominal FLOP per image: 2 per MAC; training counts the forward pass and twice it backward.
  flop_per_image = (3 if training else 1) * 2 * totals["macs"]
  for row in rows:
    row["images/s"] = row.pop("runner")
    row.update({"network": _network_label(configuration), "dtype": dtype,
                "GFLOP/s": row["images/s"] * flop_per_image / 1e9})
  return rows, peaks


_SPEED_COLUMNS = ["network", "dtype", "input", "images/s", "bare images/s", "runner/bare",
                  "GFLOP/s", "% of matmul peak"]


def _speed_cases():
  """(configuration, dtype) pairs from --configuration and --dtype ('official': the five)."""
  names = list(PUBLISHED) if FLAGS.configuration == ["official"] else FLAGS.configuration
  return [(name, dtype) for name in names for dtype in FLAGS.dtype]


def _run_speed(mode, cases):
  """The `train` or `inference` table for `cases`, (configuration, dtype) pairs (see the module
  docstring); the FLOP rates are against the best float32 matmul rate measured in the run."""
  peaks, rows = [], []
  load_at_start = round(os.getloadavg()[0], 2)  # before this run adds its own load (~cores)
  with tempfile.TemporaryDirectory() as scratch:
    pattern = _pipeline_pattern(scratch)
    for configuration, dtype in cases:
      case_rows, case_peaks = _measure_network(mode, configuration, dtype, pattern, FLAGS.steps,
                                               FLAGS.rounds)
      rows, peaks = rows + case_rows, peaks + case_peaks
      keras.backend.clear_session()
  best_peak = max(peaks)
  for row in rows:
    bare = row.pop("bare", None)
    row["bare images/s"] = bare if bare else "-"
    row["runner/bare"] = f"{row['images/s'] / bare:.3f}" if bare else "-"
    row["% of matmul peak"] = f"{100 * row['GFLOP/s'] * 1e9 / best_peak:.1f}"
  return {"benchmark": mode, "columns": _SPEED_COLUMNS, "rows": rows,
          "matmul_peak_gflops": best_peak / 1e9, "matmul_size": FLAGS.matmul_size,
          "flop_per_image": "3 x 2 x MACs (training)" if mode == "train" else "2 x MACs",
          "batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size, "steps": FLAGS.steps,
          "rounds": FLAGS.rounds, **machine(), "load_average_1min_at_start": load_at_start}


def machine():
  """The machine and the run: CPU model, logical cores, TensorFlow version, date, command, and the
  1-minute load average now (other work on the machine lowers every rate)."""
  cpu = platform.processor()
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                 cpu)
  return {"cpu": cpu, "cores": os.cpu_count(), "tensorflow": tf.__version__,
          "date": datetime.date.today().isoformat(),
          "command": "python scripts/benchmark.py " + " ".join(sys.argv[1:]),
          "load_average_1min": round(os.getloadavg()[0], 2)}


def run_train():
  """The `train` benchmark: images/second of the training step (see the module docstring)."""
  return _run_speed("train", _speed_cases())


def run_inference():
  """The `inference` benchmark: images/second of the EVAL step (see the module docstring)."""
  return _run_speed("inference", _speed_cases())


def run_all():
  """Every benchmark, for the README's results section: the machine, complexity, train and
  inference, and input when --file_pattern or --synthetic_jpegs is given.

  Speed cases: --configuration x --dtype; by default (a few minutes on 2 cores) 1.0-SqNxt-23 in
  float32 and bfloat16. Every network: add --configuration official (about 2 minutes per network
  and dtype on 2 cores).
  """
  if not FLAGS["dtype"].present:
    FLAGS.dtype = ["float32", "bfloat16"]
  cases = _speed_cases()
  load_at_start = round(os.getloadavg()[0], 2)
  sections = [run_complexity(), _run_speed("train", cases), _run_speed("inference", cases)]
  if FLAGS.file_pattern or FLAGS.synthetic_jpegs:
    sections.append(run_input())
  info = {**machine(), "load_average_1min_at_start": load_at_start}
  columns = ["cpu", "cores", "tensorflow", "date", "command", "load_average_1min_at_start"]
  return {"benchmark": "all", "columns": columns, "rows": [info], "sections": sections}

# Sub-command name -> function returning {"columns": [...], "rows": [...], ...}.
SUBCOMMANDS = {
    "input": run_input,
    "complexity": run_complexity,
    "train": run_train,
    "inference": run_inference,
    "all": run_all,
}


def main(argv):
  if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
    raise UserError(f"expected one sub-command, one of {sorted(SUBCOMMANDS)}; got {argv[1:]}")
  results = SUBCOMMANDS[argv[1]]()
  print(f"\n`python scripts/benchmark.py {' '.join(sys.argv[1:])}` ({os.cpu_count()} CPUs)\n")
  for section in [results] + results.get("sections", []):  # `all`: the machine, then each table
    print(f"\n{section['benchmark']}:\n\n{markdown_table(section['columns'], section['rows'])}")
  if FLAGS.output_json:
    write_json(FLAGS.output_json, results)


if __name__ == "__main__":
  cli.run(main)
