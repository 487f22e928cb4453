"""Model statistics: a per-layer table of parameters and multiply-accumulates (MACs), plus totals.

The successor of the seed repository's `ModelStats` hook. Conventions (those of the official figures
in scripts/benchmark.py's OFFICIAL table):
- params: trainable weights, i.e. convolution and fully connected kernels and BatchNorm scale
  (gamma) and shift (beta); moving statistics (and the BN step count) are excluded.
- MACs: multiply-accumulates of convolutions and fully connected layers only, for one image:
  output height * width * output channels * kernel height * width * input channels / groups
  (Dense: inputs * outputs). BatchNorm, ReLU, additions and pooling are not counted.

The program `python -m scripts.stats --configuration NAME` prints the table.
"""

import csv
import dataclasses
import io
import math

import keras

from tools.common import atomic_write


@dataclasses.dataclass(frozen=True)
class LayerStats:
  """One row of the table.

  Attributes:
    name: layer name (e.g. "stage1_block1_conv1").
    type: Keras class name (e.g. "GroupConv2D", "CaffeBatchNormalization", "Dense").
    kernel: "KHxKW" for convolutions and pools, "" otherwise.
    stride: "SHxSW" for convolutions and pools, "" otherwise.
    groups: convolution groups (1 for every other layer).
    output_shape: output shape without the batch dimension, e.g. "55x55x64".
    params: trainable weights of the layer (see the module docstring).
    macs: multiply-accumulates per image (see the module docstring).
  """
  name: str
  type: str
  kernel: str
  stride: str
  groups: int
  output_shape: str
  params: int
  macs: int


COLUMNS = tuple(f.name for f in dataclasses.fields(LayerStats))


def _dims(values):
  return "x".join(str(v) for v in values)


def _layer_macs(layer):
  """Multiply-accumulates per image of a convolution or Dense layer; 0 for other layers."""
  if isinstance(layer, keras.layers.Conv2D):
    kernel_h, kernel_w, inputs_per_group, _ = layer.kernel.shape
    return math.prod(layer.output.shape[1:]) * kernel_h * kernel_w * inputs_per_group
  if isinstance(layer, keras.layers.Dense):
    return math.prod(layer.kernel.shape)
  return 0


def _layer_stats(layer):
  geometry = isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D))
  kernel = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
  return LayerStats(
      name=layer.name,
      type=type(layer).__name__,
      kernel=_dims(kernel) if geometry else "",
      stride=_dims(layer.strides) if geometry else "",
      groups=getattr(layer, "groups", 1),
      output_shape=_dims(layer.output.shape[1:]),
      # variable.trainable marks what the optimizer would train (BN moving statistics are not),
      # independently of a layer being frozen for fine-tuning.
      params=sum(math.prod(v.shape) for v in layer.weights if v.trainable),
      macs=_layer_macs(layer))


def model_statistics(network):
  """Per-layer statistics of a built functional Keras model.

  Args:
    network: a keras.Model with a static input shape (e.g. from model.build_network).
  Returns:
    (rows, totals): rows is a list of LayerStats in the network's layer order (input layer left
    out); totals is {"params": int, "macs": int}, the sums over the rows.
  """
  rows = [_layer_stats(layer) for layer in network.layers
          if not isinstance(layer, keras.layers.InputLayer)]
  totals = {"params": sum(r.params for r in rows), "macs": sum(r.macs for r in rows)}
  return rows, totals


def write_csv(rows, path):
  """Writes the rows (LayerStats) as CSV with a header of COLUMNS, atomically (a local path)."""
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(COLUMNS)
  writer.writerows(dataclasses.astuple(r) for r in rows)
  atomic_write(path, text.getvalue())


def format_table(rows, totals):
  """The table as aligned text lines; the last line is `params=<int> macs=<int>`."""
  cells = [COLUMNS] + [tuple(str(v) for v in dataclasses.astuple(r)) for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
  lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
  return lines + [f"params={totals['params']} macs={totals['macs']}"]
