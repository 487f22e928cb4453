"""The SqueezeNext experiment: Params in, an Estimator with its input_fns and hooks out.

What train.py runs and what benchmarks and notebooks call directly:

  est = experiment.build_estimator(params, model_dir, strategy)
  results = experiment.run(est, params)       # train (and evaluate)
  results = experiment.evaluate(est, params)  # evaluate the newest checkpoint only
"""

import os

from absl import logging
import tensorflow as tf

import dataloader
import estimator as estimator_lib
import model
from tools.recipe import optimizer as optimizer_lib
from tools.recipe import stats
from tools.common import UserError

# Training top-1 above evaluation top-1 by more than this gets a warning at the end.
EVAL_GAP_WARNING = 0.1


class ModelStatsHook(estimator_lib.Hook):
  """Writes the per-layer statistics table (tools/recipe/stats.py) to model_dir/model_stats.csv at begin;
  the successor of the seed's ModelStats SessionRunHook."""

  def begin(self, estimator):
    if not estimator.is_chief:
      return
    rows, totals = stats.model_statistics(estimator.scaffold.network)
    os.makedirs(estimator.model_dir, exist_ok=True)
    stats.write_csv(rows, os.path.join(estimator.model_dir, "model_stats.csv"))
    logging.info("Model statistics: %s (model_stats.csv).",
                 "  ".join(f"{k}={v:,}" for k, v in totals.items()))


def make_input_fn(params, file_pattern, training):
  """`input_fn(input_context)` of dataloader.input_fn for Params `params` and `file_pattern`."""
  m = params.model
  return lambda ctx: dataloader.input_fn(file_pattern, training, params.input, m.image_size,
                                         params.batch_size, m.num_classes, ctx)


def run_config(params, strategy=None):
  """The estimator.RunConfig of Params `params` (run section) on `strategy`."""
  run = params.run
  images = run.output_train_images
  statistics_batches = -(-run.precise_bn_examples // params.batch_size)  # ceil: whole batches
  return estimator_lib.RunConfig(
      strategy=strategy, save_checkpoints_steps=run.save_checkpoints_steps,
      keep_checkpoint_max=run.keep_checkpoint_max, save_summary_steps=run.save_summary_steps,
      image_summary_steps=run.image_summary_steps if images else 0,
      summary_images_fn=(lambda f: dataloader.add_mean(f["image"][:3], params.input)) if images
      else None,
      log_step_count_steps=run.log_every_n_steps,
      log_step_count_secs=run.log_every_n_secs, steps_per_loop=run.steps_per_loop,
      jit_compile=run.xla, checkpoint_input_pipeline=run.checkpoint_input_pipeline,
      statistics_batches=statistics_batches,
      statistics_input_fn=make_input_fn(params, run.train_file_pattern, True))


def scaffold_fn(params):
  """Builds the network, the poly optimizer and the metrics once (called in `strategy.scope()`).

  Args:
    params: tools.recipe.params.Params; its `model` section builds the network, its `recipe` the
      optimizer.
  Returns:
    A `Scaffold` whose optimizer is built on the network's trainable variables, so that checkpoints
    restore into existing variables; model.train_metrics() and model.eval_metrics(); statistics:
    the network's model.PopulationStatistics (precise BatchNorm).
  """
  network = model.build_from_params(params.model)
  optimizer = optimizer_lib.build_optimizer(params.recipe, loss_scale=params.model.dtype == "float16")
  optimizer.build(network.trainable_variables)
  return estimator_lib.Scaffold(network, optimizer, train_metrics=model.train_metrics(),
                                eval_metrics=model.eval_metrics(),
                                statistics=model.PopulationStatistics(network))


def build_estimator(params, model_dir, strategy=None, init_fn=None):
  """The SqueezeNext Estimator for Params `params` on `strategy`, optionally warm-started by
  `init_fn(scaffold)` (tools/recipe/fine_tune.make_init_fn)."""
  build = scaffold_fn
  if init_fn is not None:
    def build(p):
      scaffold = scaffold_fn(p)
      scaffold.init_fn = init_fn
      return scaffold
  return estimator_lib.Estimator(model.model_fn, model_dir, params, build,
                                 run_config(params, strategy))


def run(est, params):
  """Trains to recipe.max_steps, evaluating every eval_every_n_steps / _secs and at the end.

  Returns the final evaluation's results, or {} when there is no validation_file_pattern. A final
  evaluation far below training accuracy gets a warning naming the likely causes.
  """
  run_params = params.run
  train_input_fn = make_input_fn(params, run_params.train_file_pattern, True)
  hooks = (ModelStatsHook(),)
  if not run_params.validation_file_pattern:
    est.train(train_input_fn, params.recipe.max_steps, hooks=hooks)
    return {}
  train_spec = estimator_lib.TrainSpec(train_input_fn, params.recipe.max_steps, hooks=hooks)
  eval_spec = estimator_lib.EvalSpec(
      make_input_fn(params, run_params.validation_file_pattern, False),
      every_n_steps=run_params.eval_every_n_steps, every_n_secs=run_params.eval_every_n_secs)
  results = estimator_lib.train_and_evaluate(est, train_spec, eval_spec)
  warn_if_eval_far_below_training(results, est.last_train_summary, params)
  return results


def evaluate(est, params):
  """One exact pass of params.run.validation_file_pattern through the newest checkpoint of est's
  model_dir, as it is: no population statistics are recomputed and nothing is written but the
  evaluation's TensorBoard summaries (model_dir/eval: the metrics, a few images and an
  `eval/setup` text giving the checkpoint, its step, the network and the preprocessing).

  Returns est.evaluate's results (loss, top_1_accuracy, top_5_accuracy, num_examples,
  global_step). Raises UserError when model_dir holds no checkpoint.
  """
  checkpoint = est.latest_checkpoint()
  if checkpoint is None:
    raise UserError(f"model_dir={est.model_dir}: no checkpoint (ckpt-*) to evaluate",
                    param="model_dir")
  m, pattern = params.model, params.run.validation_file_pattern
  est.restore()
  setup = (f"{os.path.basename(checkpoint)} (step {est.global_step}) of {m.configuration}, "
           f"{m.num_classes} classes, {m.image_size} px, {params.input.preprocessing} "
           f"preprocessing, on {pattern}")
  logging.info("Evaluating %s.", setup)
  results = est.evaluate(make_input_fn(params, pattern, False))
  if est.is_chief:
    with est.writer("eval").as_default():
      tf.summary.text("eval/setup", setup, step=results["global_step"])
  return results


def warn_if_eval_far_below_training(results, train_summary, params):
  """Logs one warning when training top-1 (the last summary) exceeds evaluation top-1 by more than
  EVAL_GAP_WARNING; returns True when it warned."""
  train, evaluation = train_summary.get("top_1_accuracy"), (results or {}).get("top_1_accuracy")
  if train is None or evaluation is None or train - evaluation <= EVAL_GAP_WARNING:
    return False
  logging.warning(
      "Evaluation top-1 %.3f is far below training top-1 %.3f. Likely causes: stale BatchNorm "
      "statistics (precise_bn_examples=%d; raise it, or bn_momentum), a warm-up or learning rate "
      "unsuited to this data (warmup_steps=%d, base_learning_rate=%g), validation data unlike the "
      "training data, or overfitting.", evaluation, train, params.run.precise_bn_examples,
      params.recipe.warmup_steps, params.recipe.base_learning_rate)
  return True
