r"""Benchmarks, one sub-command each, printed as Markdown tables (and optionally saved as JSON).
Run from the repository's root:

  python -m scripts.benchmark complexity
  python -m scripts.benchmark input --synthetic_jpegs 1024 [--preprocessing caffe|inception]
      [--max_short_side 256]
  python -m scripts.benchmark input --file_pattern 'DIR/train-*'
  python -m scripts.benchmark train [--configuration v_1_0_SqNxt_23|official]
      [--dtype float32,bfloat16]
  python -m scripts.benchmark inference [same flags]
  python -m scripts.benchmark layers --configuration v_1_0_SqNxt_23 [--dtype bfloat16]
      [--mode train|inference] [--profile_dir DIR]
  python -m scripts.benchmark all [--synthetic_jpegs 512]

`complexity`: params and MACs at 227 of the five official networks measured from the built model
(tools/recipe/stats.py) next to the official figures (`PUBLISHED`: params and MACs from the official Caffe
prototxts, top-1/top-5 from the paper, arXiv 1803.10615); then pytorchcv's six networks of osmr's
ImageNet weights at 224 next to pytorchcv's parameter counts and osmr's accuracy
(`PYTORCHCV_PUBLISHED`).

`input`: images/second over the same files, with the same parallelism, in alternating rounds (the
best round of each is reported) of: decode-only (parse + `tf.io.decode_jpeg` of every record: the
bound of a pipeline that decodes every pixel); a plain tf.data reference written here after Model
Garden's ResNet ImageNet input (`_reference_dataset`), for training and for evaluation; this
project's `dataloader.input_fn` in training and evaluation, and in training through a tf.data
service with 1 and 2 workers in this process (the service's overhead: on other machines the workers
add their cores); and, when the peers are installed (requirements-peers.txt), a PyTorch
DataLoader with one worker per core doing torchvision's RandomResizedCrop / flip / normalise with
Pillow and numpy. Columns: images/s, ratio to input_fn training, and CPU cores per 10,000 images/s
(CPU seconds of the process and its workers per image x 10,000: the cores a 10,000 images/s
accelerator would need).

`train` / `inference`: images/second of the training step (Estimator.train -> model_fn TRAIN:
forward, backward, update) and of evaluation (Estimator.evaluate -> model_fn EVAL) on one in-memory
batch repeated (the model alone), and on the real pipeline with --file_pattern or --synthetic_jpegs;
next to a bare tf.function GradientTape (or forward) loop over the same network with the same loss
and recipe, the ratio runner/bare (the median over the rounds of each round's ratio: both are timed
back to back in a round, so the ratio is paired and a burst of load on one of them does not decide
it), the runner's speed against float32 in the same rounds ("vs float32": the median over the
rounds of each round's float32/dtype step time; all dtypes of a network share the rounds), and the
nominal FLOP rate (2 FLOP per MAC; training 3 x forward)
as a share of the best float32 --matmul_size matmul rate measured in the run. With the peers
installed, pytorchcv's SqueezeNext of the same configuration (`PEER_MODELS`), channels_last, SGD
with momentum on the same batch, float32 or bfloat16 autocast, eager and torch.compile (compile time
reported apart) is timed in the same rounds, and a second table gives project/peer per dtype and
best against best. Everything is measured in alternating rounds, the first untimed, the best of
each reported, so that a burst of other work on the machine does not decide a ratio.

`layers`: per layer of tools/recipe/stats.py's table, params, MACs and the time measured by TensorFlow's
profiler over a few bare steps (forward; backward in train mode), attributed to layers by the op
names' scopes, with the share of the step, achieved GFLOP/s and arithmetic intensity; the rows add
up to the measured step, the unattributed rest in rows of its own. --profile_dir keeps the trace
for TensorBoard's profile tab.

`all`: the machine (CPU, cores, CPU features, TensorFlow, date, command, load) and every table.

Under every train, inference and layers table a line names the hardware (`hardware_note`): the CPU
model, cores and which of AVX2 / AVX-512 / AVX512-BF16 / AMX it has, and the instruction sets of the
kernels oneDNN runs (ONEDNN_VERBOSE=1 in a child process: e.g. convolution avx512_core_bf16), so that
figures of machines of different kinds are never mixed; --noonednn_probe leaves the kernels out.

Adding a sub-command: write `def run_<name>() -> dict` returning {"benchmark": name, "columns":
[...], "rows": [...], ...} (optionally "notes": [str] and "sections": [more such dicts]) and
register it in `SUBCOMMANDS`; `main` prints the tables and writes the JSON.
"""

import collections
import contextlib
import dataclasses
import datetime
import functools
import glob
import importlib
import io
import json
import math
import os
import random
import re
import struct
import statistics
import sys
import tempfile
import time

from absl import flags
from absl import logging
import cv2
import keras
import numpy as np
import tensorflow as tf

import dataloader
import estimator as estimator_lib
import model
from tools.cli import flags as cli
from tools.datasets import demo_data
from tools.recipe import experiment
from tools.recipe import hardware
from tools.recipe import optimizer as optimizer_lib
from tools.recipe import params as params_lib
from tools.datasets import records
from tools.recipe import stats
from tools.common import one_line
from tools.common import UserError

FLAGS = flags.FLAGS

# --synthetic_jpegs: (height, width) of most ImageNet photos (500 wide, 375 high), a camera-like
# JPEG quality, and crops of 85-100% of the largest 4:3 window of the sample photos (640x427), so
# that resizing keeps their detail.
_SYNTHETIC_SHAPE = (375, 500)
_SYNTHETIC_JPEG_QUALITY = 90
_SYNTHETIC_COVERAGE = (0.85, 1.0)
_SYNTHETIC_SHARDS = 16
_IMAGENET_CLASSES = 1000
_IMAGENET_EXAMPLES = optimizer_lib.IMAGENET_TRAIN_EXAMPLES
PEERS_HINT = "pip install -r requirements-peers.txt"
SPEED_MODES = ("train", "inference")


def define_flags():
  """Defines the program's flags once (importing this module defines none)."""
  cli.define_flag("string", "output_json", None, "Also write the results to this JSON file.")
  cli.define_flag("string", "file_pattern", None, "input/train/inference: TFRecord files to read.")
  cli.define_flag("integer", "synthetic_jpegs", 0,
                  "input/train/inference: first write this many photographic JPEG records (375x500 "
                  "crops of scikit-learn's sample photos, quality 90) to a temporary folder and read "
                  "them.")
  cli.define_flag("integer", "max_short_side", 0,
                  "input with --synthetic_jpegs: also store the images with their shorter side at most "
                  "this many pixels (build_tfrecords --max_short_side) and time input_fn on them.")
  # The preprocessings with a plain reference pipeline (_reference_preprocess, pillow_transform).
  cli.define_flag("enum", "preprocessing", "caffe", "Preprocessing of the pipelines.",
                  enum_values=["caffe", "inception"])
  cli.define_flag("integer", "image_size", 227, "Image side in pixels.")
  cli.define_flag("integer", "batch_size", 64, "Batch size.")
  cli.define_flag("integer", "rounds", 3, "Timed rounds of each measurement; the best is reported "
                  "(runner/bare: the median of the rounds' ratios).")
  cli.define_flag("integer", "max_images", 4096, "input: images timed per measurement (at most one pass).")
  cli.define_flag("list", "configuration", ["v_1_0_SqNxt_23"],
                  "Networks (names in model.CONFIGURATIONS, comma-separated, or 'official' for the five "
                  "official ones); layers: one name; complexity: official ones, default the five.")
  cli.define_flag("list", "dtype", ["float32"],
                  "Compute dtypes, comma-separated, of float32|bfloat16|float16 (16-bit: Keras mixed "
                  "precision, float32 variables; peers: autocast).")
  cli.define_flag("integer", "steps", 5, "train/inference/layers: steps (batches) per timed measurement.")
  cli.define_flag("integer", "matmul_size", 4096,
                  "train/inference: side N of the float32 N x N matmul whose rate is the peak.")
  cli.define_flag("boolean", "peers", True,
                  f"Also time the PyTorch peers when they are installed ({PEERS_HINT}).")
  cli.define_flag("boolean", "peer_compile", True,
                  "train/inference: also time the peer under torch.compile.")
  cli.define_flag("boolean", "onednn_probe", True,
                  "train/inference/layers: name the kernels oneDNN runs beside the tables (one "
                  "training step with ONEDNN_VERBOSE=1 in a child process, 10-30 s).")
  cli.define_flag("enum", "mode", "train", "layers: profile a training step or inference.",
                  enum_values=list(SPEED_MODES))
  cli.define_flag("string", "profile_dir", None,
                  "layers: keep the profiler trace here (TensorBoard --logdir DIR, profile tab).")


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


def machine():
  """The machine and the run: CPU model, logical cores and vector features, TensorFlow version (and
  torch when installed), date, command, and the 1-minute load average now (other work lowers every
  rate)."""
  torch = _import_or_none("torch")
  return {"cpu": hardware.cpu_model(), "cores": os.cpu_count(),
          "cpu features": ", ".join(hardware.cpu_features()) or "unknown",
          "tensorflow": tf.__version__, "torch": torch.__version__ if torch else "-",
          "date": datetime.date.today().isoformat(),
          "command": "python -m scripts.benchmark " + " ".join(sys.argv[1:]),
          "load_average_1min": round(os.getloadavg()[0], 2)}


# The primitives whose kernels a hardware note names (pooling and reorders are a small share).
_NOTED_PRIMITIVES = ("convolution", "batch_normalization")


@functools.lru_cache(maxsize=None)
def hardware_note(configuration, dtypes, probe=True):
  """One line naming the hardware behind a table, so that figures of machines of different kinds
  are never mixed: the CPU model, cores and which of AVX2 / AVX-512 / AVX512-BF16 / AMX it has,
  and the instruction sets of the kernels oneDNN runs in `configuration`'s training step per dtype
  (tools/recipe/hardware.onednn_kernels: a child process with ONEDNN_VERBOSE=1, 10-30 s, once per run).

  Args:
    configuration: a name in model.CONFIGURATIONS; dtypes: a tuple of names in model.DTYPES.
    probe: False leaves oneDNN's kernels out (no child process).
  """
  features = hardware.cpu_features()
  missing = [name for name, _ in hardware.CPU_FEATURES if name not in features]
  line = (f"Hardware: {hardware.cpu_model()}, {os.cpu_count()} cores, "
          f"{', '.join(features) or 'no AVX2'}" + (f", no {', '.join(missing)}" if missing else ""))
  if not probe:
    return line
  onednn = hardware.onednn_kernels(configuration, list(dtypes))
  if not onednn["kernels"]:
    return f"{line}; TensorFlow's Eigen kernels (oneDNN off or silent: TF_ENABLE_ONEDNN_OPTS)"
  kernels = "; ".join(
      f"{dtype} " + ", ".join(f"{primitive} {'+'.join(hardware.kernel_isas(found[primitive]))}"
                               for primitive in _NOTED_PRIMITIVES if primitive in found)
      for dtype, found in onednn["kernels"].items())
  return (f"{line}; {onednn['version']} ({onednn['isa']}), kernels in a "
          f"{_network_label(configuration)} training step: {kernels}")


def sections(results):
  """The tables of `results` in print order: itself, then its sections (recursively)."""
  return [results] + [s for section in results.get("sections", []) for s in sections(section)]


def _import_or_none(name):
  try:
    return importlib.import_module(name)
  except ImportError:
    return None


def _cpu_seconds(pids):
  """CPU seconds (user + system) used so far by the processes `pids` (all their threads); a
  process that has ended counts 0. Without /proc: this process's time.process_time()."""
  if not os.path.exists("/proc/self/stat"):
    return time.process_time()
  total = 0
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    except (OSError, IndexError, ValueError):
      pass
  return total / os.sysconf("SC_CLK_TCK")


def _alternate(measures, rounds, label):
  """Runs `measures` ({name: fn() -> list of seconds}) in rounds + 1 rounds, the order reversed
  every other round, the first round untimed (tracing, compilation, warm-up).

  Returns:
    ({name: best seconds over the timed rounds}, [{name: best seconds of the round}, ...]).
  """
  best, detail = {name: float("inf") for name in measures}, []
  for round_index in range(rounds + 1):
    order = list(measures) if round_index % 2 else list(reversed(list(measures)))
    seconds = {name: min(measures[name]()) for name in order}
    logging.info("%s round %d/%d: %s", label, round_index, rounds,
                 ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()))
    if round_index:
      best = {k: min(v, seconds[k]) for k, v in best.items()}
      detail.append(seconds)
  return best, detail


# ------------------------------------------------------------------------------------------------
# input


def write_synthetic_records(num_images, folder, seed=0):
  """Writes `num_images` photographic JPEGs at an ImageNet size (crops of scikit-learn's two sample
  photographs, tools/datasets/demo_data.write_photo_crops) as class folders (`folder`/images) and TFRecords
  under `folder`. Real photographs, not generated noise: their JPEG entropy decides the decoding
  cost, and crop windows of varied cost are what an input pipeline meets on ImageNet.

  Returns:
    str, the pattern of the TFRecord files (up to 16 shards, 2 classes, no validation split).
  """
  images_dir = demo_data.write_photo_crops(
      os.path.join(folder, "images"), num_images, _SYNTHETIC_SHAPE, seed,
      quality=_SYNTHETIC_JPEG_QUALITY, coverage=_SYNTHETIC_COVERAGE, grayscale_every=0)
  result = records.build(images_dir, os.path.join(folder, "records"), "folders",
                         validation_fraction=0.0, train_shards=min(_SYNTHETIC_SHARDS, num_images))
  return result.train_pattern


def _pipeline_pattern(scratch):
  """The TFRecords to read: --file_pattern, or --synthetic_jpegs written to `scratch`, or None."""
  if FLAGS.synthetic_jpegs:
    logging.info("Writing %d photographic JPEG records to %s", FLAGS.synthetic_jpegs, scratch)
    return write_synthetic_records(FLAGS.synthetic_jpegs, scratch)
  return FLAGS.file_pattern


def _parse_record(record):
  """(encoded image bytes, 0-based int32 label) of one ImageNet-schema record."""
  features = tf.io.parse_single_example(record, {
      "image/encoded": tf.io.FixedLenFeature([], tf.string),
      "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=1)})
  return features["image/encoded"], tf.cast(features["image/class/label"] - 1, tf.int32)


def _decode_only_dataset(file_pattern, input_params, batch_size):
  """Parse + full `tf.io.decode_jpeg` of every record, with input_fn's reading, parallelism and
  options (and IDCT: the bound must decode the way the pipeline does), repeated; yields image
  shapes."""
  p = input_params
  files = tf.data.Dataset.from_tensor_slices(dataloader.list_files(file_pattern)).repeat()
  dataset = files.flat_map(lambda f: tf.data.TFRecordDataset(f, buffer_size=p.read_buffer_size))

  def decode(record):
    image = tf.io.decode_jpeg(_parse_record(record)[0], channels=3, dct_method=p.dct_method)
    return tf.shape(image)  # only the shape leaves the pipeline
  dataset = dataset.map(decode, num_parallel_calls=dataloader.map_parallelism(p))
  dataset = dataset.batch(batch_size).prefetch(p.prefetch_buffer_size)
  return dataset.with_options(dataloader.dataset_options(p, False))


def _reference_preprocess(record, input_params, image_size, training):
  """Model Garden's ResNet ImageNet preprocessing of one record (--preprocessing inception), or its
  plain Caffe equivalent (decode, resize 256x256, random crop and flip; evaluation: the central
  crop): float32 [S, S, 3] minus the mean (per element), int32 label."""
  encoded, label = _parse_record(record)
  resize = round(image_size * 256 / 227)  # 256 at 227, as dataloader's caffe preprocessing
  if input_params.preprocessing == "inception" and not training:
    # Model Garden's decode_and_center_crop: the central S / (S + 32) of the short side.
    shape = tf.io.extract_jpeg_shape(encoded)
    side = tf.cast(image_size / (image_size + 32) * tf.cast(tf.reduce_min(shape[:2]), tf.float32),
                   tf.int32)
    window = tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2, side, side])
    image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
  elif not training:
    image = tf.image.resize(tf.io.decode_jpeg(encoded, channels=3), [resize, resize])
    image = tf.image.crop_to_bounding_box(image, (resize - image_size) // 2,
                                          (resize - image_size) // 2, image_size, image_size)
  elif input_params.preprocessing == "inception":
    shape = tf.io.extract_jpeg_shape(encoded)
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, whole_image, min_object_covered=0.1, aspect_ratio_range=[0.75, 1.33],
        area_range=[0.05, 1.0], max_attempts=100, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
    image = tf.image.random_flip_left_right(image)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
  else:
    image = tf.image.resize(tf.io.decode_jpeg(encoded, channels=3), [resize, resize])
    image = tf.image.random_crop(image, [image_size, image_size, 3])
    image = tf.image.random_flip_left_right(image)
  return image - tf.constant(dataloader.normalization(input_params)[0], tf.float32), label


def _reference_dataset(file_pattern, input_params, image_size, batch_size, training=True):
  """A plain tf.data pipeline written after Model Garden's ResNet ImageNet input: files interleaved
  (cycle 10, AUTOTUNE), in training shuffle 10,000, map AUTOTUNE, batch, prefetch AUTOTUNE; with
  input_fn's dataset options (threads, determinism), so that only the pipelines differ. Repeated."""
  files = tf.data.Dataset.list_files(file_pattern, shuffle=training)
  dataset = files.interleave(tf.data.TFRecordDataset, cycle_length=10,
                             num_parallel_calls=tf.data.AUTOTUNE)
  if training:
    dataset = dataset.shuffle(10_000)
  dataset = dataset.repeat().map(
      lambda r: _reference_preprocess(r, input_params, image_size, training),
      num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return dataset.with_options(dataloader.dataset_options(input_params, training))


def tfrecord_index(files):
  """[(path, offset, length)] of every record of the TFRecord `files`, read from the framing
  (8-byte length, 4-byte CRC, data, 4-byte CRC) without TensorFlow."""
  index = []
  for path in files:
    size, offset = os.path.getsize(path), 0
    with open(path, "rb") as f:
      while offset + 12 <= size:
        f.seek(offset)
        length = struct.unpack("<Q", f.read(8))[0]
        index.append((path, offset + 12, length))
        offset += 12 + length + 4
  return index


def random_resized_crop_box(width, height, scale, ratio, rng=random):
  """torchvision's RandomResizedCrop window: (left, top, right, bottom) pixels of an image of
  `width` x `height`, area in `scale` (fractions), aspect ratio in `ratio` (log-uniform); 10 tries,
  then the central crop of the ratio clamped to `ratio`."""
  area = width * height
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      left, top = rng.randint(0, width - w), rng.randint(0, height - h)
      return left, top, left + w, top + h
  w, h = width, height
  if width / height < ratio[0]:
    h = round(width / ratio[0])
  elif width / height > ratio[1]:
    w = round(height * ratio[1])
  left, top = (width - w) // 2, (height - h) // 2
  return left, top, left + w, top + h


def pillow_transform(image, preprocessing, image_size, mean_rgb, rng=random):
  """torchvision-like training transforms with Pillow and numpy: inception: RandomResizedCrop
  (area 0.05-1, the project's range; aspect 3/4-4/3) with bilinear resize; caffe: resize to 256x256
  (at 227) and random crop; then random flip and normalise to pixel - mean. Returns float32
  [3, S, S] (channels first, as torchvision's ToTensor)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  size = image_size
  if preprocessing == "inception":
    box = random_resized_crop_box(*image.size, (0.05, 1.0), (3 / 4, 4 / 3), rng)
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
  else:
    resize = round(size * 256 / 227)
    image = image.resize((resize, resize), Image.Resampling.BILINEAR)
    left, top = rng.randint(0, resize - size), rng.randint(0, resize - size)
    image = image.crop((left, top, left + size, top + size))
  if rng.random() < 0.5:
    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  array = np.asarray(image, np.float32) - np.float32(mean_rgb)
  return np.ascontiguousarray(array.transpose(2, 0, 1))


class RecordImages:
  """A map-style dataset for torch.utils.data.DataLoader over TFRecord files: item i is (float32
  [3, S, S] image, int label) from Pillow decoding and `pillow_transform`; no TensorFlow is used in
  the workers (records are read by offset, parsed with the protobuf class)."""

  def __init__(self, file_pattern, preprocessing, image_size, mean_rgb):
    self.index = tfrecord_index(dataloader.list_files(file_pattern))
    self.preprocessing, self.image_size, self.mean_rgb = preprocessing, image_size, mean_rgb
    self._files = {}

  def __len__(self):
    return len(self.index)

  def __getitem__(self, i):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    path, offset, length = self.index[i]
    f = self._files.get((os.getpid(), path)) or open(path, "rb")  # one handle per worker and file
    self._files[(os.getpid(), path)] = f
    f.seek(offset)
    feature = tf.train.Example.FromString(f.read(length)).features.feature
    image = Image.open(io.BytesIO(feature["image/encoded"].bytes_list.value[0])).convert("RGB")
    label = feature["image/class/label"].int64_list.value[0] - 1
    return pillow_transform(image, self.preprocessing, self.image_size, self.mean_rgb), label


def _torch_loader(file_pattern, input_params, image_size, batch_size):
  """(iterator, pids) of a PyTorch DataLoader over RecordImages: shuffled epochs without end (as
  the tf.data pipelines repeat; the workers live as long as the iterator), one worker per core,
  full batches; pids: this process and its workers (for the CPU time)."""
  torch = importlib.import_module("torch")
  dataset = RecordImages(file_pattern, input_params.preprocessing, image_size,
                         dataloader.normalization(input_params)[0])
  sampler = torch.utils.data.RandomSampler(dataset, num_samples=2 ** 31 - 1)  # new order each pass
  loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       num_workers=os.cpu_count(), drop_last=True)
  iterator = iter(loader)
  workers = getattr(iterator, "_workers", [])
  return iterator, [os.getpid()] + [w.pid for w in workers]


def _images_per_second(iterator, pids, max_images, warmup_batches):
  """(images/s, CPU seconds per image) over at most `max_images` images after `warmup_batches`
  untimed batches (start-up: threads, workers, autotuning); CPU time of the processes `pids`."""
  for _ in range(warmup_batches):
    next(iterator)
  images, cpu, start = 0, _cpu_seconds(pids), time.perf_counter()
  for batch in iterator:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    images += int(first["image"].shape[0] if isinstance(first, dict) else first.shape[0])
    if images >= max_images:
      break
  seconds, cpu = time.perf_counter() - start, _cpu_seconds(pids) - cpu
  return images / seconds, cpu / max(images, 1)


@contextlib.contextmanager
def local_data_services(worker_counts):
  """tf.data service dispatchers in this process, one per entry of `worker_counts`, each with that
  many workers (also in this process); yields their addresses ("grpc://localhost:PORT")."""
  service = tf.data.experimental.service
  servers, addresses = [], []
  for count in worker_counts:
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    address = dispatcher.target.removeprefix("grpc://")
    servers += [dispatcher, *(service.WorkerServer(service.WorkerConfig(
        dispatcher_address=address, port=0)) for _ in range(count))]
    addresses.append(dispatcher.target)
  try:
    yield addresses
  finally:
    for server in reversed(servers):
      server._stop()  # pylint: disable=protected-access


def _input_pipelines(pattern, params, peers, services):
  """{name: make() -> (iterator, pids)}: the pipelines of the `input` table, over `pattern`;
  `services`: addresses of local tf.data services with 1 and 2 workers."""
  p, size, batch = params.input, params.model.image_size, params.batch_size

  def served(address):
    served_params = dataclasses.replace(
        params, input=dataclasses.replace(p, data_service_address=address))
    return _tf_pipeline(lambda: experiment.make_input_fn(served_params, pattern, True)(None))
  pipelines = {
      "decode-only (parse + decode_jpeg)": _tf_pipeline(
          lambda: _decode_only_dataset(pattern, p, batch)),
      "tf.data reference (Model Garden ResNet)": _tf_pipeline(
          lambda: _reference_dataset(pattern, p, size, batch)),
      "tf.data reference evaluation": _tf_pipeline(
          lambda: _reference_dataset(pattern, p, size, batch, training=False)),
      "input_fn training": _tf_pipeline(
          lambda: experiment.make_input_fn(params, pattern, True)(None)),
      # Repeated, so that its steady state is timed as the others' (no pass ends in the window).
      "input_fn evaluation": _tf_pipeline(
          lambda: experiment.make_input_fn(params, pattern, False)(None).repeat()),
      "input_fn training, tf.data service, 1 local worker": served(services[0]),
      "input_fn training, tf.data service, 2 local workers": served(services[1]),
  }
  if peers:
    pipelines[f"PyTorch DataLoader + Pillow ({os.cpu_count()} workers)"] = (
        lambda: _torch_loader(pattern, p, size, batch))
  return pipelines


def _tf_pipeline(make_dataset):
  """A pipeline of the `input` table that runs in this process: make() -> (iterator, [pid])."""
  return lambda: (iter(make_dataset()), [os.getpid()])


def _short_side_pipelines(scratch, max_short_side):
  """The input_fn rows over the synthetic images of `scratch` stored with their shorter side at most
  `max_short_side` pixels (records.build's option), written to `scratch`/short_side."""
  pattern = records.build(os.path.join(scratch, "images"), os.path.join(scratch, "short_side"),
                          "folders", validation_fraction=0.0,
                          train_shards=min(_SYNTHETIC_SHARDS, FLAGS.synthetic_jpegs),
                          max_short_side=max_short_side).train_pattern
  params = _input_params(pattern)
  return {f"input_fn {name}, short side <= {max_short_side}": _tf_pipeline(
      lambda training=training: experiment.make_input_fn(params, pattern, training)(None).repeat())
          for name, training in (("training", True), ("evaluation", False))}


def _peers_note(what):
  """The one line printed instead of the peer rows when the peers are not installed."""
  return f"{what}: skipped, PyTorch not installed ({PEERS_HINT})"


def _input_params(pattern):
  """The Params of the input benchmark: the flags' preprocessing, image size and batch."""
  user = dict(image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
              preprocessing=FLAGS.preprocessing, shuffle_buffer_size=1024)
  return params_lib.resolve_params(user, {"train_file_pattern": pattern,
                                          "num_examples_per_epoch": _IMAGENET_EXAMPLES})


def run_input():
  """The `input` benchmark (module docstring): images/s of each pipeline over the same files, the
  best of --rounds alternating rounds, its ratio to input_fn training and the CPU cores it needs per
  10,000 images/s."""
  notes = []
  peers = FLAGS.peers and _import_or_none("torch") is not None
  if FLAGS.peers and not peers:
    notes.append(_peers_note("PyTorch DataLoader"))
  with tempfile.TemporaryDirectory() as scratch, local_data_services([1, 2]) as services:
    pattern = _pipeline_pattern(scratch)
    if not pattern:
      raise UserError("input: give --file_pattern or --synthetic_jpegs", param="file_pattern")
    params = _input_params(pattern)
    num_records = records.count_examples(pattern)[0]
    max_images = min(FLAGS.max_images, num_records)
    pipelines = _input_pipelines(pattern, params, peers, services)
    if FLAGS.max_short_side and FLAGS.synthetic_jpegs:
      pipelines.update(_short_side_pipelines(scratch, FLAGS.max_short_side))
    best = {name: (0.0, 0.0) for name in pipelines}
    for round_index in range(FLAGS.rounds):
      names = list(pipelines) if round_index % 2 == 0 else list(reversed(list(pipelines)))
      for name in names:  # the same 2 untimed batches for every pipeline: the steady state
        rate, cpu = _images_per_second(*pipelines[name](), max_images, 2)
        logging.info("round %d: %s %.1f images/s, %.2f ms CPU per image", round_index + 1, name,
                     rate, cpu * 1e3)
        best[name] = max(best[name], (rate, cpu))
  reference = best["input_fn training"][0]
  rows = [{"pipeline": name, "images/s": rate, "ratio to input_fn training": rate / reference,
           "CPU cores per 10,000 images/s": cpu * 1e4} for name, (rate, cpu) in best.items()]
  columns = ["pipeline", "images/s", "ratio to input_fn training", "CPU cores per 10,000 images/s"]
  return {"benchmark": "input", "columns": columns, "rows": rows, "notes": notes,
          "records": num_records, "preprocessing": FLAGS.preprocessing,
          "image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size, "rounds": FLAGS.rounds,
          "cpus": os.cpu_count(), "load_average": os.getloadavg()}  # other work on the host


# ------------------------------------------------------------------------------------------------
# complexity


@dataclasses.dataclass(frozen=True)
class Published:
  """What the official release and the paper state about one network.

  Attributes:
    name: the paper's name (e.g. "1.0-SqNxt-23").
    params: trainable parameters (convolution and FC kernels, BN scale and shift).
    macs: multiply-accumulates per 227x227 image, convolutions and FC; None where none is given.
    top_1, top_5: published ImageNet accuracy in %, single 227 crop; None where the paper gives
      none.
  """
  name: str
  params: int
  macs: float | None
  top_1: float = None
  top_5: float = None


# The official figures, in this one place: params and MACs counted from the official Caffe
# prototxts of the SqueezeNext release; top-1/top-5 from the paper (arXiv 1803.10615, Table 2).
PUBLISHED = {
    "v_1_0_SqNxt_23": Published("1.0-SqNxt-23", 717_280, 278.0e6, 59.05, 82.60),
    "v_1_0_G_SqNxt_23": Published("1.0-G-SqNxt-23", 543_072, 224.2e6),
    "v_1_0_SqNxt_23_v5": Published("1.0-SqNxt-23v5", 930_016, 224.9e6, 59.24, 82.41),
    "v_2_0_SqNxt_23": Published("2.0-SqNxt-23", 2_361_728, 742.1e6, 67.18, 88.17),
    "v_2_0_SqNxt_23_v5": Published("2.0-SqNxt-23v5", 3_222_912, 702.6e6, 67.44, 88.20),
}
_PUBLISHED_SIZE = 227  # the input side of the published MACs and accuracies
# pytorchcv's networks of osmr's published ImageNet weights (model.PYTORCHCV_CONFIGURATIONS):
# params = pytorchcv 0.0.74's model_metainfos.csv net_weights (its squeezenext.py asserts them),
# accuracy = 100 - the top-1 / top-5 error % osmr reports for the pytorchcv files (imgclsmob's
# README; the top-5 error is also in the file names, e.g. sqnxt23_w1-1906-97b74e0c.pth), at 224
# pixels with the torchvision preprocessing. No MAC count is published with them.
PYTORCHCV_PUBLISHED = {
    "sqnxt23_w1": Published("1.0-SqNxt-23", 724_056, None, 57.49, 80.94),
    "sqnxt23_w3d2": Published("1.5-SqNxt-23", 1_511_824, None, 65.11, 86.50),
    "sqnxt23_w2": Published("2.0-SqNxt-23", 2_583_752, None, 69.38, 89.00),
    "sqnxt23v5_w1": Published("1.0-SqNxt-23v5", 921_816, None, 59.23, 82.15),
    "sqnxt23v5_w3d2": Published("1.5-SqNxt-23v5", 1_953_616, None, 66.19, 86.99),
    "sqnxt23v5_w2": Published("2.0-SqNxt-23v5", 3_366_344, None, 70.37, 89.34),
}
_PYTORCHCV_SIZE = model.PYTORCHCV_IMAGE_SIZE


def _network_label(configuration):
  published = PUBLISHED.get(configuration)
  return published.name if published else configuration


def _complexity_row(configuration, published, image_size):
  """One row: params and MACs of the built network (tools/recipe/stats.py) beside `published`'s."""
  network = model.build_network(configuration, _IMAGENET_CLASSES, image_size)
  _, totals = stats.model_statistics(network)
  keras.backend.clear_session()
  macs = published.macs
  return {
      "network": published.name, "configuration": configuration,
      "params": totals["params"], "official params": published.params,
      "params ratio": f"{totals['params'] / published.params:.4f}",
      "MMACs": f"{totals['macs'] / 1e6:.1f}", "official MMACs": f"{macs / 1e6:.1f}" if macs else "-",
      "MACs ratio": f"{totals['macs'] / macs:.4f}" if macs else "-",
      "top-1 %": f"{published.top_1:.2f}" if published.top_1 else "-",
      "top-5 %": f"{published.top_5:.2f}" if published.top_5 else "-"}


def run_complexity():
  """The `complexity` benchmark: params and MACs at 227 of each official network (or of those of
  --configuration, when given), measured from the built model (tools/recipe/stats.py), next to the official
  figures and the published accuracy; then pytorchcv's six networks at 224 beside pytorchcv's
  parameter counts and osmr's accuracy."""
  names = (list(PUBLISHED) + list(PYTORCHCV_PUBLISHED) if not FLAGS["configuration"].present
           else _official_names())
  columns = ["network", "configuration", "params", "official params", "params ratio", "MMACs",
             "official MMACs", "MACs ratio", "top-1 %", "top-5 %"]
  results = {"benchmark": "complexity", "columns": columns, "image_size": _PUBLISHED_SIZE,
             "num_classes": _IMAGENET_CLASSES,
             "rows": [_complexity_row(n, PUBLISHED[n], _PUBLISHED_SIZE) for n in names
                      if n in PUBLISHED]}
  peers = [n for n in names if n in PYTORCHCV_PUBLISHED]
  if peers:
    results["sections"] = [{
        "benchmark": f"complexity of pytorchcv's networks (osmr's ImageNet weights), "
                     f"{_PYTORCHCV_SIZE} px",
        "columns": [c for c in columns if "MACs" not in c or c == "MMACs"],
        "rows": [_complexity_row(n, PYTORCHCV_PUBLISHED[n], _PYTORCHCV_SIZE) for n in peers],
        "image_size": _PYTORCHCV_SIZE, "num_classes": _IMAGENET_CLASSES,
        "notes": ["official params: pytorchcv's count; top-1 / top-5: osmr's, for the pytorchcv "
                  "files (100 - the published errors)."]}]
  return results


# ------------------------------------------------------------------------------------------------
# train, inference: the project


def matmul_seconds(size):
  """`measure() -> [seconds]`: one float32 [size, size] x [size, size] tf.matmul in a tf.function
  (2 * size**3 FLOP), timed alone."""
  a = tf.random.uniform([size, size])
  b = tf.random.uniform([size, size])
  product = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))

  def measure():
    start = time.perf_counter()
    product(a, b).numpy()
    return [time.perf_counter() - start]
  return measure


def benchmark_params(configuration, dtype, steps_per_loop, pattern=None):
  """The Params of a benchmark run: ImageNet defaults (1,000 classes) with the flags' batch, size
  and preprocessing, `dtype`, no summaries, checkpoints only at the end of a `train` call, no
  population statistics."""
  if dtype not in model.DTYPES:
    raise UserError(f"--dtype={dtype}: expected one of {', '.join(model.DTYPES)}")
  user = dict(configuration=configuration, dtype=dtype, batch_size=FLAGS.batch_size,
              image_size=FLAGS.image_size, num_classes=_IMAGENET_CLASSES, max_steps=10 ** 6,
              steps_per_loop=steps_per_loop, save_checkpoints_steps=0, save_summary_steps=0,
              log_every_n_steps=0, image_summary_steps=0, output_train_images=False,
              preprocessing=FLAGS.preprocessing, shuffle_buffer_size=1024, precise_bn_examples=0)
  return params_lib.resolve_params(user, {"train_file_pattern": pattern,
                                          "num_examples_per_epoch": _IMAGENET_EXAMPLES})


def _synthetic_batch(params):
  """One in-memory batch: float32 images [B, S, S, 3] (mean-subtracted range), int32 labels [B]."""
  size, batch = params.model.image_size, params.batch_size
  images = tf.random.uniform([batch, size, size, 3], -128.0, 128.0, seed=1)
  labels = tf.random.uniform([batch], 0, params.model.num_classes, tf.int32, seed=2)
  return images, labels


class _StepTimer(estimator_lib.Hook):
  """Host times at the start of `Estimator.train` and after each of its loops (one step each with
  steps_per_loop 1), so that the step times leave out set-up and the final checkpoint."""

  def begin(self, estimator):
    del estimator
    self.times = [time.perf_counter()]

  def after_step(self, estimator, step, outputs):
    del estimator, step, outputs
    self.times.append(time.perf_counter())
    return False


def _runner_train_seconds(estimator, input_fn, steps):
  """Seconds of each of `steps` training steps through Estimator.train and model_fn (list)."""
  timer = _StepTimer()
  estimator.restore()
  estimator.train(input_fn, estimator.global_step + steps, hooks=(timer,))
  return list(np.diff(timer.times))


# Evaluation passes per inference measure: a round keeps the best, so that one burst of other work
# on the machine does not decide a round's runner/bare ratio.
_INFERENCE_PASSES = 3


def _runner_inference_seconds(estimator, input_fn, steps, passes=_INFERENCE_PASSES):
  """Seconds per batch of `passes` Estimator.evaluate passes (model_fn's EVAL branch) over `steps`
  batches each, set-up and summaries included (evaluate has no hooks); a list, one per pass."""
  def timed():
    start = time.perf_counter()
    estimator.evaluate(lambda ctx: input_fn(ctx).take(steps))
    return (time.perf_counter() - start) / steps
  return [timed() for _ in range(passes)]


def bare_train_loop(network, params, images, labels):
  """`loop(num_steps)`: a plain tf.function GradientTape loop over `network` with model_fn's loss
  (cross-entropy + weight decay, model.train_loss) and its own optimizer of the same recipe."""
  optimizer = optimizer_lib.build_optimizer(params.recipe,
                                            loss_scale=params.model.dtype == "float16")
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


def bare_inference_loop(network, images):
  """`loop(num_steps)`: a plain tf.function loop of network(images, training=False)."""
  @tf.function
  def loop(num_steps):
    total = tf.constant(0.0)
    for _ in tf.range(num_steps):
      total += tf.reduce_sum(network(images, training=False))
    return total
  return loop


def _bare_seconds(loop, steps, per_step):
  """Seconds of `steps` steps of `loop`: each timed alone (per_step), or `_INFERENCE_PASSES` calls
  of all the steps (one element per call: seconds per step)."""
  def timed(n):
    start = time.perf_counter()
    loop(tf.constant(n)).numpy()
    return time.perf_counter() - start
  if per_step:
    return [timed(1) for _ in range(steps)]
  return [timed(steps) / steps for _ in range(_INFERENCE_PASSES)]


def _project_measures(mode, estimator, params, steps):
  """{"runner": measure, "bare": measure} on one in-memory batch repeated; each measure() returns
  seconds per step (training: each step timed alone; inference: a pass of `steps` batches)."""
  training = mode == "train"
  network = estimator.restore().network
  images, labels = _synthetic_batch(params)
  # tf.data's autotuning has nothing to tune in a repeated constant; left on, the teardown of an
  # evaluation's iterator waited for its optimisation thread (1.9 s in 2-3 of 6 five-batch passes
  # of 1.0-SqNxt-23, 2026-12-01), a cost of the synthetic input, not of the runner.
  untuned = tf.data.Options()
  untuned.autotune.enabled = False
  synthetic_fn = lambda ctx: tf.data.Dataset.from_tensors(
      ({"image": images}, {"class_idx": labels})).repeat().with_options(untuned)
  runner = _runner_train_seconds if training else _runner_inference_seconds
  bare = (bare_train_loop(network, params, images, labels) if training
          else bare_inference_loop(network, images))
  return {"runner": lambda: runner(estimator, synthetic_fn, steps),
          "bare": lambda: _bare_seconds(bare, steps, per_step=training)}


def _pipeline_row(mode, estimator, params, pattern, steps, rounds):
  """The runner on the real pipeline: mean step time after a warm-up pass (a step's best would
  credit batches the pipeline prefetched while the model waited); a row."""
  training = mode == "train"
  runner = (_runner_train_seconds if training
            else functools.partial(_runner_inference_seconds, passes=1))
  make = experiment.make_input_fn(params, pattern, training)
  pipeline_fn = lambda ctx: make(ctx).repeat()
  runner(estimator, pipeline_fn, steps)  # warm-up: fills the shuffle buffer, tunes tf.data
  step_seconds = runner(estimator, pipeline_fn, steps * rounds)
  return dict(input=f"pipeline ({params.input.preprocessing})",
              runner=params.batch_size / float(np.mean(step_seconds)))


def nominal_flop(macs, images, training):
  """Nominal FLOP of a pass over `images` images of a network of `macs` MACs per image: 2 per MAC;
  training counts the forward pass and twice it backward (3 x forward)."""
  return 2 * macs * images * (3 if training else 1)


def _dtype_measures(mode, configuration, dtypes, pattern, peers, scratch):
  """{dtype: (params, estimator, peer or None)} and their measures, named "<measure> <dtype>"
  ("runner", "bare", "peer eager", "peer compiled"), each estimator in a folder of `scratch`."""
  training, cases, measures = mode == "train", {}, {}
  for dtype in dtypes:
    params = benchmark_params(configuration, dtype, 1 if training else FLAGS.steps, pattern)
    estimator = experiment.build_estimator(params, os.path.join(scratch, dtype))
    named = _project_measures(mode, estimator, params, FLAGS.steps)
    peer = PeerStep(mode, configuration, dtype, params) if peers else None
    if peer is not None:
      named.update(peer.measures(FLAGS.steps, FLAGS.peer_compile))
    measures.update({f"{name} {dtype}": measure for name, measure in named.items()})
    cases[dtype] = (params, estimator, peer)
  return cases, measures


def _of_dtype(timings, dtype):
  """{measure: value} of the "<measure> <dtype>" entries of `timings` ({name: seconds})."""
  suffix = f" {dtype}"
  return {name[:-len(suffix)]: value for name, value in timings.items() if name.endswith(suffix)}


def _synthetic_row(dtype, best, detail):
  """The synthetic-input row of `dtype` from the rounds (`_alternate`'s best and detail): runner and
  bare images/s, the paired runner/bare ratio and, with float32 in the rounds, "vs float32"."""
  batch, mine = FLAGS.batch_size, _of_dtype(best, dtype)
  seconds = [_of_dtype(r, dtype) for r in detail]
  float32 = [_of_dtype(r, "float32") for r in detail]
  return dict(input="synthetic", runner=batch / mine["runner"], bare=batch / mine["bare"],
              paired_ratio=statistics.median(r["bare"] / r["runner"] for r in seconds),
              versus=(statistics.median(f["runner"] / r["runner"] for f, r in zip(float32, seconds))
                      if float32[0] else None),
              rounds=[{k: batch / v for k, v in r.items()} for r in seconds])


def _measure_network(mode, configuration, dtypes, pattern, peers):
  """Rows of one network in each of `dtypes`, the matmul peaks (FLOP/s), the peer rows and notes.

  Synthetic input: rounds of [matmul, and per dtype runner, bare loop, peers...] (`_alternate`):
  every dtype in the same rounds, so that "vs float32" (the median over the rounds of each round's
  float32/dtype runner time) is paired as runner/bare is, and a burst of other work on the machine
  does not decide it. Then, when `pattern` is set, the runner on the real pipeline per dtype
  (`_pipeline_row`).
  """
  rows, peer_rows, notes = [], [], []
  with tempfile.TemporaryDirectory() as scratch:
    cases, measures = _dtype_measures(mode, configuration, dtypes, pattern, peers, scratch)
    measures["matmul"] = matmul_seconds(FLAGS.matmul_size)
    best, detail = _alternate(measures, FLAGS.rounds, f"{mode} {configuration}")
    _, totals = stats.model_statistics(cases[dtypes[0]][1].scaffold.network)
    flop_per_image = nominal_flop(totals["macs"], 1, mode == "train")
    for dtype, (params, estimator, peer) in cases.items():
      dtype_rows = [_synthetic_row(dtype, best, detail)]
      if pattern:
        dtype_rows.append(_pipeline_row(mode, estimator, params, pattern, FLAGS.steps,
                                        FLAGS.rounds))
      for row in dtype_rows:
        row["images/s"] = row.pop("runner")
        row.update({"network": _network_label(configuration), "dtype": dtype,
                    "GFLOP/s": row["images/s"] * flop_per_image / 1e9})
      rows += dtype_rows
      if peer is not None:
        peer_rows += peer.rows(_of_dtype(best, dtype), dtype_rows[0]["images/s"])
        notes += peer.notes
  peaks = [2.0 * FLAGS.matmul_size ** 3 / r["matmul"] for r in detail]
  return rows, peaks, peer_rows, notes


# ------------------------------------------------------------------------------------------------
# train, inference: the PyTorch peer (pytorchcv's SqueezeNext)

# This project's configurations and pytorchcv's models of the same network (none for the G network).
PEER_MODELS = {
    "v_1_0_SqNxt_23": "sqnxt23_w1",
    "v_1_0_SqNxt_23_v5": "sqnxt23v5_w1",
    "v_2_0_SqNxt_23": "sqnxt23_w2",
    "v_2_0_SqNxt_23_v5": "sqnxt23v5_w2",
    **{name: name for name in model.PYTORCHCV_CONFIGURATIONS},  # the same network, exactly
}


class PeerStep:
  """pytorchcv's SqueezeNext of `configuration` (pretrained=False: nothing is downloaded) on one
  random channels_last batch of the flags' size, float32 or `dtype` autocast, as step measures.

  Training: cross-entropy, backward, SGD with the recipe's learning rate, momentum and weight decay.
  Inference: eval mode, torch.inference_mode. `measures()` gives eager and torch.compile variants;
  compile time (first call minus a steady step) and a compile failure are kept apart.
  """

  def __init__(self, mode, configuration, dtype, params):
    self.torch = importlib.import_module("torch")
    squeezenext = importlib.import_module("pytorchcv.models.squeezenext")
    torch, size, batch = self.torch, params.model.image_size, params.batch_size
    self.name, self.mode, self.dtype = PEER_MODELS[configuration], mode, dtype
    self.network = getattr(squeezenext, self.name)(pretrained=False, num_classes=_IMAGENET_CLASSES,
                                                   in_size=(size, size))
    self.network = self.network.to(memory_format=torch.channels_last)
    self.network.train(mode == "train")
    self.images = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    self.labels = torch.randint(0, _IMAGENET_CLASSES, (batch,))
    r = params.recipe
    self.optimizer = torch.optim.SGD(self.network.parameters(), lr=r.base_learning_rate,
                                     momentum=r.momentum, weight_decay=r.weight_decay)
    self.compile_seconds, self.notes = None, []

  def _autocast(self):
    dtypes = {"bfloat16": self.torch.bfloat16, "float16": self.torch.float16}
    return self.torch.autocast("cpu", dtype=dtypes.get(self.dtype, self.torch.bfloat16),
                               enabled=self.dtype != "float32")

  def _step(self, network):
    torch = self.torch
    if self.mode == "train":
      self.optimizer.zero_grad(set_to_none=True)
      with self._autocast():
        loss = torch.nn.functional.cross_entropy(network(self.images), self.labels)
      loss.backward()
      self.optimizer.step()
      return
    with torch.inference_mode(), self._autocast():
      network(self.images)

  def _timed(self, network, steps):
    """Seconds of each of `steps` steps (training), or one element: seconds per step of `steps`."""
    def timed(n):
      start = time.perf_counter()
      for _ in range(n):
        self._step(network)
      return time.perf_counter() - start
    return [timed(1) for _ in range(steps)] if self.mode == "train" else [timed(steps) / steps]

  def measures(self, steps, compile_too):
    """{"peer eager": measure, ["peer compiled": measure]}; a torch.compile that fails is left
    out with a one-line note."""
    measures = {"peer eager": lambda: self._timed(self.network, steps)}
    if compile_too:
      try:
        compiled = self.torch.compile(self.network)
        start = time.perf_counter()
        self._step(compiled)
        first = time.perf_counter() - start
        steady = min(self._timed(compiled, 2))
        self.compile_seconds = max(first - steady, 0.0)
        measures["peer compiled"] = lambda: self._timed(compiled, steps)
      except Exception as e:  # pylint: disable=broad-except  # any backend failure: go on eager
        self.notes.append(f"torch.compile of {self.name} failed on this machine: {one_line(e)}")
    return measures

  def rows(self, best, project_rate):
    """Peer table rows from the best seconds per measure; project/peer against `project_rate`
    (this project's Estimator, images/s, same dtype and batch)."""
    batch, rows = self.images.shape[0], []
    for key, label in (("peer eager", "eager"), ("peer compiled", "torch.compile")):
      if key in best:
        rate = batch / best[key]
        rows.append({"peer": f"pytorchcv {self.name}", "dtype": self.dtype, "peer mode": label,
                     "peer images/s": rate, "project images/s": project_rate,
                     "project/peer": f"{project_rate / rate:.3f}",
                     "compile s": (f"{self.compile_seconds:.1f}" if label != "eager" else "-")})
    return rows


_SPEED_COLUMNS = ["network", "dtype", "input", "images/s", "bare images/s", "runner/bare",
                  "vs float32", "GFLOP/s", "% of matmul peak"]
_PEER_COLUMNS = ["network", "dtype", "peer", "peer mode", "peer images/s", "compile s",
                 "project images/s", "project/peer"]


def _configurations():
  """The networks of --configuration ('official': the five)."""
  return list(PUBLISHED) if FLAGS.configuration == ["official"] else FLAGS.configuration


def _speed_cases():
  """(configuration, dtype) pairs from --configuration and --dtype."""
  return [(name, dtype) for name in _configurations() for dtype in FLAGS.dtype]


def _official_names():
  """--configuration's official or pytorchcv networks; UserError for another name."""
  names = _configurations()
  others = [name for name in names if name not in PUBLISHED and name not in PYTORCHCV_PUBLISHED]
  if others:
    raise UserError(f"--configuration={','.join(FLAGS.configuration)}: complexity compares the "
                    f"official networks ({', '.join(PUBLISHED)}) and pytorchcv's "
                    f"({', '.join(PYTORCHCV_PUBLISHED)}) with their published figures; "
                    f"{', '.join(others)} has none")
  return names


def _peer_section(mode, peer_rows, notes):
  """The peer table: one row per network, dtype and peer mode, and per network best against best
  (the best dtype of this project against the best dtype and mode of the peer)."""
  rows = list(peer_rows)
  for network in dict.fromkeys(row["network"] for row in peer_rows):
    mine = [row for row in peer_rows if row["network"] == network]
    peer_best = max(mine, key=lambda row: row["peer images/s"])
    project_best = max(row["project images/s"] for row in mine)
    rows.append({**peer_best, "dtype": "best", "project images/s": project_best,
                 "peer mode": f"{peer_best['peer mode']}, {peer_best['dtype']}", "compile s": "",
                 "project/peer": f"{project_best / peer_best['peer images/s']:.3f}"})
  return {"benchmark": f"{mode} against PyTorch", "columns": _PEER_COLUMNS, "rows": rows,
          "notes": notes}


def _peer_plan(cases):
  """(whether to time peers, notes): the peers run for networks pytorchcv has, when installed."""
  if not FLAGS.peers:
    return False, []
  if _import_or_none("torch") is None or _import_or_none("pytorchcv") is None:
    return False, [_peers_note("PyTorch peers (pytorchcv SqueezeNext)")]
  missing = sorted({c for c, _ in cases if c not in PEER_MODELS})
  notes = [f"{', '.join(missing)}: no pytorchcv counterpart, no peer timed"] if missing else []
  return True, notes


def _run_speed(mode, cases):
  """The `train` or `inference` table for `cases`, (configuration, dtype) pairs (module
  docstring); the FLOP rates are against the best float32 matmul rate measured in the run; the
  peer table as a section when the peers are installed."""
  peaks, rows, peer_rows = [], [], []
  load_at_start = round(os.getloadavg()[0], 2)  # before this run adds its own load (~cores)
  peers, notes = _peer_plan(cases)
  with tempfile.TemporaryDirectory() as scratch:
    pattern = _pipeline_pattern(scratch)
    for configuration in dict.fromkeys(c for c, _ in cases):
      dtypes = list(dict.fromkeys(d for c, d in cases if c == configuration))
      case_rows, case_peaks, case_peer_rows, case_notes = _measure_network(
          mode, configuration, dtypes, pattern, peers and configuration in PEER_MODELS)
      rows, peaks, notes = rows + case_rows, peaks + case_peaks, notes + case_notes
      peer_rows += [{"network": _network_label(configuration), **r} for r in case_peer_rows]
      keras.backend.clear_session()
  best_peak = max(peaks)
  for row in rows:
    bare, ratio, versus = (row.pop(k, None) for k in ("bare", "paired_ratio", "versus"))
    row["bare images/s"] = bare if bare else "-"
    row["runner/bare"] = f"{ratio:.3f}" if ratio else "-"
    row["vs float32"] = f"{versus:.3f}" if versus else "-"
    row["% of matmul peak"] = f"{100 * row['GFLOP/s'] * 1e9 / best_peak:.1f}"
  results = {"benchmark": mode, "columns": _SPEED_COLUMNS, "rows": rows, "notes": [],
             "matmul_peak_gflops": best_peak / 1e9, "matmul_size": FLAGS.matmul_size,
             "flop_per_image": "3 x 2 x MACs (training)" if mode == "train" else "2 x MACs",
             "batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size, "steps": FLAGS.steps,
             "rounds": FLAGS.rounds, **machine(), "load_average_1min_at_start": load_at_start}
  # After the timing: the probe's child process would add load to it.
  results["hardware"] = hardware_note(cases[0][0], tuple(dict.fromkeys(d for _, d in cases)),
                                      FLAGS.onednn_probe)
  if peer_rows:
    results["sections"] = [_peer_section(mode, peer_rows, notes + [results["hardware"]])]
  else:
    results["notes"] += notes
  results["notes"].append(results["hardware"])
  return results


def run_train():
  """The `train` benchmark: images/second of the training step (module docstring)."""
  return _run_speed("train", _speed_cases())


def run_inference():
  """The `inference` benchmark: images/second of the EVAL step (module docstring)."""
  return _run_speed("inference", _speed_cases())


# ------------------------------------------------------------------------------------------------
# layers: per-layer time from TensorFlow's profiler

_STEP_EVENT = "benchmark_step"  # the TraceMe around each profiled step
# Op events of the trace: "scope/.../op_name:OpType" (other host events have "::" or spaces).
_OP_EVENT = re.compile(r"([^:\s]+):(\w+)")
_OTHER_OPS = "(other ops: loss, optimizer, variable reads)"
_IDLE = "(no op running: dispatch, Python, waiting)"
_ITEM_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def read_trace(logdir):
  """(op events, step windows) of the newest profile under `logdir` (its .xplane.pb).

  Returns:
    ops: [(start_ps, end_ps, op_name)] of the host's op events (op_name without ":OpType");
    steps: [(start_ps, end_ps)] of the `_STEP_EVENT` annotations.
  """
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
  if not paths:
    raise RuntimeError(f"the profiler wrote no trace under {logdir}")
  with open(paths[-1], "rb") as f:
    space = xplane_pb2.XSpace.FromString(f.read())
  ops, steps = [], []
  for plane in space.planes:
    if not plane.name.startswith("/host:"):
      continue
    for line in plane.lines:
      base = line.timestamp_ns * 1000
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        start = base + event.offset_ps
        if name == _STEP_EVENT:
          steps.append((start, start + event.duration_ps))
        elif "::" not in name and (match := _OP_EVENT.fullmatch(name)):
          ops.append((start, start + event.duration_ps, match.group(1)))
  return ops, sorted(steps)


def op_layer(op_name, layer_names):
  """(layer name or None, "backward" | "forward") of an op: the first scope of `op_name` that is a
  layer's name (TensorFlow may add "_<n>" to a scope), backward under "gradient_tape/"."""
  direction = "backward" if "gradient_tape/" in op_name else "forward"
  for scope in op_name.split("/")[:-1]:
    if scope in layer_names:
      return scope, direction
    stripped = re.sub(r"_\d+$", "", scope)
    if stripped in layer_names:
      return stripped, direction
  return None, direction


def attribute_time(ops, windows, key_fn):
  """Wall time (ps) per key over the step `windows`: each instant is shared equally among the ops
  running then (ops on several threads overlap), so the keys add up to the busy time; the rest of
  the windows goes to None (no op running).

  Args:
    ops: [(start, end, name)]; windows: [(start, end)]; key_fn(name) -> hashable key.
  """
  edges = []
  for start, end, name in ops:
    for w_start, w_end in windows:
      s, e = max(start, w_start), min(end, w_end)
      if s < e:
        key = key_fn(name)
        edges += [(s, 1, key), (e, -1, key)]
  edges.sort(key=lambda edge: (edge[0], edge[1]))
  shares, active, previous = collections.Counter(), collections.Counter(), None
  for t, change, key in edges:
    running = sum(active.values())
    if running and previous is not None and t > previous:
      for k, count in active.items():
        shares[k] += (t - previous) * count / running
    active[key] += change
    if not active[key]:
      del active[key]
    previous = t
  shares[None] = sum(e - s for s, e in windows) - sum(shares.values())
  return shares


def _profiled_steps(loop, steps, logdir):
  """Runs `loop` (a bare loop, already traced) for `steps` single steps under the profiler,
  each in a `_STEP_EVENT` annotation; the trace is written under `logdir`."""
  loop(tf.constant(1)).numpy()  # warm-up outside the trace
  tf.profiler.experimental.start(logdir)
  try:
    for step in range(steps):
      with tf.profiler.experimental.Trace(_STEP_EVENT, step_num=step, _r=1):
        loop(tf.constant(1)).numpy()
  finally:
    tf.profiler.experimental.stop()


def _layer_bytes(layer, batch, item_bytes):
  """Bytes one forward pass of `layer` moves: inputs and outputs of the batch, weights once."""
  def elements(tensors):
    return sum(math.prod(t.shape[1:]) for t in tf.nest.flatten(tensors))
  weights = sum(math.prod(v.shape) for v in layer.weights)
  return (batch * (elements(layer.input) + elements(layer.output)) + weights) * item_bytes


def _layer_rows(network, shares, params, steps):
  """Rows of the layers table: one per tools/recipe/stats.py row, then the unattributed rest."""
  training, batch = FLAGS.mode == "train", params.batch_size
  stats_rows, _ = stats.model_statistics(network)
  step_ms = sum(shares.values()) / steps / 1e9
  rows, network_bytes = [], 0
  for r in stats_rows:
    layer = network.get_layer(r.name)
    forward = shares.get((r.name, "forward"), 0) / steps / 1e9
    backward = shares.get((r.name, "backward"), 0) / steps / 1e9
    flop = nominal_flop(r.macs, batch, training)
    layer_bytes = _layer_bytes(layer, batch, _ITEM_BYTES.get(layer.compute_dtype, 4))
    network_bytes += layer_bytes
    rows.append({"layer": r.name, "type": r.type, "params": r.params, "MACs": r.macs,
                 "forward ms": forward, "backward ms": backward if training else "-",
                 "ms": forward + backward, "% of step": 100 * (forward + backward) / step_ms,
                 "GFLOP/s": flop / (forward + backward) / 1e6 if r.macs and forward else "-",
                 "FLOP/byte": nominal_flop(r.macs, batch, False) / layer_bytes if r.macs else "-"})
  for label, keys in ((_OTHER_OPS, [(None, "forward"), (None, "backward")]), (_IDLE, [None])):
    ms = sum(shares.get(k, 0) for k in keys) / steps / 1e9
    rows.append({"layer": label, "ms": ms, "% of step": 100 * ms / step_ms})
  return rows, step_ms, network_bytes


def _kind_rows(rows, step_ms, batch):
  """The layers table's rows (without the total) summed by layer type, costliest first: list of
  {"kind", "layers", "MACs", "ms", "% of step", "GFLOP/s"}; the rows without a type (other ops, idle)
  are kinds of their own. GFLOP/s as in the layers table (nominal FLOP over the kind's time)."""
  kinds = {}
  for row in rows:
    kind = kinds.setdefault(row.get("type", row["layer"]), {"layers": 0, "MACs": 0, "ms": 0.0})
    kind["layers"] += 1 if "type" in row else 0
    kind["MACs"] += row.get("MACs", 0)
    kind["ms"] += row["ms"]
  training = FLAGS.mode == "train"
  return [{"kind": name, **kind, "% of step": 100 * kind["ms"] / step_ms,
           "GFLOP/s": (nominal_flop(kind["MACs"], batch, training) / kind["ms"] / 1e6
                       if kind["MACs"] else "-")}
          for name, kind in sorted(kinds.items(), key=lambda item: -item[1]["ms"])]


def _profile_network(params, steps, logdir):
  """(network, time shares per (layer, direction) in ps over `steps` profiled bare steps)."""
  network = model.build_from_params(params.model)
  images, labels = _synthetic_batch(params)
  loop = (bare_train_loop(network, params, images, labels) if FLAGS.mode == "train"
          else bare_inference_loop(network, images))
  _profiled_steps(loop, steps, logdir)
  ops, windows = read_trace(logdir)
  if len(windows) != steps:
    raise RuntimeError(f"the trace has {len(windows)} of the {steps} profiled steps")
  layer_names = {layer.name for layer in network.layers}
  shares = attribute_time(ops, windows, lambda name: op_layer(name, layer_names))
  return network, shares


def run_layers():
  """The `layers` benchmark: per layer of tools/recipe/stats.py's table, params, MACs, measured forward
  (and backward, --mode train) milliseconds per step from TensorFlow's profiler, share of the
  step, achieved GFLOP/s (nominal: 2 FLOP per MAC, backward 2 x forward) and arithmetic intensity
  (forward FLOP per byte of inputs, weights and outputs at the compute dtype; the total row's: the
  network's FLOP over the bytes of every layer, BatchNorm, ReLU and additions included); the rows
  add up to the measured step (mean of --steps profiled steps, wall time)."""
  if len(FLAGS.configuration) != 1 or len(FLAGS.dtype) != 1:
    raise UserError(f"--configuration={','.join(FLAGS.configuration)} --dtype="
                    f"{','.join(FLAGS.dtype)}: layers profiles one network in one dtype")
  configuration, dtype = FLAGS.configuration[0], FLAGS.dtype[0]
  params = benchmark_params(configuration, dtype, 1)
  with tempfile.TemporaryDirectory() as scratch:
    logdir = FLAGS.profile_dir or scratch
    network, shares = _profile_network(params, FLAGS.steps, logdir)
  rows, step_ms, network_bytes = _layer_rows(network, shares, params, FLAGS.steps)
  macs = sum(r.get("MACs", 0) for r in rows)
  # FLOP/byte of the whole forward pass: every layer's bytes, the elementwise ones included.
  rows.append({"layer": "total (measured step)", "params": sum(r.get("params", 0) for r in rows),
               "MACs": macs, "ms": step_ms, "% of step": 100.0,
               "GFLOP/s": nominal_flop(macs, params.batch_size, FLAGS.mode == "train")
                          / step_ms / 1e6,
               "FLOP/byte": nominal_flop(macs, params.batch_size, False) / network_bytes})
  kinds = _kind_rows(rows[:-1], step_ms, params.batch_size)
  for row in rows + kinds:
    row["% of step"] = f"{row['% of step']:.1f}"
  columns = ["layer", "type", "params", "MACs", "forward ms", "backward ms", "ms", "% of step",
             "GFLOP/s", "FLOP/byte"]
  notes = [f"trace kept in {FLAGS.profile_dir} (tensorboard --logdir {FLAGS.profile_dir}, "
           f"profile tab)"] if FLAGS.profile_dir else []
  notes.append(hardware_note(configuration, (dtype,), FLAGS.onednn_probe))
  label = f"{_network_label(configuration)}, {dtype}, {FLAGS.mode}"
  by_kind = {"benchmark": f"layers by kind ({label})", "columns": list(kinds[0]), "rows": kinds,
             "notes": notes[-1:]}
  return {"benchmark": f"layers ({label})", "sections": [by_kind],
          "columns": columns, "rows": rows, "notes": notes, "step_ms": step_ms,
          "batch_size": params.batch_size, "image_size": params.model.image_size,
          "steps": FLAGS.steps, **machine()}


# ------------------------------------------------------------------------------------------------
# all, main


def run_all():
  """Every benchmark, for the README's results section: the machine, complexity, train and
  inference (with their peer tables), and input when --file_pattern or --synthetic_jpegs is given.

  Speed cases: --configuration x --dtype; by default (a few minutes on 2 cores) 1.0-SqNxt-23 in
  float32 and bfloat16. Every network: add --configuration official (about 2 minutes per network
  and dtype on 2 cores, more with the peers).
  """
  if not FLAGS["dtype"].present:
    FLAGS.dtype = ["float32", "bfloat16"]
  cases = _speed_cases()
  load_at_start = round(os.getloadavg()[0], 2)
  parts = [run_complexity(), _run_speed("train", cases), _run_speed("inference", cases)]
  if FLAGS.file_pattern or FLAGS.synthetic_jpegs:
    parts.append(run_input())
  info = {**machine(), "load_average_1min_at_start": load_at_start}
  columns = ["cpu", "cores", "cpu features", "tensorflow", "torch", "date", "command",
             "load_average_1min_at_start"]
  return {"benchmark": "all", "columns": columns, "rows": [info], "sections": parts}


# Sub-command name -> function returning {"benchmark", "columns", "rows", ...}.
SUBCOMMANDS = {
    "input": run_input,
    "complexity": run_complexity,
    "train": run_train,
    "inference": run_inference,
    "layers": run_layers,
    "all": run_all,
}


def format_results(results):
  """The printed form of `results`: each table under its name, its notes below it."""
  parts = []
  for section in sections(results):
    table = markdown_table(section["columns"], section["rows"])
    parts.append(f"\n{section['benchmark']}:\n\n{table}")
    parts += [f"\n{note}" for note in section.get("notes", [])]
  return "\n".join(parts)


def main(argv):
  """Runs the sub-command of `argv`, prints its tables and writes --output_json."""
  if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
    raise UserError(f"expected one sub-command, one of {sorted(SUBCOMMANDS)}; got {argv[1:]}")
  results = SUBCOMMANDS[argv[1]]()
  print(f"\n`python -m scripts.benchmark {' '.join(sys.argv[1:])}` ({os.cpu_count()} CPUs)")
  print(format_results(results), flush=True)
  if FLAGS.output_json:
    write_json(FLAGS.output_json, results)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
