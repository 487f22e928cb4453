"""The Estimator's loops: train, evaluate, predict, and train_and_evaluate.

`input_fn(input_context) -> tf.data.Dataset` is called once per input pipeline through
`strategy.distribute_datasets_from_function`, so it yields *per-replica* batches. Checkpoints are
estimator/checkpoints.py's; only the chief (worker 0 of a multi-worker cluster) writes summaries.
"""

import time

from absl import logging
import tensorflow as tf

from estimator import checkpoints as checkpoints_lib
from estimator import loops
from estimator.spec import Hook
from estimator.spec import itstime
from estimator.spec import ModeKeys
from estimator.spec import NonFiniteLossError
from estimator.spec import RunConfig
from tools.common import UserError


def is_chief(strategy):
  """True for the process that writes checkpoints and summaries: the only one, or the chief (worker
  0 when the cluster has no chief) of a multi-worker strategy."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def _next_multiple(step, every_n):
  return (step // every_n + 1) * every_n if every_n > 0 else float("inf")


class Estimator:
  """Trains, evaluates and predicts with `model_fn` on a tf.distribute strategy.

  Args:
    model_fn: `model_fn(features, labels, mode, params, scaffold) -> EstimatorSpec`, traced in
      tf.function and run per replica.
    model_dir: folder of checkpoints (`ckpt-<step>`) and TensorBoard events (eval ones under `eval/`).
    params: the hyper-parameters, passed unchanged to model_fn and scaffold_fn; `params.batch_size`
      is the global batch (for images/s).
    scaffold_fn: `scaffold_fn(params) -> Scaffold`, called once inside `strategy.scope()`.
    config: a RunConfig.
  """

  def __init__(self, model_fn, model_dir, params, scaffold_fn, config=None):
    self.model_fn, self.model_dir, self.params = model_fn, model_dir, params
    self.config = config or RunConfig()
    self.strategy = self.config.strategy or tf.distribute.get_strategy()
    self.is_chief = is_chief(self.strategy)
    self._scaffold_fn = scaffold_fn
    self._scaffold = self.keeper = None
    self._writers, self._loops = {}, {}
    self._statistics_step = None
    self.last_train_summary = {}  # the values of the latest training summary (host floats)
    self.stopped_by_signal = False

  # ----------------------------------------------------------------------------------------------
  # State.

  def _build(self):
    with self.strategy.scope():
      self._scaffold = self._scaffold_fn(self.params)
    scaffold = self._scaffold
    objects = {"network": checkpoints_lib.network_variables(scaffold.network),
               "optimizer": scaffold.optimizer}
    task_id = None if self.is_chief else self.strategy.cluster_resolver.task_id
    self.keeper = checkpoints_lib.CheckpointKeeper(self.model_dir, objects,
                                                   self.config.keep_checkpoint_max, task_id)

  def restore(self):
    """Builds the Scaffold (once) and restores it from model_dir's newest readable checkpoint, else
    warm-starts it by its init_fn; returns it. train, evaluate and predict call it first.

    Raises:
      UserError: model_dir's checkpoints do not fit the network (estimator/checkpoints.py).
    """
    if self._scaffold is None:
      self._build()
      init_fn = self._scaffold.init_fn
      self.keeper.restore_or_initialize(init_fn and (lambda: init_fn(self._scaffold)))
    return self._scaffold

  @property
  def scaffold(self):
    """The Scaffold that restore() built and restored."""
    if self._scaffold is None:
      raise RuntimeError("Estimator.restore() builds and restores the scaffold; call it first")
    return self._scaffold

  @property
  def global_step(self):
    """The global step as a Python int (after restore())."""
    return int(self.scaffold.global_step.numpy())

  def latest_checkpoint(self):
    """Path prefix of the newest checkpoint in model_dir, or None."""
    return checkpoints_lib.latest_checkpoint(self.model_dir)

  def writer(self, name):
    """The summary writer of model_dir/<name> (a no-op writer on non-chief workers)."""
    if name not in self._writers:
      self._writers[name] = (tf.summary.create_file_writer(f"{self.model_dir}/{name}".rstrip("/"))
                             if self.is_chief else tf.summary.create_noop_writer())
    return self._writers[name]

  def _loop(self, name):
    if name not in self._loops:
      make = {"train": loops.make_train_loop, "eval": loops.make_eval_loop,
              "statistics": loops.make_statistics_loop}[name]
      self._loops[name] = make(self)
    return self._loops[name]

  # ----------------------------------------------------------------------------------------------
  # Train.

  def _next_boundary(self, step, max_steps, hooks, progress):
    cfg = self.config
    intervals = [cfg.save_checkpoints_steps, cfg.save_summary_steps, cfg.image_summary_steps,
                 cfg.log_step_count_steps] + [h.every_n_steps for h in hooks]
    loop_steps = min(max(cfg.steps_per_loop, 1), progress.max_loop_steps(step) or max_steps)
    candidates = [max_steps, step + loop_steps]
    return int(min(candidates + [_next_multiple(step, n) for n in intervals]))

  def _distribute(self, input_fn, checkpointable=False):
    """An iterator over input_fn's per-replica batches; its state can be checkpointed if asked."""
    if checkpointable:
      options = tf.data.Options()  # the skip counter lives outside the pipeline, by design
      options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
      input_fn = (lambda fn: lambda ctx: fn(ctx).with_options(options))(input_fn)
    return iter(self.strategy.distribute_datasets_from_function(input_fn))

  def train(self, input_fn, max_steps, hooks=()):
    """Trains until the global step reaches `max_steps`, resuming from model_dir's newest checkpoint.

    Args:
      input_fn: `input_fn(input_context) -> tf.data.Dataset` of (features, labels) per-replica
        batches, repeated (training never runs out of data).
      max_steps: global step to stop at (absolute, as in tf.estimator).
      hooks: Hook instances.
    Returns:
      dict of host floats from the last loop (loss, ...), or {} when there was nothing to do.
    Raises:
      NonFiniteLossError: a loss was NaN/inf; the newest checkpoint is the last good one.
    """
    self.restore()
    step = self.global_step
    if step >= max_steps:
      logging.info("Global step %d >= max_steps %d: nothing to train.", step, max_steps)
      return {}
    iterator = self._distribute(input_fn, self.config.checkpoint_input_pipeline)
    if self.config.checkpoint_input_pipeline:
      self.keeper.track_input(iterator)
    for hook in hooks:
      hook.begin(self)
    self.stopped_by_signal = False
    with loops.StopSignals() as signals:
      outputs = self._train_steps(iterator, step, max_steps, hooks, signals)
    for hook in hooks:
      hook.end(self, self.global_step)
    return outputs

  def _train_steps(self, iterator, step, max_steps, hooks, signals):
    progress = loops.TrainProgress(self, step, max_steps)
    outputs = {}
    while step < max_steps:
      num_steps = self._next_boundary(step, max_steps, hooks, progress) - step
      tensors, images = self._loop("train")(iterator, tf.constant(num_steps, tf.int32))
      outputs = {k: float(v) for k, v in tensors.items()}
      step += num_steps
      if not outputs.pop("all_finite"):
        raise NonFiniteLossError(
            f"non-finite loss between steps {step - num_steps + 1} and {step} (last loss "
            f"{outputs['loss']}); the latest checkpoint ({self.keeper.latest}) is the last good one")
      outputs = progress.report(step, outputs, images)
      stop = any([hook.after_step(self, step, outputs) for hook in hooks])
      if signals.signal or stop or itstime(step, self.config.save_checkpoints_steps, max_steps):
        if step == max_steps:
          self.recompute_statistics()  # the final checkpoint is the one inference reads
        self.keeper.save(step, self.scaffold.network.weights)
      if signals.signal:
        self.stopped_by_signal = True
        logging.info("Stopped by %s at step %d; the checkpoint for step %d is written, and the next "
                     "start resumes there.", signals.name, step, step)
        break
      if stop:
        break
    return outputs

  # ----------------------------------------------------------------------------------------------
  # Population statistics, evaluate, predict.

  def recompute_statistics(self):
    """Recomputes the population statistics (precise BatchNorm) with the current weights over
    `config.statistics_batches` training batches; trainable variables are not changed.
    A no-op when the scaffold has no `statistics` or the config asks for 0 batches."""
    cfg, statistics = self.config, self.restore().statistics
    if (statistics is None or cfg.statistics_batches <= 0 or cfg.statistics_input_fn is None
        or self._statistics_step == self.global_step):
      return
    if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      # Known limitation: the statistics loop aborts the process under MultiWorkerMirroredStrategy
      # on TF 2.21 (std::system_error after the loop starts; seen on 2 local workers).
      logging.warning("Population statistics are not recomputed on several workers yet; the "
                      "moving averages of training are used.")
      self._statistics_step = self.global_step
      return
    start = time.time()
    iterator = self._distribute(cfg.statistics_input_fn)
    statistics.set_population_mode(True)
    try:
      self._loop("statistics")(iterator, tf.constant(cfg.statistics_batches, tf.int32))
    finally:
      statistics.set_population_mode(False)
    self._statistics_step = self.global_step
    logging.info("Population statistics (precise BatchNorm) recomputed at step %d over %d batches "
                 "of %d examples in %.1f s.", self.global_step, cfg.statistics_batches,
                 self.params.batch_size, time.time() - start)

  def evaluate(self, input_fn, name="eval"):
    """One exact pass over `input_fn`'s data; every example is scored once.

    Args:
      input_fn: `input_fn(input_context) -> tf.data.Dataset` of (features, labels), finite, partial
        last batch kept.
      name: sub-folder of model_dir for the summaries.
    Returns:
      dict: every eval metric of the scaffold (floats; num_examples int) and global_step (int).
    """
    metrics = self.restore().eval_metrics
    state = loops.metric_zeros(metrics)
    iterator = self._distribute(input_fn)
    start = time.time()
    while True:
      exhausted, loop_state = self._loop("eval")(iterator, tf.constant(self.config.steps_per_loop))
      state = [s + d for s, d in zip(state, loop_state)]
      results = loops.metric_results(metrics, state)
      if bool(exhausted):
        break
      seen = int(results["num_examples"])
      logging.info("evaluating: %d examples, %.1f examples/s", seen, seen / (time.time() - start))
    results["num_examples"] = int(results["num_examples"])
    results["global_step"] = self.global_step
    if self.is_chief:
      loops.write_eval_summaries(self, input_fn, name, results)
    logging.info("Evaluation at step %d: %s", results["global_step"],
                 "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in results.items()))
    return results

  def predict_function(self, checkpoint_path=None):
    """model_fn's PREDICT branch on the network of a checkpoint, as a tf.function.

    Restores only the network's variables (by name) from `checkpoint_path`, default the newest
    checkpoint of model_dir; a checkpoint deleted meanwhile (a running training keeps the last few)
    is replaced by the newest one then. Call it before any other use of this Estimator.

    Returns:
      (fn, checkpoint_path): fn(features) -> dict of prediction tensors; the path restored.
    Raises:
      UserError: no checkpoint in model_dir, or one that does not fit the network.
    """
    self._build()
    for attempt in range(3):
      path = checkpoint_path or self.latest_checkpoint()
      if path is None:
        raise UserError(f"model_dir={self.model_dir}: no checkpoint (ckpt-*) in it; train first",
                        param="model_dir")
      try:
        checkpoints_lib.restore_network(self._scaffold.network, path)
        break
      except UserError:
        if checkpoint_path or attempt == 2 or tf.io.gfile.exists(path + ".index"):
          raise
    scaffold = self._scaffold
    fn = tf.function(lambda features: self.model_fn(features, None, ModeKeys.PREDICT, self.params,
                                                    scaffold).predictions, autograph=False)
    return fn, path

  def predict(self, input_fn, checkpoint_path=None):
    """Yields one dict of numpy values per example (keys: model_fn's PREDICT predictions).

    Args:
      input_fn: `input_fn(input_context) -> tf.data.Dataset` of features dicts, or of
        (features, labels) pairs whose labels are ignored. Runs on one device.
      checkpoint_path: as in `predict_function`.
    """
    fn, _ = self.predict_function(checkpoint_path)
    for batch in input_fn(tf.distribute.InputContext()):
      features = batch[0] if isinstance(batch, tuple) else batch
      predictions = {k: v.numpy() for k, v in fn(features).items()}
      for i in range(len(next(iter(predictions.values())))):
        yield {k: v[i] for k, v in predictions.items()}


# ------------------------------------------------------------------------------------------------
# train_and_evaluate.

class _EvaluateHook(Hook):
  """Evaluates during training on EvalSpec's schedule and keeps the latest results."""

  def __init__(self, eval_spec):
    self.eval_spec = eval_spec
    self.every_n_steps = eval_spec.every_n_steps
    self.results = None
    self._last_time = time.time()

  def after_step(self, estimator, step, outputs):
    due_by_time = (self.eval_spec.every_n_secs > 0
                   and time.time() - self._last_time >= self.eval_spec.every_n_secs)
    if itstime(step, self.every_n_steps) or due_by_time:
      self.evaluate(estimator)
    return False

  def evaluate(self, estimator):
    estimator.recompute_statistics()
    self.results = estimator.evaluate(self.eval_spec.input_fn, self.eval_spec.name)
    self._last_time = time.time()


def train_and_evaluate(estimator, train_spec, eval_spec):
  """Trains to `train_spec.max_steps`, evaluating on `eval_spec`'s schedule and at the end.

  Returns:
    The final evaluation's results (see `Estimator.evaluate`), with `train_top_1_accuracy` of the
    last training summary when the scaffold has that metric.
  """
  hook = _EvaluateHook(eval_spec)
  estimator.train(train_spec.input_fn, train_spec.max_steps, hooks=(*train_spec.hooks, hook))
  if estimator.stopped_by_signal:  # preempted: leave quickly; the next start resumes
    return hook.results
  if hook.results is None or hook.results["global_step"] != estimator.global_step:
    hook.evaluate(estimator)
  return hook.results
