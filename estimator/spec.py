"""The Estimator vocabulary: ModeKeys, EstimatorSpec, Scaffold, RunConfig, Hook, TrainSpec, EvalSpec.

Plain containers with no TensorFlow state of their own; estimator/runner.py runs them and
estimator/checkpoints.py saves what a Scaffold holds.
"""

import dataclasses
from typing import Any, Callable


class ModeKeys:
  """The three modes model_fn is called in (values as in tf.estimator)."""
  TRAIN = "train"
  EVAL = "eval"
  PREDICT = "infer"


@dataclasses.dataclass
class EstimatorSpec:
  """What model_fn returns.

  Attributes:
    mode: a ModeKeys value.
    loss: scalar float32; this replica's share of the loss averaged over the GLOBAL batch, so that the
      sum over replicas is the global mean (`tf.nn.compute_average_loss`). TRAIN and EVAL.
    predictions: PREDICT: dict of tensors with a leading batch dimension.
    scalars: TRAIN: extra scalar summaries, each a per-replica share summed over replicas like `loss`.
  """
  mode: str
  loss: Any = None
  predictions: Any = None
  scalars: dict = dataclasses.field(default_factory=dict)


class Scaffold:
  """The objects a TF1 graph held, created once inside `strategy.scope()` and checkpointed.

  Attributes:
    network: the keras.Model.
    optimizer: a Keras 3 optimizer, already built on `network.trainable_variables`;
      `optimizer.iterations` is the global step. None for inference.
    train_metrics: dict name -> keras.metrics.Metric, updated by model_fn in TRAIN; read and reset by
      the runner at every summary.
    eval_metrics: dict name -> keras.metrics.Metric, updated by model_fn in EVAL. The evaluation loop
      runs model_fn in a keras.StatelessScope and sums each batch's metric state over batches and
      replicas itself (estimator/loops.py), so the metrics' variables are never assigned and a
      metric's state must add over batches (Keras's Mean, Sum and accuracy metrics do). Must hold
      "num_examples" (a Sum of batch sizes).
    init_fn: callable(scaffold) -> None, run once when model_dir holds no checkpoint (warm start).
    statistics: optional object that recomputes population statistics (precise BatchNorm) before an
      evaluation: `set_population_mode(on)` on the host; per replica, in one traced loop,
      `begin()`, `step(features)` per batch, `end()` (model.PopulationStatistics).
  """

  def __init__(self, network, optimizer=None, train_metrics=None, eval_metrics=None, init_fn=None,
               statistics=None):
    self.network = network
    self.optimizer = optimizer
    self.train_metrics = train_metrics or {}
    self.eval_metrics = eval_metrics or {}
    self.init_fn = init_fn
    self.statistics = statistics

  @property
  def global_step(self):
    """int64 variable: optimizer steps taken so far."""
    return self.optimizer.iterations


@dataclasses.dataclass
class RunConfig:
  """How the Estimator runs. Step intervals are in optimizer steps; 0 disables the action.

  Attributes:
    strategy: a tf.distribute.Strategy (default: the default strategy, one device).
    save_checkpoints_steps: checkpoint interval; a checkpoint is always written at the last step.
    keep_checkpoint_max: checkpoints kept in model_dir (older ones are deleted), >= 1.
    save_summary_steps: TensorBoard scalar interval.
    image_summary_steps: TensorBoard training-image interval.
    summary_images_fn: `fn(features) -> uint8 [N, H, W, 3]`, the images of a per-replica batch as a
      person should see them (e.g. the mean added back); None disables image summaries.
    log_step_count_steps: progress-line interval in steps (0: no progress lines).
    log_step_count_secs: a progress line at least this often, in seconds (0: by steps only); the
      compiled loops are shortened to keep it.
    steps_per_loop: optimizer steps per tf.function call (keeps the host out of the device's way).
    jit_compile: compile each replica's step with XLA.
    checkpoint_input_pipeline: also checkpoint the input pipeline's position (tf.data iterator state),
      so that a restarted run sees exactly the batches an uninterrupted one would have seen.
    statistics_batches: batches of `statistics_input_fn` that recompute the population statistics
      (Scaffold.statistics) before every evaluation and the final checkpoint; 0 disables it.
    statistics_input_fn: `input_fn(input_context)` of training batches for those statistics.
  """
  strategy: Any = None
  save_checkpoints_steps: int = 1000
  keep_checkpoint_max: int = 5
  save_summary_steps: int = 100
  image_summary_steps: int = 0
  summary_images_fn: Any = None
  log_step_count_steps: int = 100
  log_step_count_secs: float = 60.0
  steps_per_loop: int = 100
  jit_compile: bool = False
  checkpoint_input_pipeline: bool = False
  statistics_batches: int = 0
  statistics_input_fn: Any = None


class Hook:
  """SessionRunHook's successor: called by `Estimator.train` around the training loop.

  `every_n_steps` (0: none) makes the runner end a tf.function loop on multiples of it, so that
  `after_step` sees those exact steps. `after_step` runs on the host after every loop.
  """
  every_n_steps = 0

  def begin(self, estimator):
    """Called before the first step, with the Estimator (its scaffold is built and restored)."""

  def after_step(self, estimator, step, outputs):
    """Called after a loop ending at global `step`; `outputs` holds host floats (loss, ...).

    Returns True to request a stop (the runner then checkpoints and returns).
    """
    return False

  def end(self, estimator, step):
    """Called once after the last step, after the final checkpoint."""


@dataclasses.dataclass
class TrainSpec:
  """What to train on and until when: `input_fn(input_context)`, absolute `max_steps`, hooks."""
  input_fn: Callable
  max_steps: int
  hooks: tuple = ()


@dataclasses.dataclass
class EvalSpec:
  """What to evaluate on and how often: every `every_n_steps` steps and/or `every_n_secs` seconds
  (0 disables either), and always at the end of training."""
  input_fn: Callable
  every_n_steps: int = 0
  every_n_secs: float = 0
  name: str = "eval"


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss; no checkpoint was written with those weights."""


def itstime(step, every_n, last_step=None):
  """True when `step` is a positive multiple of `every_n` (0 disables), or `step == last_step`."""
  return (every_n > 0 and step > 0 and step % every_n == 0) or step == last_step
