"""SqueezeNext (Gholami et al., arXiv 1803.10615) as the official Caffe release defines it.

Source of every architectural fact: the Caffe prototxts of the official release
(github.com/amirgholami/SqueezeNext); the parameter and MAC counts they imply are in
scripts/benchmark.py's OFFICIAL table and tests/test_model.py. Five official networks are built by name from one table,
`CONFIGURATIONS`, which also holds a tiny network for fast tests and the six networks of the
ImageNet weights osmr published through pytorchcv (`_pytorchcv`: a few switches of the same
builder, `use_bias`, `stem_padding`, `separable_order`; scripts/import_weights.py reads their
files); a fork adds a variant in one line.

Network (channels-last, input float32 [B, S, S, 3], output float32 logits [B, num_classes]):

  stem    k x k conv / 2, no padding (k = 7 for v1, 5 for v5), BN, ReLU,
          3x3 / 2 max-pool in Caffe's ceil mode              -> 55x55 (v1) or 56x56 (v5) at S = 227
  stages  four stages of blocks, widths C = [32, 64, 128, 256] (1.0) or twice that (2.0),
          first-block strides [1, 2, 2, 2]                   -> 55|56, 28, 14, 7 at S = 227
  block   1x1 -> C/2, 1x1 -> C/4, 3x1 -> C/2, 1x3 -> C/2, 1x1 -> C (each conv + BN + ReLU),
          added to the shortcut, ReLU. Blocks are numbered over the whole network; odd blocks have
          3x1 then 1x3, even blocks 1x3 then 3x1. The first block of every stage has a 1x1 shortcut
          conv (+ BN + ReLU) carrying the stage stride; v1: the branch reads the block input and its
          first 1x1 carries the stride; v5: the branch reads the shortcut conv's output, stride 1.
          G networks: groups = 2 on the branch's first 1x1, its 3x1 and its 1x3.
  head    1x1 conv -> 128 (at every width), BN, ReLU, global average pool, fully connected
          `classifier` without bias. No dropout.

Every convolution is bias-free and followed by BatchNorm (`CaffeBatchNormalization`: Caffe's
moving-average fraction 0.999 and epsilon 1e-5, with Caffe's count correction of the moving
statistics) and a learned scale and shift (Caffe's separate `Scale` layer, here BN's gamma/beta).
Weights start from Caffe's "xavier" filler.

Layer names (Keras 3 forbids '/', so '_'): `stem_pad` (with stem_padding), `stem_conv`, `stem_bn`,
`stem_relu`, `stem_pool`;
`stage{s}_block{b}_{conv,bn,relu}{1..5}` (b counts within the stage, from 1);
`stage{s}_block1_shortcut_{conv,bn,relu}`; `stage{s}_block{b}_add`, `stage{s}_block{b}_relu`
(the block's output); `head_conv`, `head_bn`, `head_relu`, `head_pool`; `classifier`.
Variable paths (`v.path`, e.g. `stage1_block1_conv1/kernel`) follow from them; checkpoints,
fine-tuning (match by name and shape; the classifier is the layer named `classifier`) and the
statistics of tools/recipe/stats.py use them.
"""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from estimator.spec import EstimatorSpec
from estimator.spec import ModeKeys
from tools.common import param
from tools.common import UserError

# Caffe BatchNorm defaults; the official prototxts leave them unset: moving_average_fraction, eps.
BN_MOMENTUM = 0.999
BN_EPSILON = 1e-5
# oneDNN's JIT BatchNorm kernels take 16-bit (bfloat16/float16) inputs only when the channels are a
# multiple of 16 (one AVX-512 register of float32 accumulators); other counts run its reference
# loop, `nspc_bnorm:any` in ONEDNN_VERBOSE: the six 8-channel layers of 1.0-SqNxt-23 (stage 1's
# C/4) took 287 ms of a 1.4 s bfloat16 step, forward and backward, against 22 ms in float32
# (avx2 kernel; batch 64 at 227, 2-core AMD EPYC with AVX512-BF16, 2026-12-04). Such layers
# normalise in float32.
BN_16BIT_CHANNEL_MULTIPLE = 16
# Stem and max-pool geometry (prototxt: Convolution1 stride 2; pool1 kernel 3 stride 2).
STEM_STRIDE = 2
POOL_SIZE = 3
POOL_STRIDE = 2
VERSIONS = ("v1", "v5")
# The order of a block's 3x1 and 1x3 convolutions: "alternating" (the prototxts: odd blocks 3x1
# then 1x3, even blocks 1x3 then 3x1) or "1x3_first" (pytorchcv: every block 1x3 then 3x1).
SEPARABLE_ORDERS = ("alternating", "1x3_first")

# Caffe's "xavier" filler with its default variance_norm FAN_IN: uniform in +-sqrt(3 / fan_in),
# fan_in = kernel height * width * input channels / groups (Keras calls it LeCun uniform). Keras'
# GlorotUniform would average fan_in and fan_out, which is not how the official networks started.
CAFFE_XAVIER = "lecun_uniform"


@dataclasses.dataclass(frozen=True)
class SqueezeNextConfig:
  """Architecture of one SqueezeNext network (see the module docstring for the layout).

  Attributes:
    stage_widths: output channels C of each stage; C must be divisible by 4 * groups.
    blocks_per_stage: number of blocks in each stage (same length as stage_widths).
    stem_kernel: stem convolution size k (7 for v1 networks, 5 for v5; prototxt Convolution1).
    version: "v1" (branch and shortcut both read the block input) or "v5" (the branch reads the
      shortcut convolution's output).
    groups: groups of the branch's first 1x1, 3x1 and 1x3 convolutions (2 for the G network).
    stem_channels: stem convolution output channels (64 in all five official networks).
    head_channels: channels of the 1x1 convolution before pooling (128 in all five).
    stage_strides: stride of each stage's first block (official: 1, 2, 2, 2).
    use_bias: every convolution and the classifier have a bias (official: none; pytorchcv: all,
      each convolution's before its BatchNorm).
    stem_padding: zero rows and columns around the input of the stem convolution (official 0;
      pytorchcv 1).
    separable_order: one of SEPARABLE_ORDERS (official "alternating"; pytorchcv "1x3_first").
  Lists are accepted and stored as tuples. Raises UserError for an inconsistent configuration.
  """
  stage_widths: tuple
  blocks_per_stage: tuple
  stem_kernel: int
  version: str = "v1"
  groups: int = 1
  stem_channels: int = 64
  head_channels: int = 128
  stage_strides: tuple = (1, 2, 2, 2)
  use_bias: bool = False
  stem_padding: int = 0
  separable_order: str = "alternating"

  def __post_init__(self):
    for field in ("stage_widths", "blocks_per_stage", "stage_strides"):
      object.__setattr__(self, field, tuple(int(v) for v in getattr(self, field)))
    if not len(self.stage_widths) == len(self.blocks_per_stage) == len(self.stage_strides):
      raise UserError(f"stage_widths {self.stage_widths}, blocks_per_stage {self.blocks_per_stage} "
                      f"and stage_strides {self.stage_strides} must have the same length")
    if self.version not in VERSIONS:
      raise UserError(f"version '{self.version}' is not one of {', '.join(VERSIONS)}")
    if any(c % (4 * self.groups) for c in self.stage_widths) or self.stem_channels % self.groups:
      raise UserError(f"stage_widths {self.stage_widths} must be divisible by 4 * groups and "
                      f"stem_channels {self.stem_channels} by groups (groups={self.groups})")
    if min(self.blocks_per_stage) < 1 or self.stem_kernel < 1:
      raise UserError(f"blocks_per_stage {self.blocks_per_stage} and stem_kernel "
                      f"{self.stem_kernel} must be positive")
    if self.separable_order not in SEPARABLE_ORDERS or self.stem_padding < 0:
      raise UserError(f"separable_order '{self.separable_order}' must be one of "
                      f"{', '.join(SEPARABLE_ORDERS)} and stem_padding {self.stem_padding} >= 0")


_WIDTHS_1_0 = (32, 64, 128, 256)
_WIDTHS_2_0 = (64, 128, 256, 512)
_BLOCKS_23 = (6, 6, 8, 1)
_BLOCKS_23_V5 = (2, 4, 14, 1)


def _pytorchcv(blocks_per_stage, width_scale):
  """The SqueezeNext of pytorchcv 0.0.74 (osmr/imgclsmob, `pytorchcv/models/squeezenext.py`,
  `get_squeezenext`), whose ImageNet weights osmr published, as a configuration of this table.

  What differs from the prototxts there: every convolution and the classifier have a bias; the
  stem convolution (7x7 in all six networks, the 23v5 ones too) has padding 1; every block applies
  its 1x3 before its 3x1; the 23v5 networks keep the v1 wiring (the branch reads the block input);
  the stem, stage and head widths are all scaled, `int(width * width_scale)` of 64, (32, 64, 128,
  256) and 128; the final pooling is a 7x7 average pool, which is the global average pool here at
  224 pixels (the last map is 7x7 from 199 to 230 pixels; pytorchcv fails at other sizes). pytorchcv's
  block widths (in // reduction, reduction 1, 2 or 4 by the block's input and output) are C / 2
  and C / 4 of this module's blocks for every block of the six networks.
  """
  scaled = lambda width: int(width * width_scale)
  return SqueezeNextConfig(tuple(scaled(c) for c in _WIDTHS_1_0), blocks_per_stage, stem_kernel=7,
                           stem_channels=scaled(64), head_channels=scaled(128), use_bias=True,
                           stem_padding=1, separable_order="1x3_first")

# The official networks under the seed repository's configuration names.
CONFIGURATIONS = {
    "v_1_0_SqNxt_23": SqueezeNextConfig(_WIDTHS_1_0, _BLOCKS_23, stem_kernel=7),
    "v_1_0_G_SqNxt_23": SqueezeNextConfig(_WIDTHS_1_0, _BLOCKS_23, stem_kernel=7, groups=2),
    "v_1_0_SqNxt_23_v5": SqueezeNextConfig(_WIDTHS_1_0, _BLOCKS_23_V5, stem_kernel=5, version="v5"),
    "v_2_0_SqNxt_23": SqueezeNextConfig(_WIDTHS_2_0, _BLOCKS_23, stem_kernel=7),
    "v_2_0_SqNxt_23_v5": SqueezeNextConfig(_WIDTHS_2_0, _BLOCKS_23_V5, stem_kernel=5, version="v5"),
    # Not official: the smallest network with every feature of v1, for fast tests and demos.
    "tiny_SqNxt": SqueezeNextConfig((8, 16, 32, 64), (1, 1, 1, 1), stem_kernel=7,
                                    stem_channels=16, head_channels=32),
    # Not official: the networks of osmr's published ImageNet weights (pytorchcv, `_pytorchcv`),
    # under pytorchcv's names; scripts/import_weights.py reads their files.
    "sqnxt23_w1": _pytorchcv(_BLOCKS_23, 1.0),
    "sqnxt23_w3d2": _pytorchcv(_BLOCKS_23, 1.5),
    "sqnxt23_w2": _pytorchcv(_BLOCKS_23, 2.0),
    "sqnxt23v5_w1": _pytorchcv(_BLOCKS_23_V5, 1.0),
    "sqnxt23v5_w3d2": _pytorchcv(_BLOCKS_23_V5, 1.5),
    "sqnxt23v5_w2": _pytorchcv(_BLOCKS_23_V5, 2.0),
}
# The configurations of pytorchcv's published weights, and the input side they were trained at.
PYTORCHCV_CONFIGURATIONS = ("sqnxt23_w1", "sqnxt23_w3d2", "sqnxt23_w2", "sqnxt23v5_w1",
                            "sqnxt23v5_w3d2", "sqnxt23v5_w2")
PYTORCHCV_IMAGE_SIZE = 224


def get_config(name):
  """Returns the SqueezeNextConfig named `name` in CONFIGURATIONS; UserError if there is none."""
  if name not in CONFIGURATIONS:
    raise UserError(f"unknown configuration '{name}'; expected one of: "
                    f"{', '.join(CONFIGURATIONS)}")
  return CONFIGURATIONS[name]


def _resolve(configuration):
  if isinstance(configuration, SqueezeNextConfig):
    return configuration
  return get_config(configuration)


def min_image_size(config):
  """Smallest input side (pixels) for which the network is defined.

  The max-pool needs at least POOL_SIZE rows from the stem convolution (padding p):
  floor((S + 2p - k) / 2) + 1 >= 3, i.e. S >= k + 2 * STEM_STRIDE - 2p (11 for v1, 9 for v5 and
  the pytorchcv networks). Everything after the pool is defined for any map of at least 1x1.

  Args:
    config: a SqueezeNextConfig or a name in CONFIGURATIONS.
  """
  c = _resolve(config)
  return c.stem_kernel + (POOL_SIZE - 1) * STEM_STRIDE - 2 * c.stem_padding


def _caffe_pool_padding(size):
  """Bottom/right padding so that a valid 3x3/2 pool gives Caffe's ceil((size - 3) / 2) + 1 rows."""
  return (size - POOL_SIZE) % POOL_STRIDE


def _global_moments(x, replicas):
  """Mean and biased variance [C] (float32) of x [B, H, W, C] over the global batch of all replicas,
  and the global number of values per channel (float32 [1]).

  Keras' synchronized moments all-reduce the sum, the sum of squares and the count separately;
  one all-reduce of the three, concatenated, gives the same figures with a third of the
  collectives per BatchNorm layer (less to trace, fewer small messages between devices).
  """
  channels = x.shape[-1]
  if None in x.shape:
    count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)[tf.newaxis]
  else:  # a static shape: a constant, fewer ops to trace
    count = tf.constant([math.prod(x.shape[:-1])], tf.float32)
  local = tf.concat([tf.reduce_sum(x, [0, 1, 2]), tf.reduce_sum(tf.square(x), [0, 1, 2]), count], 0)
  total, square_total, count = tf.split(
      replicas.all_reduce(tf.distribute.ReduceOp.SUM, local), [channels, channels, 1])
  mean = tf.math.divide_no_nan(total, count)
  return mean, tf.maximum(tf.math.divide_no_nan(square_total, count) - tf.square(mean), 0.0), count


def _synchronized_batch_norm(x, gamma, beta, epsilon, replicas):
  """Batch normalisation of float32 x [B, H, W, C] with the statistics of the global batch.

  Returns (y, mean, variance): y like x; mean and biased variance [C] of the global batch, for the
  moving statistics (the backward pass ignores any gradient they receive). The backward pass is written
  out, as in NVIDIA's SyncBatchNorm: one all-reduce of [sum(dy), sum(dy * x_hat)] and
  dx = gamma / sigma * (dy - (sum(dy) + x_hat * sum(dy * x_hat)) / N) over the global N. Automatic
  differentiation of the forward ops gave the same values with 4x the graph (a 2-replica
  tiny_SqNxt training step: 14,066 nodes, now 9,177, against 5,473 without synchronization).
  gamma, beta: float32 [C] tensors; their gradients are this replica's sums (the optimizer's
  all-reduce adds the replicas').
  """
  @tf.custom_gradient
  def forward(x, gamma, beta):
    mean, variance, count = _global_moments(x, replicas)
    inverse_std = tf.math.rsqrt(variance + epsilon)
    x_hat = (x - mean) * inverse_std
    y = x_hat * gamma + beta

    def backward(dy, *unused):  # the moments' upstream gradients are None or zeros
      del unused
      d_beta, d_gamma = tf.reduce_sum(dy, [0, 1, 2]), tf.reduce_sum(dy * x_hat, [0, 1, 2])
      total_beta, total_gamma = tf.split(
          replicas.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([d_beta, d_gamma], 0)), 2)
      dx = (gamma * inverse_std) * (dy - (total_beta + x_hat * total_gamma) / count)
      return dx, d_gamma, d_beta

    return (y, mean, variance), backward

  return forward(x, gamma, beta)


class CaffeBatchNormalization(keras.layers.BatchNormalization):
  """BatchNormalization whose moving statistics follow Caffe's BatchNorm layer.

  What Caffe does that Keras does not: Caffe keeps running SUMS of the batch means and variances
  and a running count, `count = m * count + 1` (m = moving_average_fraction, 0.999), and divides
  the sums by the count at inference. Its moving statistics are therefore the exponentially
  weighted average of the batches seen so far, unbiased from the first step. Keras'
  `moving = m * moving + (1 - m) * batch` starts from mean 0 / variance 1 and with m = 0.999
  keeps ~90% of that initial value after 100 steps and ~37% after 1,000, so a run of a few
  hundred steps evaluates with nonsense statistics (seen while prototyping: 10% accuracy on a
  10-class problem that training had half learned).

  With `caffe_correction=True` (default) this layer stores the same quantity as Caffe in Keras'
  form: `moving_count` is Caffe's count and the update is
  `moving = moving + (batch - moving) / count`, i.e. an EMA whose momentum (count - 1) / count
  grows from 0 at the first step to m (0.999 after a few thousand steps). The first training
  step sets the moving statistics to that batch's, so short runs evaluate correctly; long runs
  behave exactly like momentum m. `caffe_correction=False` gives Keras' plain EMA.
  One difference from Caffe remains, deliberately: Caffe scales the batch variance by
  n / (n - 1) (n = values per channel) before averaging; Keras' convention (biased variance, the
  one used to normalise in training) is kept. At ImageNet sizes n >= 32 * 7 * 7, a < 0.1% change.

  Speed: training and inference run TensorFlow's fused kernel (FusedBatchNormV3), about 3x
  faster forward+backward on CPU than the unfused ops of Keras 3's BatchNormalization; the
  moving-statistics update is three assignments of per-channel vectors, without host syncs.

  Distribution: like Keras 2's BatchNormalization, the moving statistics and the count are
  non-trainable ON_READ variables with MEAN aggregation: under tf.distribute each replica updates
  its own copy from its own batch, and reading them outside the replica context (checkpoints,
  evaluation in the cross-replica context) gives the mean over replicas.

  With `synchronized=True` (Keras' argument) on several replicas, training uses the statistics of
  the global batch (`_synchronized_batch_norm`: one all-reduce per layer forward, one backward)
  with unfused ops: slower, but N replicas then compute what one device computes on the whole
  batch. On one replica the batch is the global batch: the fused kernel runs, as without the
  argument.

  Inputs: float16/bfloat16/float32 [B, H, W, C] (channels last). Outputs: same shape, in the
  layer's compute dtype. Restrictions: axis=-1, center and scale on, no renorm.
  """

  def __init__(self, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, caffe_correction=True, **kwargs):
    super().__init__(momentum=momentum, epsilon=epsilon, **kwargs)
    if self.axis != -1 or self.renorm or not (self.center and self.scale):
      raise ValueError("CaffeBatchNormalization supports only axis=-1, center=True, scale=True, "
                       "renorm=False")
    self.caffe_correction = bool(caffe_correction)
    # Set by PopulationStatistics while it recomputes the statistics; read when a step is traced.
    self.population = False

  def add_weight(self, *, shape, name, initializer, trainable=True, autocast=True, **kwargs):
    """Layer.add_weight, except that non-trainable weights are ON_READ/MEAN (see class doc)."""
    if trainable:
      return super().add_weight(shape=shape, name=name, initializer=initializer,
                                trainable=True, autocast=autocast, **kwargs)
    with keras.name_scope(self.name, caller=self):
      return keras.Variable(initializer=keras.initializers.get(initializer), shape=shape,
                            dtype=self.variable_dtype, trainable=False, autocast=autocast,
                            aggregation="mean", synchronization="on_read", name=name)

  def build(self, input_shape):
    if len(input_shape) != 4:
      raise ValueError(f"CaffeBatchNormalization takes 4-D [B, H, W, C] inputs (the fused kernel's "
                       f"layout), got shape {input_shape}")
    super().build(input_shape)
    # Caffe's scale_factor blob: the discounted number of training steps seen.
    self.moving_count = self.add_weight(shape=(), name="moving_count", initializer="zeros",
                                        trainable=False, autocast=False)

  def call(self, inputs, training=None, mask=None):
    del mask  # convolutional feature maps carry no mask
    x = tf.convert_to_tensor(inputs)
    if x.dtype != tf.float32 and (x.dtype not in (tf.float16, tf.bfloat16)
                                  or x.shape[-1] % BN_16BIT_CHANNEL_MULTIPLE):
      x = tf.cast(x, tf.float32)  # the fused kernel's types; 16-bit: BN_16BIT_CHANNEL_MULTIPLE
    replicas = tf.distribute.get_replica_context()
    several = replicas is not None and replicas.num_replicas_in_sync > 1
    if training and self.trainable and several and (self.synchronized or self.population):
      x = tf.cast(x, tf.float32)  # statistics in float32, as Keras does
      y, mean, variance = _synchronized_batch_norm(
          x, tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta), self.epsilon,
          replicas)
      self._update_moving_statistics(mean, variance)
    elif training and self.trainable:
      y, mean, corrected_variance = tf.compat.v1.nn.fused_batch_norm(
          x, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
      # The fused kernel returns the variance times n / (n - 1) (n / 1 when n = 1); undo it.
      if None in x.shape:
        n = tf.cast(tf.size(x, tf.int64) // tf.shape(x, tf.int64)[-1], tf.float32)
        unbias = tf.maximum(n - 1.0, 1.0) / n
      else:  # a static shape: a constant, fewer ops to trace
        n = math.prod(x.shape[:-1])
        unbias = max(n - 1, 1) / n
      self._update_moving_statistics(mean, corrected_variance * unbias)
    else:
      y, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
          epsilon=self.epsilon, is_training=False)
    return tf.cast(y, self.compute_dtype)

  def _update_moving_statistics(self, mean, variance):
    """Caffe's (or Keras') update from the batch's float32 mean and biased variance [C].

    In population mode (PopulationStatistics) the moving mean and variance become equally weighted
    averages of the batches' means and second moments (variance + mean^2), count = count + 1.
    """
    if self.population:
      count = self.moving_count + 1.0
      self.moving_mean.assign_sub((self.moving_mean - mean) / count)
      self.moving_variance.assign_sub((self.moving_variance - (variance + tf.square(mean))) / count)
      self.moving_count.assign(count)
      return
    count = self.moving_count * self.momentum + 1.0
    rate = 1.0 / count if self.caffe_correction else 1.0 - self.momentum
    self.moving_mean.assign_sub((self.moving_mean - mean) * rate)
    self.moving_variance.assign_sub((self.moving_variance - variance) * rate)
    self.moving_count.assign(count)

  def get_config(self):
    return {**super().get_config(), "caffe_correction": self.caffe_correction}


class GroupConv2D(keras.layers.Conv2D):
  """keras.layers.Conv2D computing a grouped convolution as one dense block-diagonal convolution.

  TensorFlow's CPU kernel for a grouped convolution is very slow, many times slower than one
  convolution per group; one dense convolution whose kernel is zero off the diagonal blocks was
  faster still in a whole training step of 1.0-G-SqNxt-23 (docs/BENCHMARKS.md, "Measurements
  behind the code"): it does `groups` times the multiply-accumulates of the grouped convolution,
  a good trade for the G network's 2 groups, not for many groups. The
  result and the gradients are those of the grouped convolution (the zero blocks are constants);
  the weights are Conv2D's (kernel [kh, kw, in / groups, out], output channels group-major), so
  checkpoints interchange with keras.layers.Conv2D(groups=...). With groups=1 this is Conv2D.

  On GPUs the native grouped kernel (cuDNN) is the right one. `implementation` chooses:
  "auto" (the block-diagonal form when no GPU is visible, else native), "block_diagonal" or
  "native". The weights are the same for all three.
  """

  def __init__(self, *args, implementation="auto", **kwargs):
    super().__init__(*args, **kwargs)
    if implementation not in GROUPED_CONV_IMPLEMENTATIONS:
      raise ValueError(f"implementation {implementation!r} is not one of "
                       f"{GROUPED_CONV_IMPLEMENTATIONS}")
    self.implementation = implementation

  def block_diagonal(self):
    """True when this layer computes its grouped convolution in the block-diagonal form."""
    if self.groups == 1 or self.implementation == "native":
      return False
    return self.implementation == "block_diagonal" or not tf.config.list_physical_devices("GPU")

  def convolution_op(self, inputs, kernel):
    if not self.block_diagonal():
      return super().convolution_op(inputs, kernel)
    # Group g maps input channels [g * in/groups, (g + 1) * in/groups) to output channels
    # [g * out/groups, (g + 1) * out/groups): pad each group's [kh, kw, in/groups, out/groups]
    # slice with zeros to all input channels, then put the groups side by side.
    inputs_per_group = kernel.shape[2]
    blocks = [tf.pad(k, [[0, 0], [0, 0], [g * inputs_per_group,
                                          (self.groups - 1 - g) * inputs_per_group], [0, 0]])
              for g, k in enumerate(tf.split(kernel, self.groups, axis=-1))]
    return super().convolution_op(inputs, tf.concat(blocks, axis=-1))  # [kh, kw, in, out]


  def get_config(self):
    return {**super().get_config(), "implementation": self.implementation}


# GroupConv2D's implementations of a grouped convolution.
GROUPED_CONV_IMPLEMENTATIONS = ("auto", "block_diagonal", "native")


@dataclasses.dataclass(frozen=True)
class _Builder:
  """Builds the layers of one network with common BN and dtype settings (see build_network)."""
  config: SqueezeNextConfig
  bn_momentum: float
  bn_epsilon: float
  bn_caffe_correction: bool
  bn_synchronized: bool
  dtype: object
  grouped_conv: str = "auto"
  fold_batch_norm: bool = False

  def conv_bn_relu(self, x, filters, kernel, prefix, suffix="", strides=1, groups=1,
                   padding="valid"):
    """Conv + BN + ReLU named {prefix}_conv{suffix}, {prefix}_bn{suffix}, ..._relu; the conv has
    a bias with config.use_bias (with fold_batch_norm: conv with a bias + ReLU)."""
    x = GroupConv2D(filters, kernel, strides=strides, padding=padding, groups=groups,
                    implementation=self.grouped_conv,
                    use_bias=self.fold_batch_norm or self.config.use_bias,
                    kernel_initializer=CAFFE_XAVIER,
                    dtype=self.dtype, name=f"{prefix}_conv{suffix}")(x)
    if self.fold_batch_norm:
      return keras.layers.ReLU(dtype=self.dtype, name=f"{prefix}_relu{suffix}")(x)
    x = CaffeBatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                caffe_correction=self.bn_caffe_correction,
                                synchronized=self.bn_synchronized, dtype=self.dtype,
                                name=f"{prefix}_bn{suffix}")(x)
    return keras.layers.ReLU(dtype=self.dtype, name=f"{prefix}_relu{suffix}")(x)

  def stem(self, x):
    """[B, S, S, 3] -> [B, P, P, stem_channels]; P = ceil((floor((S + 2p - k) / 2) + 1 - 3) / 2) + 1
    (p = stem_padding)."""
    c = self.config
    if c.stem_padding:
      x = keras.layers.ZeroPadding2D(c.stem_padding, dtype=self.dtype, name="stem_pad")(x)
    x = self.conv_bn_relu(x, c.stem_channels, c.stem_kernel, "stem", strides=STEM_STRIDE)
    pad = _caffe_pool_padding(x.shape[1])
    if pad:
      # Caffe's ceil mode lets the last window hang over the bottom/right edge. Zero padding is
      # equivalent to ignoring that part of the window because the input is a ReLU output (>= 0).
      x = keras.layers.ZeroPadding2D(((0, pad), (0, pad)), dtype=self.dtype,
                                     name="stem_pool_pad")(x)
    return keras.layers.MaxPooling2D(POOL_SIZE, POOL_STRIDE, padding="valid", dtype=self.dtype,
                                     name="stem_pool")(x)

  def block(self, x, prefix, number, width, stride, first):
    """One SqueezeNext block; `number` counts blocks over the whole network from 1."""
    c = self.config
    shortcut, branch, branch_stride = x, x, stride
    if first:
      shortcut = self.conv_bn_relu(x, width, 1, f"{prefix}_shortcut", strides=stride)
      if c.version == "v5":
        branch, branch_stride = shortcut, 1
    three_first = number % 2 and c.separable_order == "alternating"
    separable = [(3, 1), (1, 3)] if three_first else [(1, 3), (3, 1)]
    y = self.conv_bn_relu(branch, width // 2, 1, prefix, "1", strides=branch_stride,
                          groups=c.groups)
    y = self.conv_bn_relu(y, width // 4, 1, prefix, "2")
    # Stride-1 "same" padding of a 3x1 (1x3) is Caffe's pad_h 1, pad_w 0 (pad_h 0, pad_w 1).
    y = self.conv_bn_relu(y, width // 2, separable[0], prefix, "3", groups=c.groups,
                          padding="same")
    y = self.conv_bn_relu(y, width // 2, separable[1], prefix, "4", groups=c.groups,
                          padding="same")
    y = self.conv_bn_relu(y, width, 1, prefix, "5")
    x = keras.layers.Add(dtype=self.dtype, name=f"{prefix}_add")([shortcut, y])
    return keras.layers.ReLU(dtype=self.dtype, name=f"{prefix}_relu")(x)

  def stages(self, x):
    c = self.config
    number = 0
    for s, (width, blocks, stride) in enumerate(
        zip(c.stage_widths, c.blocks_per_stage, c.stage_strides), start=1):
      for b in range(1, blocks + 1):
        number += 1
        x = self.block(x, f"stage{s}_block{b}", number, width, stride if b == 1 else 1, b == 1)
    return x

  def head(self, x, num_classes):
    """[B, h, w, C] -> float32 logits [B, num_classes]."""
    x = self.conv_bn_relu(x, self.config.head_channels, 1, "head")
    x = keras.layers.GlobalAveragePooling2D(dtype=self.dtype, name="head_pool")(x)
    # float32 classifier so that the logits (and the softmax on them) are float32 under a
    # mixed-precision policy (Keras mixed-precision guide); it is 0.1% of the MACs.
    return keras.layers.Dense(num_classes, use_bias=self.config.use_bias,
                              kernel_initializer=CAFFE_XAVIER,
                              dtype="float32", name="classifier")(x)


def build_network(configuration, num_classes, image_size, bn_momentum=BN_MOMENTUM,
                  bn_epsilon=BN_EPSILON, bn_caffe_correction=True, bn_synchronized=False,
                  dtype=None, name=None, grouped_conv="auto", fold_batch_norm=False):
  """Builds a SqueezeNext network as a functional keras.Model.

  Args:
    configuration: a name in CONFIGURATIONS or a SqueezeNextConfig.
    num_classes: number of output classes, >= 2 (1000 for ImageNet).
    image_size: input side S in pixels, >= min_image_size(configuration) (227 in the paper).
    bn_momentum: Caffe's moving_average_fraction m (0.999 in the prototxts), see
      CaffeBatchNormalization.
    bn_epsilon: BatchNorm epsilon (Caffe's default 1e-5).
    bn_caffe_correction: divide the moving statistics by Caffe's running count (default, exact
      Caffe behaviour, needed for short runs to evaluate well) instead of Keras' plain EMA.
    bn_synchronized: batch statistics over the global batch under tf.distribute (all-reduced
      across replicas) instead of per replica; slower (unfused ops plus all-reduces).
    dtype: Keras dtype policy for the layers, e.g. None (float32), "mixed_bfloat16",
      "mixed_float16". No global policy is set. The classifier always computes in float32.
    name: model name; defaults to the configuration's name (or "squeezenext").
    grouped_conv: GroupConv2D's implementation of grouped convolutions: "auto" (block-diagonal
      without a GPU, cuDNN's grouped kernel with one), "block_diagonal" or "native".
    fold_batch_norm: an inference network whose convolutions have a bias and no BatchNorm after
      them (see `fold_batch_norm`).

  Returns:
    keras.Model mapping float32 [B, S, S, 3] (channels last) to float32 logits [B, num_classes].
    Call it with training=True for batch statistics and moving-statistics updates.

  Raises:
    UserError: unknown configuration name, num_classes < 2, image_size too small.
  """
  config = _resolve(configuration)
  if not isinstance(num_classes, int) or num_classes < 2:
    raise UserError(f"num_classes={num_classes} is not supported; expected an integer >= 2",
                    param="num_classes")
  minimum = min_image_size(config)
  if not isinstance(image_size, int) or image_size < minimum:
    network = configuration if isinstance(configuration, str) else "this configuration"
    raise UserError(f"image_size={image_size} is too small for {network}; expected an "
                    f"integer >= {minimum}", param="image_size")
  if name is None:
    name = configuration if isinstance(configuration, str) else "squeezenext"
  builder = _Builder(config, bn_momentum, bn_epsilon, bn_caffe_correction, bn_synchronized,
                     dtype, grouped_conv, fold_batch_norm)
  inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
  logits = builder.head(builder.stages(builder.stem(inputs)), num_classes)
  return keras.Model(inputs, logits, name=name)


def fold_batch_norm(network, configuration, num_classes, image_size):
  """A float32 inference copy of `network` (a trained build_network model of these arguments)
  with each BatchNorm folded into the convolution before it, as deployment tools do (TFLite too):
  kernel * s and bias b, with s = gamma / sqrt(moving_variance + epsilon) and b = beta +
  (conv bias - moving_mean) * s per output channel (conv bias 0 without config.use_bias; float64
  arithmetic, stored as float32). The logits equal
  network(x, training=False) up to float32 rounding.

  Why: TensorFlow fuses an inference BatchNorm into the convolution before it; oneDNN runs that
  fusion at batch 1 as an im2col GEMM with slow per-channel post-ops, tens of times slower for one
  image than for two (docs/BENCHMARKS.md, "Measurements behind the code"). A convolution with a
  bias takes oneDNN's fast path at any batch.
  """
  folded = build_network(configuration, num_classes, image_size, name=network.name,
                         fold_batch_norm=True)
  for layer in folded.layers:
    source = network.get_layer(layer.name)
    if not isinstance(layer, GroupConv2D):
      layer.set_weights(source.get_weights())
      continue
    head, _, tail = layer.name.rpartition("_conv")
    bn = network.get_layer(f"{head}_bn{tail}")
    scale = np.asarray(bn.gamma, np.float64) / np.sqrt(
        np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    bias = np.asarray(source.bias, np.float64) if source.use_bias else 0.0
    shift = np.asarray(bn.beta, np.float64) + (bias - np.asarray(bn.moving_mean, np.float64)) * scale
    layer.set_weights([np.asarray(source.kernel, np.float64) * scale, shift])
  return folded


class PopulationStatistics:
  """Recomputes the BatchNorm moving statistics of a network with its current weights ("precise
  BN": Wu & Johnson, "Rethinking 'Batch' in BatchNorm", arXiv 2105.07576; pycls' precise_bn).

  Why: inputs are unscaled 0..255 pixels minus the mean, as in Caffe, so the first hundreds of steps
  change the weights fast (the stem kernel's squared norm grows about 30x in 50 steps), and moving
  statistics averaged over the last ~1,000 steps (momentum 0.999) describe weights that no longer
  exist: short runs then evaluate near chance while training is at 0.8+.

  Protocol (the Estimator's statistics loop, one tf.function traced with `set_population_mode(True)`):
  on every replica `begin()`, then `step(features)` for N training batches (a forward pass in
  training mode: no gradient, trainable variables unchanged), then `end()`. Each layer
  normalises with the moments of the GLOBAL batch (all-reduced over the replicas, as with
  bn_synchronized; on one replica the fused kernel's batch moments) and accumulates them, so every
  replica (and worker) computes the same mean and variance over all N x global-batch examples,
  and 1 or R replicas agree, with no cross-replica read.
  The Caffe running count is left at N, so training goes on averaging from these statistics.

  Args:
    network: a keras.Model built by build_network.
  """

  def __init__(self, network):
    self.network = network
    self.layers = [l for l in network.layers if isinstance(l, CaffeBatchNormalization)]

  def set_population_mode(self, on):
    """Switches the layers' population mode (Python; read when the statistics loop is traced)."""
    for layer in self.layers:
      layer.population = bool(on)

  def begin(self):
    """Per replica: zeroes the counts (the averages restart)."""
    for layer in self.layers:
      layer.moving_count.assign(0.0)
    return tf.constant(0.0)

  def step(self, features):
    """Per replica: accumulates one batch, features {"image": float32 [B, S, S, 3]}."""
    self.network(features["image"], training=True)
    return tf.constant(0.0)

  def end(self):
    """Per replica: variance = mean second moment - mean^2. The counts keep the number of batches,
    so that training goes on weighting these statistics as that many steps of Caffe's average."""
    for layer in self.layers:
      mean = tf.convert_to_tensor(layer.moving_mean)
      second_moment = tf.convert_to_tensor(layer.moving_variance)
      layer.moving_variance.assign(tf.maximum(second_moment - tf.square(mean), 0.0))
    return tf.constant(0.0)


# ==================================================================================================
# model_fn: the PREDICT / TRAIN / EVAL branches run by the Estimator (estimator/).

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelParams:
  """The network's parameters (the `model` section of tools/recipe/params.Params), each declared once
  (tools/common.param: its flag, help, range and meaning follow from the declaration).

  Attributes:
    configuration: a name in CONFIGURATIONS.
    num_classes: output classes, >= 2 (1000 for ImageNet).
    image_size: input side S in pixels (227 in the paper).
    dtype: compute dtype, "float32", "bfloat16" or "float16" (mixed precision; variables stay
      float32; float16 uses dynamic loss scaling).
    bn_momentum: Caffe's moving_average_fraction (0.999 in the prototxts).
    bn_synchronized: BatchNorm statistics over the global batch (all replicas); slower. Caffe's
      official run used per-node statistics.
    grouped_conv: how grouped convolutions run (GroupConv2D): "auto", "block_diagonal", "native".
  """
  configuration: str = param("v_1_0_SqNxt_23", "Network, one of: " + ", ".join(CONFIGURATIONS) + ".",
                             meaning=True)
  num_classes: int = param(1000, "Number of classes.", minimum=2, meaning=True,
                           default_text="the lines of labels.txt beside the training records, else "
                           "the largest label in the records (a pass over them)")
  image_size: int = param(227, "Input side in pixels.", minimum=1, meaning=True)
  dtype: str = param("float32", "Compute dtype (mixed precision for 16-bit; float16 uses loss "
                     "scaling).", choices=DTYPES,
                     default_text="the faster one on this machine (bfloat16 on CPUs with "
                     "AVX512-BF16 or AMX and on GPUs of compute capability >= 8, else float32; "
                     "logged), or the earlier start's on a restart")
  bn_momentum: float = param(BN_MOMENTUM, "BatchNorm moving-average fraction (prototxt).",
                             check=((lambda v: 0 <= v < 1), "a fraction in [0, 1)"))
  bn_synchronized: bool = param(False, "BatchNorm statistics over the global batch (all replicas).")
  grouped_conv: str = param("auto", "Grouped convolutions (G network): block_diagonal (fast on "
                            "CPUs), native (cuDNN's grouped kernel), or auto (block_diagonal without "
                            "a GPU).", choices=GROUPED_CONV_IMPLEMENTATIONS)


def dtype_policy(dtype):
  """Keras dtype policy name for a compute dtype in DTYPES: float32, or mixed precision (float32
  variables) for the 16-bit types."""
  return {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[dtype]


def build_from_params(model_params):
  """build_network for a ModelParams."""
  m = model_params
  return build_network(m.configuration, m.num_classes, m.image_size, bn_momentum=m.bn_momentum,
                       bn_synchronized=m.bn_synchronized, dtype=dtype_policy(m.dtype),
                       grouped_conv=m.grouped_conv)


def train_metrics():
  """The TRAIN metrics {top_1_accuracy, top_5_accuracy} (Keras metrics of int32 class_idx [B] and
  float32 logits [B, K]), updated by model_fn each step."""
  return {
      "top_1_accuracy": keras.metrics.SparseCategoricalAccuracy(name="top_1_accuracy"),
      "top_5_accuracy": keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top_5_accuracy"),
  }


def eval_metrics():
  """The EVAL metrics: loss (mean cross-entropy), top_1_accuracy, top_5_accuracy and num_examples
  (a float32 sum), updated by model_fn over an evaluation."""
  return {"loss": keras.metrics.Mean(name="loss"), **train_metrics(),
          "num_examples": keras.metrics.Sum(name="num_examples")}


def weight_decay_loss(variables, weight_decay):
  """Caffe's L2 weight decay as a loss: weight_decay * sum(w**2) / 2, whose gradient is weight_decay * w.

  Applied to every trainable variable (convolution and FC kernels, BN scale and shift), as the
  official solver's `weight_decay: 0.0001` did. Returns a float32 scalar.
  """
  if not weight_decay:
    return tf.constant(0.0)
  return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])


def train_loss(network, images, class_idx, params):
  """The TRAIN loss of one replica: (loss, cross_entropy, weight_decay, logits).

  cross_entropy is averaged over the GLOBAL batch params.batch_size (the sum over replicas is the
  global mean); the weight-decay term is divided by the number of replicas for the same reason.
  images: float32 [B, H, W, 3]; class_idx: int32 [B] in 0..num_classes-1; logits float32 [B, K].
  """
  logits = network(images, training=True)
  per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_idx, logits=logits)
  cross_entropy = tf.nn.compute_average_loss(per_example, global_batch_size=params.batch_size)
  decay = tf.nn.scale_regularization_loss(
      weight_decay_loss(network.trainable_variables, params.recipe.weight_decay))
  return cross_entropy + decay, cross_entropy, decay, logits


def predictions_from_logits(logits):
  """PREDICT outputs for float32 logits [B, K]: top_1 int32 [B], top_5 int32 [B, min(5, K)],
  probabilities float32 [B, K] (softmax), logits."""
  probabilities = tf.nn.softmax(logits)
  top_5 = tf.math.top_k(logits, k=min(5, logits.shape[-1])).indices
  return {"top_1": tf.argmax(logits, axis=-1, output_type=tf.int32), "top_5": top_5,
          "probabilities": probabilities, "logits": logits}


def model_fn(features, labels, mode, params, scaffold):
  """SqueezeNext's model_fn, run per replica inside tf.function by the Estimator.

  Args:
    features: {"image": float32 [B, H, W, 3]} (mean-subtracted RGB, see dataloader.py).
    labels: {"class_idx": int32 [B]} (0-based), or None in PREDICT.
    mode: a ModeKeys value.
    params: the run's tools.recipe.params.Params (recipe.batch_size, recipe.weight_decay are read).
    scaffold: the Scaffold made by tools/recipe/experiment.scaffold_fn.
  Returns:
    EstimatorSpec. PREDICT: predictions {"top_1", "top_5", "probabilities", "logits"}.
    TRAIN: takes one optimizer step and returns its loss, with scalars cross_entropy and weight_decay.
    EVAL: updates the eval metrics (mean loss, top-1, top-5, num_examples) and returns the loss.
  """
  network, images = scaffold.network, features["image"]
  if mode == ModeKeys.PREDICT:
    return EstimatorSpec(mode, predictions=predictions_from_logits(network(images, training=False)))

  class_idx = labels["class_idx"]
  if mode == ModeKeys.EVAL:
    logits = network(images, training=False)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_idx, logits=logits)
    metrics = scaffold.eval_metrics
    metrics["loss"].update_state(per_example)
    metrics["num_examples"].update_state(tf.cast(tf.size(class_idx), tf.float32))
    for name in ("top_1_accuracy", "top_5_accuracy"):
      metrics[name].update_state(class_idx, logits)
    return EstimatorSpec(mode, loss=tf.reduce_mean(per_example))

  optimizer, variables = scaffold.optimizer, network.trainable_variables
  with tf.GradientTape() as tape:
    loss, cross_entropy, decay, logits = train_loss(network, images, class_idx, params)
    scaled_loss = optimizer.scale_loss(loss)  # loss scaling for float16; identity otherwise
  optimizer.apply(tape.gradient(scaled_loss, variables), variables)
  for metric in scaffold.train_metrics.values():
    metric.update_state(class_idx, logits)
  return EstimatorSpec(mode, loss=loss, scalars={"cross_entropy": cross_entropy, "weight_decay": decay})
