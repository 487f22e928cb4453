"""The tf.estimator contract, re-implemented on TensorFlow 2 and tf.distribute.

tf.estimator was removed in TensorFlow 2.16, and Keras 3 `Model.fit` falls short for this design
(shared/DESIGN.md section 2: resume at epoch starts, image summaries at wrong steps, no per-replica XLA
under MirroredStrategy, no multi-worker support). This module keeps the Estimator vocabulary so that a
reader of the TF1 design finds every concept where he expects it:

  TF1 Estimator                        here
  -----------------------------------  --------------------------------------------------------------
  ModeKeys, EstimatorSpec              same names; `EstimatorSpec.loss` in TRAIN is the loss *after* the
                                       optimizer step taken by model_fn (the TF2 form of `train_op`)
  model_fn(features, labels, mode,     model_fn(features, labels, mode, params, scaffold): variables
    params)                            cannot be created at every call in TF2, so the network, optimizer
                                       and metrics live in a `Scaffold` built once by `scaffold_fn(params)`
                                       inside `strategy.scope()` and passed in
  Scaffold(init_fn=...)                `Scaffold.init_fn`: a warm start run when model_dir has no
                                       checkpoint yet (tools/fine_tune.py)
  RunConfig                            `RunConfig`: strategy, checkpoint/summary/log intervals,
                                       steps per loop, XLA
  Estimator.train/evaluate/predict     same; train resumes from the latest checkpoint at its exact step
  SessionRunHook                       `Hook` with begin / after_step / end
  TrainSpec, EvalSpec,                 same; evaluation every N steps or seconds and at the end
    train_and_evaluate

`input_fn(input_context) -> tf.data.Dataset` is called once per input pipeline through
`strategy.distribute_datasets_from_function`, so it yields *per-replica* batches.

Only the chief (worker 0 of a multi-worker cluster) writes summaries; every worker takes part in
checkpoint saves (reading ON_READ variables is a collective), non-chief workers into a scratch folder
that is removed afterwards.
"""

import dataclasses
import datetime
import os
import shutil
import signal
import time
from typing import Any, Callable

from absl import logging
import tensorflow as tf

from tools.cli import UserError


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
      `optimizer.iterations` is the global step.
    train_metrics: dict name -> keras.metrics.Metric, updated by model_fn in TRAIN; read and reset by
      the runner at every summary.
    eval_metrics: dict name -> keras.metrics.Metric, updated by model_fn in EVAL; reset before and read
      after each evaluation pass. Must hold "num_examples" (a Sum of batch sizes).
    init_fn: callable(scaffold) -> None, run once when model_dir holds no checkpoint (warm start).
  """

  def __init__(self, network, optimizer=None, train_metrics=None, eval_metrics=None, init_fn=None):
    self.network = network
    self.optimizer = optimizer
    self.train_metrics = train_metrics or {}
    self.eval_metrics = eval_metrics or {}
    self.init_fn = init_fn

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
    keep_checkpoint_max: checkpoints kept in model_dir (older ones are deleted).
    save_summary_steps: TensorBoard scalar interval.
    image_summary_steps: TensorBoard training-image interval.
    summary_images_fn: `fn(features) -> uint8 [N, H, W, 3]`, the images of a per-replica batch as a
      person should see them (e.g. the mean added back); None disables image summaries.
    log_step_count_steps: progress-line interval.
    steps_per_loop: optimizer steps per tf.function call (keeps the host out of the device's way).
    jit_compile: compile each replica's step with XLA.
    checkpoint_input_pipeline: also checkpoint the input pipeline's position (tf.data iterator state),
      so that a restarted run sees exactly the batches an uninterrupted one would have seen.
  """
  strategy: Any = None
  save_checkpoints_steps: int = 1000
  keep_checkpoint_max: int = 5
  save_summary_steps: int = 100
  image_summary_steps: int = 0
  summary_images_fn: Any = None
  log_step_count_steps: int = 100
  steps_per_loop: int = 100
  jit_compile: bool = False
  checkpoint_input_pipeline: bool = False


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


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss; no checkpoint was written with those weights."""


def network_variables(network):
  """{variable.path: variable} for every weight of `network` (trainable or not).

  Checkpoints key the network's variables by these layer-based names (e.g. `stage1_block1_conv1/kernel`)
  rather than by Keras' object-graph positions, so that a checkpoint can be read by name: for
  fine-tuning (tools/fine_tune.py) and to tell a checkpoint of another network apart.
  """
  return {v.path: v for v in network.weights}


def checkpoint_key(path):
  """The key under which `tf.train.Checkpoint(network=network_variables(...))` stores variable `path`."""
  escaped = path.replace(".", "..").replace("/", ".S")  # tf.train.Checkpoint's escaping of names
  return f"network/{escaped}/.ATTRIBUTES/VARIABLE_VALUE"


def itstime(step, every_n, last_step=None):
  """True when `step` is a positive multiple of `every_n` (0 disables), or `step == last_step`."""
  return (every_n > 0 and step > 0 and step % every_n == 0) or step == last_step


def _next_multiple(step, every_n):
  return (step // every_n + 1) * every_n if every_n > 0 else float("inf")


def _is_chief(strategy):
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def _format_eta(seconds):
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class Estimator:
  """Trains, evaluates and predicts with `model_fn` on a tf.distribute strategy.

  Args:
    model_fn: `model_fn(features, labels, mode, params, scaffold) -> EstimatorSpec`, traced in
      tf.function and run per replica.
    model_dir: folder of checkpoints (`ckpt-<step>`), TensorBoard events (eval ones under `eval/`).
    params: dict of hyper-parameters, passed unchanged to model_fn and scaffold_fn.
    scaffold_fn: `scaffold_fn(params) -> Scaffold`, called once inside `strategy.scope()`.
    config: a RunConfig.
  """

  def __init__(self, model_fn, model_dir, params, scaffold_fn, config=None):
    self.model_fn = model_fn
    self.model_dir = model_dir
    self.params = params
    self.config = config or RunConfig()
    self.strategy = self.config.strategy or tf.distribute.get_strategy()
    self.is_chief = _is_chief(self.strategy)
    self._scaffold_fn = scaffold_fn
    self._scaffold = None
    self._checkpoint = None
    self._manager = None
    self._writers = {}
    self._train_loop_fn = None
    self._eval_loop_fn = None
    self._predict_fn = None
    self._stop_signal = None
    self._restored_path = None
    self.stopped_by_signal = False

  # ----------------------------------------------------------------------------------------------
  # State: scaffold, checkpoints, summary writers.

  @property
  def scaffold(self):
    """The Scaffold, built on first use and restored from model_dir's latest checkpoint if any."""
    if self._scaffold is None:
      with self.strategy.scope():
        self._scaffold = self._scaffold_fn(self.params)
      self._checkpoint = tf.train.Checkpoint(**self._checkpointed_objects())
      self._restore_or_initialize()
    return self._scaffold

  @property
  def global_step(self):
    """The global step as a Python int."""
    return int(self.scaffold.global_step.numpy())

  def _checkpointed_objects(self):
    return {"network": network_variables(self._scaffold.network), "optimizer": self._scaffold.optimizer}

  def latest_checkpoint(self):
    """Path prefix of the newest checkpoint in model_dir, or None."""
    return tf.train.latest_checkpoint(self.model_dir)

  def _restore_or_initialize(self):
    """Restores the newest readable checkpoint of model_dir, else runs the warm start (init_fn).

    A checkpoint that cannot be read (a save killed half-way, a truncated file) is skipped with a
    warning for the one before it; a checkpoint of another network is a UserError.
    """
    state = tf.train.get_checkpoint_state(self.model_dir)
    candidates = list(reversed(state.all_model_checkpoint_paths)) if state else []
    for path in candidates:
      try:
        self._checkpoint.restore(path).assert_existing_objects_matched()
      except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.NotFoundError,
              tf.errors.UnknownError, IndexError) as e:  # IndexError: "Read less bytes than requested"
        logging.warning("Checkpoint %s is unreadable (%s: %s); trying the one before it.", path,
                        type(e).__name__, str(e).splitlines()[0][:200])
        continue
      except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
        raise UserError(f"--model_dir={self.model_dir}: its checkpoint {os.path.basename(path)} does "
                        f"not fit this network ({str(e).splitlines()[0][:200]}); use a new "
                        f"--model_dir or the configuration it was trained with") from e
      self._restored_path = path
      logging.info("Restored %s (global step %d)%s.", path, self.global_step,
                   "" if path == candidates[0] else f", the newest readable checkpoint")
      return
    if candidates:
      raise UserError(f"--model_dir={self.model_dir}: none of its checkpoints can be read "
                      f"({', '.join(os.path.basename(p) for p in candidates)})")
    if self._scaffold.init_fn is not None:
      self._scaffold.init_fn(self._scaffold)

  def _checkpoint_manager(self, checkpoint):
    directory = self.model_dir
    if not self.is_chief:  # Every worker saves (collectives); only the chief's files are kept.
      directory = os.path.join(self.model_dir, f".worker_{self.strategy.cluster_resolver.task_id}")
    return tf.train.CheckpointManager(checkpoint, directory,
                                      max_to_keep=self.config.keep_checkpoint_max)

  def _save(self, manager, step):
    """Writes the checkpoint of `step`; refuses non-finite weights, so the last good one stays."""
    if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.scaffold.network.weights):
      raise NonFiniteLossError(f"the weights became non-finite by step {step}; the latest "
                               f"checkpoint ({manager.latest_checkpoint}) is the last good one")
    try:
      path = manager.save(checkpoint_number=step)
    except (tf.errors.ResourceExhaustedError, tf.errors.OutOfRangeError,  # disk full, file too big
            tf.errors.PermissionDeniedError, tf.errors.UnknownError, tf.errors.InternalError,
            OSError) as e:
      raise UserError(f"--model_dir={self.model_dir}: could not write the checkpoint of step {step} "
                      f"({str(e).splitlines()[0][:200]}); the previous checkpoint "
                      f"({manager.latest_checkpoint}) is intact") from e
    if self.is_chief:
      logging.info("Saved checkpoint %s.", path)
    else:
      shutil.rmtree(manager.directory, ignore_errors=True)

  def _writer(self, name):
    if name not in self._writers:
      if self.is_chief:
        self._writers[name] = tf.summary.create_file_writer(os.path.join(self.model_dir, name))
      else:
        self._writers[name] = tf.summary.create_noop_writer()
    return self._writers[name]

  # ----------------------------------------------------------------------------------------------
  # Compiled loops.

  def _replica_fn(self, mode):
    """model_fn for one replica, returning (loss, scalars): nests that strategy.run can carry."""
    def replica_fn(features, labels):
      spec = self.model_fn(features, labels, mode, self.params, self.scaffold)
      return spec.loss, spec.scalars
    if self.config.jit_compile:
      return tf.function(replica_fn, jit_compile=True)
    return replica_fn

  def _make_train_loop(self):
    strategy = self.strategy
    replica_fn = self._replica_fn(ModeKeys.TRAIN)
    sum_ = tf.distribute.ReduceOp.SUM

    @tf.function  # traced once, called twice by train_loop: halves the tracing time
    def one_step(iterator):
      features, labels = next(iterator)
      loss, scalars = strategy.run(replica_fn, args=(features, labels))
      loss = strategy.reduce(sum_, loss, axis=None)
      scalars = {k: strategy.reduce(sum_, v, axis=None) for k, v in scalars.items()}
      images = self._summary_images(strategy.experimental_local_results(features)[0])
      return loss, scalars, images

    @tf.function
    def train_loop(iterator, num_steps):
      """Runs `num_steps` (>= 1) steps; returns the last step's outputs and whether all were finite."""
      finite = tf.constant(True)
      for _ in tf.range(num_steps - 1):
        loss, _, _ = one_step(iterator)
        finite = tf.logical_and(finite, tf.math.is_finite(loss))
      loss, scalars, images = one_step(iterator)
      finite = tf.logical_and(finite, tf.math.is_finite(loss))
      return dict(loss=loss, all_finite=finite, **scalars), images

    return train_loop

  def _summary_images(self, features):
    """uint8 images of one per-replica batch for TensorBoard, or None when disabled."""
    if self.config.summary_images_fn is None or self.config.image_summary_steps <= 0:
      return None
    return self.config.summary_images_fn(features)

  def _make_eval_loop(self):
    strategy = self.strategy
    model_replica_fn = self._replica_fn(ModeKeys.EVAL)

    def replica_fn(features, labels):
      # The last partial batch leaves some replicas an empty one; skip the model there (TF 2.21's
      # CPU convolution returns its input unchanged for an empty batch, which breaks the network).
      batch_size = tf.shape(tf.nest.flatten(features)[0])[0]
      return tf.cond(batch_size > 0, lambda: model_replica_fn(features, labels)[0],
                     lambda: tf.constant(0.0))

    @tf.function
    def eval_loop(iterator, num_steps):
      """Runs up to `num_steps` batches; returns True when the data is exhausted."""
      exhausted = tf.constant(False)
      for _ in tf.range(num_steps):
        batch = iterator.get_next_as_optional()  # partial last batches: empty on some replicas
        exhausted = tf.logical_not(batch.has_value())
        if exhausted:
          break
        features, labels = batch.get_value()
        strategy.run(replica_fn, args=(features, labels))
      return exhausted

    return eval_loop

  # ----------------------------------------------------------------------------------------------
  # Train.

  def _next_boundary(self, step, max_steps, hooks):
    cfg = self.config
    intervals = [cfg.save_checkpoints_steps, cfg.save_summary_steps, cfg.image_summary_steps,
                 cfg.log_step_count_steps] + [h.every_n_steps for h in hooks]
    candidates = [max_steps, step + max(cfg.steps_per_loop, 1)]
    candidates += [_next_multiple(step, n) for n in intervals]
    return int(min(candidates))

  def _handle_stop_signal(self, signum, frame):
    del frame
    logging.warning("Received %s: stopping after the current loop to write a checkpoint.",
                    signal.Signals(signum).name)
    self._stop_signal = signum

  def _install_signal_handlers(self):
    try:
      return {s: signal.signal(s, self._handle_stop_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave the default handlers
      return {}

  def _checkpointable(self, input_fn):
    """input_fn whose datasets can be checkpointed when RunConfig.checkpoint_input_pipeline is set.

    State kept outside the pipeline (a Python counter called through tf.py_function, say) is not
    part of the input position and is left out of the checkpoint instead of failing the save.
    """
    if not self.config.checkpoint_input_pipeline:
      return input_fn
    options = tf.data.Options()
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return lambda input_context: input_fn(input_context).with_options(options)

  def _tracked_for_checkpoint(self, iterator):
    if not self.config.checkpoint_input_pipeline:
      return self._checkpoint
    return tf.train.Checkpoint(**self._checkpointed_objects(), input_pipeline=iterator)

  def train(self, input_fn, max_steps, hooks=()):
    """Trains until the global step reaches `max_steps`, resuming from model_dir's latest checkpoint.

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
    step = self.global_step  # builds and restores the scaffold
    if step >= max_steps:
      logging.info("Global step %d >= max_steps %d: nothing to train.", step, max_steps)
      return {}
    dataset = self.strategy.distribute_datasets_from_function(self._checkpointable(input_fn))
    iterator = iter(dataset)
    checkpoint = self._tracked_for_checkpoint(iterator)
    manager = self._checkpoint_manager(checkpoint)
    if self.config.checkpoint_input_pipeline and self._restored_path:
      checkpoint.restore(self._restored_path).expect_partial()  # the input pipeline's position
    self._restored_path = None  # a later train() call in this process starts a new pipeline
    if self._train_loop_fn is None:
      self._train_loop_fn = self._make_train_loop()
    for hook in hooks:
      hook.begin(self)
    self._stop_signal, self.stopped_by_signal = None, False
    previous_handlers = self._install_signal_handlers()
    try:
      outputs = self._train_steps(iterator, manager, step, max_steps, hooks)
    finally:
      for signum, handler in previous_handlers.items():
        signal.signal(signum, handler)
    for hook in hooks:
      hook.end(self, self.global_step)
    return outputs

  def _train_steps(self, iterator, manager, step, max_steps, hooks):
    cfg = self.config
    start_step, start_time = step, time.time()
    window_step, window_time = step, start_time
    outputs = {}
    while step < max_steps:
      num_steps = self._next_boundary(step, max_steps, hooks) - step
      tensors, images = self._train_loop_fn(iterator, tf.constant(num_steps, tf.int32))
      outputs = {k: float(v) for k, v in tensors.items()}
      step += num_steps
      if not outputs.pop("all_finite"):
        raise NonFiniteLossError(
            f"non-finite loss between steps {step - num_steps + 1} and {step} (last loss "
            f"{outputs['loss']}); the latest checkpoint ({manager.latest_checkpoint}) is the last good one")
      now = time.time()
      if itstime(step, cfg.save_summary_steps) or itstime(step, cfg.log_step_count_steps):
        rate = (step - window_step) / max(now - window_time, 1e-9)
        outputs.update(self._train_summaries(step, outputs, rate))
        window_step, window_time = step, now
        if itstime(step, cfg.log_step_count_steps):
          eta = (max_steps - step) * (now - start_time) / max(step - start_step, 1)
          extra = "".join(f"  {k} {outputs[k]:.4f}" for k in sorted(outputs)
                          if k not in ("loss", "images_per_sec", "global_step_per_sec",
                                       "learning_rate"))
          logging.info("step %d/%d  loss %.4f%s  lr %.5g  %.1f images/s  ETA %s", step, max_steps,
                       outputs["loss"], extra, outputs["learning_rate"], outputs["images_per_sec"],
                       _format_eta(eta))
      if images is not None and itstime(step, cfg.image_summary_steps):
        with self._writer("").as_default():
          tf.summary.image("train/images", images, step=step, max_outputs=images.shape[0])
      stop = any([hook.after_step(self, step, outputs) for hook in hooks])
      if self._stop_signal is not None or stop or itstime(step, cfg.save_checkpoints_steps, max_steps):
        self._save(manager, step)
      if self._stop_signal is not None:
        self.stopped_by_signal = True
        logging.info("Stopped by %s at step %d; the checkpoint for step %d is written, and the next "
                     "start resumes there.", signal.Signals(self._stop_signal).name, step, step)
        break
      if stop:
        break
    return outputs

  def _train_summaries(self, step, outputs, steps_per_sec):
    scaffold = self.scaffold
    values = dict(outputs)
    values["learning_rate"] = float(scaffold.optimizer.learning_rate)
    for name, metric in scaffold.train_metrics.items():
      values[name] = float(metric.result())
      metric.reset_state()
    values["global_step_per_sec"] = steps_per_sec
    values["images_per_sec"] = steps_per_sec * self.params["batch_size"]
    if itstime(step, self.config.save_summary_steps):
      with self._writer("").as_default():
        for name, value in values.items():
          tf.summary.scalar(f"train/{name}", value, step=step)
    return values

  # ----------------------------------------------------------------------------------------------
  # Evaluate and predict.

  def evaluate(self, input_fn, name="eval"):
    """One exact pass over `input_fn`'s data; every example is scored once.

    Args:
      input_fn: `input_fn(input_context) -> tf.data.Dataset` of (features, labels), finite, partial
        last batch kept.
      name: sub-folder of model_dir for the summaries.
    Returns:
      dict of floats: every eval metric of the scaffold (for the SqueezeNext model_fn: loss,
      top_1_accuracy, top_5_accuracy, num_examples) and global_step.
    """
    scaffold = self.scaffold
    for metric in scaffold.eval_metrics.values():
      metric.reset_state()
    if self._eval_loop_fn is None:
      self._eval_loop_fn = self._make_eval_loop()
    iterator = iter(self.strategy.distribute_datasets_from_function(input_fn))
    start = time.time()
    while not bool(self._eval_loop_fn(iterator, tf.constant(self.config.steps_per_loop))):
      seen = int(scaffold.eval_metrics["num_examples"].result())
      logging.info("evaluating: %d examples, %.1f examples/s", seen, seen / (time.time() - start))
    results = {k: float(m.result()) for k, m in scaffold.eval_metrics.items()}
    results["num_examples"] = int(results["num_examples"])
    results["global_step"] = self.global_step
    self._eval_summaries(input_fn, name, results)
    logging.info("Evaluation at step %d: %s", results["global_step"],
                 "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in results.items()))
    return results

  def _eval_summaries(self, input_fn, name, results):
    if not self.is_chief:
      return
    step = results["global_step"]
    with self._writer(name).as_default():
      for key, value in results.items():
        if key != "global_step":
          tf.summary.scalar(f"eval/{key}", value, step=step)
      if self.config.summary_images_fn is not None:
        features, _ = next(iter(input_fn(tf.distribute.InputContext()).take(1)))
        images = self.config.summary_images_fn(features)
        tf.summary.image("eval/images", images, step=step, max_outputs=images.shape[0])

  def predict(self, input_fn):
    """Yields one dict of numpy values per example (keys: model_fn's PREDICT predictions).

    Args:
      input_fn: `input_fn(input_context) -> tf.data.Dataset` of features dicts, or of
        (features, labels) pairs whose labels are ignored. Runs on one device.
    """
    scaffold = self.scaffold
    if self._predict_fn is None:
      self._predict_fn = tf.function(
          lambda features: self.model_fn(features, None, ModeKeys.PREDICT, self.params,
                                         scaffold).predictions)
    for batch in input_fn(tf.distribute.InputContext()):
      features = batch[0] if isinstance(batch, tuple) else batch
      predictions = {k: v.numpy() for k, v in self._predict_fn(features).items()}
      for i in range(len(next(iter(predictions.values())))):
        yield {k: v[i] for k, v in predictions.items()}


# ------------------------------------------------------------------------------------------------
# train_and_evaluate.

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
    self.results = estimator.evaluate(self.eval_spec.input_fn, self.eval_spec.name)
    self._last_time = time.time()


def train_and_evaluate(estimator, train_spec, eval_spec):
  """Trains to `train_spec.max_steps`, evaluating on `eval_spec`'s schedule and at the end.

  Returns:
    The final evaluation's results (see `Estimator.evaluate`).
  """
  hook = _EvaluateHook(eval_spec)
  estimator.train(train_spec.input_fn, train_spec.max_steps, hooks=(*train_spec.hooks, hook))
  if estimator.stopped_by_signal:  # preempted: leave quickly; the next start resumes
    return hook.results
  if hook.results is None or hook.results["global_step"] != estimator.global_step:
    hook.evaluate(estimator)
  return hook.results
