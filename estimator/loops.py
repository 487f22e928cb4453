"""The compiled loops of the Estimator (several steps per tf.function call) and the host-side
progress and summaries around them. Each `make_*_loop(estimator)` is traced once per Estimator.
"""

import contextlib
import signal
import time

from absl import logging
import keras
import tensorflow as tf

from estimator.spec import itstime
from estimator.spec import ModeKeys
from tools.common import format_duration


# model_fn and the scaffold's functions run as written, as TF1's Estimator ran model_fn in a graph:
# AutoGraph converts only the loops below (their `for` over tf.range), which saves about 1.5 s of
# source conversion per process. Inside model_fn, branch on tensors with tf.cond.
_as_written = tf.autograph.experimental.do_not_convert


def _compiled(estimator, fn):
  """fn, compiled with XLA as one function per replica when the RunConfig asks for it."""
  return tf.function(fn, jit_compile=True) if estimator.config.jit_compile else fn


def _replica_fn(estimator, mode):
  """model_fn for one replica, returning (loss, scalars): nests that strategy.run can carry."""
  @_as_written
  def replica_fn(features, labels):
    spec = estimator.model_fn(features, labels, mode, estimator.params, estimator.scaffold)
    return spec.loss, spec.scalars
  return _compiled(estimator, replica_fn)


def metric_variables(metrics):
  """The state variables of a dict of Keras metrics, in a fixed order (a list)."""
  return [v for name in sorted(metrics) for v in metrics[name].variables]


def metric_zeros(metrics):
  """The zero state of a dict of Keras metrics (metric_variables order): a list of tensors."""
  return [tf.zeros(v.shape, v.dtype) for v in metric_variables(metrics)]


def metric_results(metrics, values):
  """{name: float} of a dict of Keras metrics whose state (metric_variables order) is `values`."""
  results, start = {}, 0
  for name in sorted(metrics):
    count = len(metrics[name].variables)
    results[name] = float(metrics[name].stateless_result(values[start:start + count]))
    start += count
  return results


@_as_written
def _summary_images(estimator, features):
  """uint8 images of one per-replica batch for TensorBoard, or None when disabled."""
  cfg = estimator.config
  if cfg.summary_images_fn is None or cfg.image_summary_steps <= 0:
    return None
  return cfg.summary_images_fn(features)


def make_train_loop(estimator):
  """`train_loop(iterator, num_steps)`: runs num_steps (>= 1) optimizer steps; returns the last
  step's outputs (loss, scalars summed over replicas, all_finite over all the steps) and images."""
  strategy = estimator.strategy
  replica_fn = _replica_fn(estimator, ModeKeys.TRAIN)
  sum_ = tf.distribute.ReduceOp.SUM

  @tf.function  # traced once, called twice by train_loop: halves the tracing time
  def one_step(iterator):
    features, labels = next(iterator)
    loss, scalars = strategy.run(replica_fn, args=(features, labels))
    loss = strategy.reduce(sum_, loss, axis=None)
    scalars = {k: strategy.reduce(sum_, v, axis=None) for k, v in scalars.items()}
    images = _summary_images(estimator, strategy.experimental_local_results(features)[0])
    return loss, scalars, images

  @tf.function
  def train_loop(iterator, num_steps):
    finite = tf.constant(True)
    for _ in tf.range(num_steps - 1):
      loss, _, _ = one_step(iterator)
      finite = tf.logical_and(finite, tf.math.is_finite(loss))
    loss, scalars, images = one_step(iterator)
    finite = tf.logical_and(finite, tf.math.is_finite(loss))
    return dict(loss=loss, all_finite=finite, **scalars), images

  return train_loop


def make_eval_loop(estimator):
  """`eval_loop(iterator, num_steps)`: runs up to num_steps batches through model_fn's EVAL branch.

  Returns (exhausted, state): exhausted is True when the data ran out; state is the eval metrics'
  state (a list in `metric_variables` order) of these batches, summed over batches and replicas.
  model_fn runs in a `keras.StatelessScope` that starts each batch's metric state at zero: its
  `update_state` calls become values carried by the loop instead of variable updates, which would
  order the batches one after the other (the bare forward loop overlaps consecutive batches and is
  faster: docs/BENCHMARKS.md, "Measurements behind the code"). Hence a metric's state must add
  over batches, as the state of Keras's Mean, Sum and accuracy metrics does.
  Partial last batches leave some replicas an empty batch.
  """
  strategy, sum_ = estimator.strategy, tf.distribute.ReduceOp.SUM
  metrics = estimator.scaffold.eval_metrics
  variables = metric_variables(metrics)
  zeros = lambda: metric_zeros(metrics)

  @_as_written
  def batch_state(features, labels):
    start = zeros()
    with keras.StatelessScope(state_mapping=list(zip(variables, start))) as scope:
      estimator.model_fn(features, labels, ModeKeys.EVAL, estimator.params, estimator.scaffold)
    updated = [scope.get_current_value(v) for v in variables]
    return [s if u is None else u for s, u in zip(start, updated)]
  batch_state = _compiled(estimator, batch_state)

  @_as_written
  def replica_fn(features, labels):
    # Several replicas: the partial last batch leaves some of them an empty batch, on which the
    # model is skipped (TF 2.21's CPU convolution returns its input unchanged for an empty batch,
    # which breaks the network). One replica always gets at least one example, and runs without
    # the tf.cond, whose branch costs a measurable share of an evaluation (docs/BENCHMARKS.md).
    if strategy.num_replicas_in_sync == 1:
      return batch_state(features, labels)
    batch_size = tf.shape(tf.nest.flatten(features)[0])[0]
    return tf.cond(batch_size > 0, lambda: batch_state(features, labels), zeros)

  @tf.function
  def eval_loop(iterator, num_steps):
    exhausted, state = tf.constant(False), zeros()
    for _ in tf.range(num_steps):
      batch = iterator.get_next_as_optional()
      exhausted = tf.logical_not(batch.has_value())
      if exhausted:
        break
      features, labels = batch.get_value()
      replica_states = strategy.run(replica_fn, args=(features, labels))
      state = [s + strategy.reduce(sum_, b, axis=None) for s, b in zip(state, replica_states)]
    return exhausted, state

  return eval_loop


def make_statistics_loop(estimator):
  """`statistics_loop(iterator, num_steps)`: the scaffold's statistics protocol on every replica:
  begin, `step(features)` for num_steps training batches (forward passes only, no optimizer step),
  end. Call it with the statistics' population mode on."""
  strategy, statistics = estimator.strategy, estimator.scaffold.statistics

  @tf.function
  def statistics_loop(iterator, num_steps):
    strategy.run(_as_written(statistics.begin))
    for _ in tf.range(num_steps):
      features, _ = next(iterator)
      strategy.run(_as_written(statistics.step), args=(features,))
    strategy.run(_as_written(statistics.end))

  return statistics_loop


class TrainProgress:
  """Host side of the training loop: progress lines with the ETA, scalar and image summaries.

  Progress lines come after the first step (its time includes tracing and graph optimisation,
  which can take a minute), every `log_step_count_steps` steps, at the last step, and at least every
  `log_step_count_secs` seconds: `max_loop_steps` shortens the compiled loops when steps are slow
  (a 227-pixel batch of 256 takes several seconds on a CPU). The ETA extrapolates the time per
  step after the first one, evaluations included. `log_step_count_steps=0` disables the lines.
  Under MultiWorkerMirroredStrategy lines and loop lengths follow steps only (the same on every
  worker).

  Args:
    estimator: the Estimator (its config gives the intervals, its scaffold the metrics).
    start_step: int, the global step the loop starts at.
    max_steps: int, the global step it ends at.
  """

  def __init__(self, estimator, start_step, max_steps):
    self.estimator, self.start_step, self.max_steps = estimator, start_step, max_steps
    self.start_time = self.window_time = self.line_time = time.time()
    self.window_step = start_step
    self.first = None  # (step, time) at the end of the first loop
    # Several workers: no decision on a worker's own clock. A line reads the training metrics (an
    # all-reduce) and the loop lengths must agree, so lines and loops follow steps only.
    several_workers = isinstance(estimator.strategy, tf.distribute.MultiWorkerMirroredStrategy)
    self.secs = 0 if several_workers else estimator.config.log_step_count_secs

  def max_loop_steps(self, step):
    """The most steps the loop starting at `step` may run for the next line to come on time
    (>= 1), or None when progress lines do not limit it."""
    cfg = self.estimator.config
    if cfg.log_step_count_steps <= 0:
      return None
    if self.first is None:
      return 1
    if self.secs <= 0:
      return None
    left = self.line_time + self.secs - time.time()
    return max(1, int(left / max(self._seconds_per_step(step, time.time()), 1e-9)))

  def _seconds_per_step(self, step, now):
    first_step, first_time = self.first
    if step > first_step:
      return (now - first_time) / (step - first_step)
    return (first_time - self.start_time) / max(first_step - self.start_step, 1)

  def report(self, step, outputs, images):
    """Logs and writes what is due at `step`; returns `outputs` with the summary values added."""
    cfg = self.estimator.config
    now = time.time()
    first = self.first is None
    if first:
      self.first = (step, now)
    log = cfg.log_step_count_steps > 0 and (
        first or step == self.max_steps or itstime(step, cfg.log_step_count_steps)
        or 0 < self.secs <= now - self.line_time)
    if itstime(step, cfg.save_summary_steps) or log:
      rate = (step - self.window_step) / max(now - self.window_time, 1e-9)
      outputs = {**outputs, **self._summaries(step, outputs, rate)}
      self.window_step, self.window_time = step, now
    if log:
      self._log(step, outputs, now, first)
      self.line_time = now
    if images is not None and itstime(step, cfg.image_summary_steps):
      with self.estimator.writer("").as_default():
        tf.summary.image("train/images", images, step=step, max_outputs=images.shape[0])
    return outputs

  def _log(self, step, outputs, now, first):
    if first:
      timing = (f"first step{'s' if step - self.start_step > 1 else ''} "
                f"{now - self.start_time:.1f} s (tracing included)")
    else:
      eta = (self.max_steps - step) * self._seconds_per_step(step, now)
      timing = f"{outputs['images_per_sec']:.1f} images/s  ETA {format_duration(eta)}"
    extra = "".join(f"  {k} {outputs[k]:.4f}" for k in sorted(outputs)
                    if k not in ("loss", "images_per_sec", "global_step_per_sec", "learning_rate"))
    logging.info("step %d/%d  loss %.4f%s  lr %.5g  %s", step, self.max_steps, outputs["loss"],
                 extra, outputs["learning_rate"], timing)

  def _summaries(self, step, outputs, steps_per_sec):
    estimator = self.estimator
    scaffold = estimator.scaffold
    values = dict(outputs)
    values["learning_rate"] = float(scaffold.optimizer.learning_rate)
    for name, metric in scaffold.train_metrics.items():
      values[name] = float(metric.result())
      metric.reset_state()
    values["global_step_per_sec"] = steps_per_sec
    values["images_per_sec"] = steps_per_sec * estimator.params.batch_size
    estimator.last_train_summary = values
    if itstime(step, estimator.config.save_summary_steps):
      with estimator.writer("").as_default():
        for name, value in values.items():
          tf.summary.scalar(f"train/{name}", value, step=step)
    return values


def write_eval_summaries(estimator, input_fn, name, results):
  """Writes an evaluation's scalars and a few of its images under model_dir/<name>."""
  step = results["global_step"]
  with estimator.writer(name).as_default():
    for key, value in results.items():
      if key != "global_step":
        tf.summary.scalar(f"eval/{key}", value, step=step)
    if estimator.config.summary_images_fn is not None:
      features, _ = next(iter(input_fn(tf.distribute.InputContext()).take(1)))
      images = estimator.config.summary_images_fn(features)
      tf.summary.image("eval/images", images, step=step, max_outputs=images.shape[0])


class StopSignals:
  """Turns SIGTERM and SIGINT (a preemption, Ctrl-C) into a request to stop after the current loop.

  `with StopSignals() as stop:` installs the handlers (in the main thread only) and restores the
  previous ones at exit; `stop.signal` is the signal number received, or None.
  """

  def __init__(self):
    self.signal = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received %s: stopping after the current loop to write a checkpoint.",
                    signal.Signals(signum).name)
    self.signal = signum

  def __enter__(self):
    with contextlib.suppress(ValueError):  # not the main thread: leave the default handlers
      self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  @property
  def name(self):
    """The received signal's name, e.g. "SIGTERM"."""
    return signal.Signals(self.signal).name
