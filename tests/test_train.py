"""The training runner end to end on small real records: model_fn branches, weight decay, resume,
fine-tuning, summaries, exact evaluation, MirroredStrategy on 2 logical CPUs. The network is
`tiny_SqNxt` at 32x32 on 3 colour classes. The CLI's one-line errors (a non-finite loss among them)
and the programs' CPU kernels are in test_user_faults.py and test_stats.py."""

import dataclasses
import glob
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

import estimator as estimator_lib
import model
from tools.recipe import experiment
from tools.recipe import fine_tune
from tools.recipe import params as params_lib
from tools.datasets import records as records_lib

NUM_VALIDATION = 9  # with per-replica batch 2 on 2 replicas: 4 full batches and a partial one


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """Three classes of 40x40 JPEGs (a dominant colour each, with noise): 36 train, 9 validation."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for c, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
    folder = root / "images" / f"class{c}"
    folder.mkdir(parents=True)
    for i in range(15):
      image = np.clip(rng.normal(colour, 40, size=(40, 40, 3)), 0, 255).astype(np.uint8)
      cv2.imwrite(str(folder / f"{i}.jpg"), image)
  result = records_lib.build(str(root / "images"), str(root / "records"),
                                 validation_fraction=0.2, num_workers=2, seed=1)
  assert result.num_validation == NUM_VALIDATION
  return result


def make_params(records, **overrides):
  user = dict(configuration="tiny_SqNxt", image_size=32, num_classes=3, batch_size=4,
              max_steps=10, base_learning_rate=0.05, warmup_start_learning_rate=0.01,
              warmup_steps=3, save_checkpoints_steps=10, save_summary_steps=5,
              log_every_n_steps=5, image_summary_steps=5, steps_per_loop=5, bn_momentum=0.9,
              eval_every_n_steps=0, seed=0)
  user.update(overrides)
  data = dict(train_file_pattern=records.train_pattern,
              validation_file_pattern=records.validation_pattern, num_examples_per_epoch=36)
  return params_lib.resolve_params(user, data)


def train_input_fn(params):
  return experiment.make_input_fn(params, params.run.train_file_pattern, True)


def eval_input_fn(params):
  return experiment.make_input_fn(params, params.run.validation_file_pattern, False)


def test_the_default_batch_gives_an_epoch_at_least_8_steps():
  assert [params_lib.default_batch_size(n) for n in (1_281_167, 2048, 2047, 400, 49, 3)] == [
      256, 256, 128, 32, 8, 8]


def test_weight_decay_adds_exactly_wd_times_w_to_the_gradient(records):
  params = make_params(records, weight_decay=1e-4)
  network = model.build_network("tiny_SqNxt", 3, 32)
  images = tf.random.stateless_normal([4, 32, 32, 3], seed=[1, 2]) * 50.0
  class_idx = tf.constant([0, 1, 2, 0])
  variables = network.trainable_variables
  with tf.GradientTape(persistent=True) as tape:
    loss, cross_entropy, decay, _ = model.train_loss(network, images, class_idx, params)
  # The decay term's gradient is exactly 1e-4 * w for every trainable variable (conv and FC kernels,
  # BN scale and shift), and the loss that is differentiated is cross-entropy + decay.
  for variable, gradient in zip(variables, tape.gradient(decay, variables)):
    np.testing.assert_allclose(gradient, 1e-4 * variable.numpy(), rtol=1e-6, err_msg=variable.path)
  assert float(loss) == pytest.approx(float(cross_entropy + decay), rel=1e-7)
  for variable, g, g0 in zip(variables, tape.gradient(loss, variables),
                             tape.gradient(cross_entropy, variables)):
    scale = float(tf.reduce_max(tf.abs(g0))) + 1e-12  # float32 rounding of the sum
    np.testing.assert_allclose(g - g0, 1e-4 * variable.numpy(), atol=2e-6 * scale, rtol=1e-4)


def test_model_fn_predict_branch(records):
  params = make_params(records)
  scaffold = experiment.scaffold_fn(params)
  features = {"image": tf.zeros([2, 32, 32, 3])}
  spec = model.model_fn(features, None, estimator_lib.ModeKeys.PREDICT, params, scaffold)
  predictions = spec.predictions
  assert set(predictions) == {"top_1", "top_5", "probabilities", "logits"}
  assert predictions["probabilities"].shape == (2, 3) and predictions["top_5"].shape == (2, 3)
  np.testing.assert_allclose(tf.reduce_sum(predictions["probabilities"], -1), 1.0, rtol=1e-5)


def test_progress_lines_come_after_the_first_step_and_on_time(records, tmp_path, caplog):
  """A first line after step 1 (tracing included), the last step's, and with a time interval
  shorter than a step, a line after every step although the step interval is 100."""
  params = make_params(records, max_steps=4, log_every_n_steps=100, steps_per_loop=100,
                       save_summary_steps=0, image_summary_steps=0, log_every_n_secs=0)
  est = experiment.build_estimator(params, str(tmp_path))
  caplog.set_level("INFO", logger="absl")
  lines = lambda: [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  progress_steps = lambda: [int(line.split()[1].split("/")[0]) for line in lines()]
  est.train(train_input_fn(params), 4)
  assert progress_steps() == [1, 4]
  assert "first step" in lines()[0] and "(tracing included)" in lines()[0]
  assert "images/s  ETA 0:00:00" in lines()[1]
  caplog.clear()
  est.config = dataclasses.replace(est.config, log_step_count_secs=1e-9)
  est.train(train_input_fn(params), 7)
  assert progress_steps() == [5, 6, 7]


@pytest.fixture(scope="module")
def resumed_run(records, tmp_path_factory):
  """A run "stopped" after 20 steps and resumed to step 40 by a new Estimator: a dict of the
  model_dir, params, the resumed Estimator and what it had restored before it trained on. Its
  model_dir is also the source of the fine-tuning test."""
  model_dir = tmp_path_factory.mktemp("resumed")
  params = make_params(records, max_steps=40, save_checkpoints_steps=20, save_summary_steps=10,
                       log_every_n_steps=10, image_summary_steps=10, steps_per_loop=10)
  first = experiment.build_estimator(params, str(model_dir))
  first.train(train_input_fn(params), 20)  # "stopped" after 20 steps
  resumed = experiment.build_estimator(params, str(model_dir))
  resumed.restore()
  restored_step = resumed.global_step
  next_learning_rate = float(resumed.scaffold.optimizer.learning_rate)
  resumed.train(train_input_fn(params), 40)
  return dict(model_dir=model_dir, params=params, estimator=resumed, restored_step=restored_step,
              next_learning_rate=next_learning_rate)


# The tests of the resumed run's module fixture run on one xdist worker, which trains it once.
@pytest.mark.xdist_group("resumed_run")
def test_train_resume_summaries_and_exact_evaluation(resumed_run):
  tmp_path, params = resumed_run["model_dir"], resumed_run["params"]
  resumed = resumed_run["estimator"]
  assert resumed_run["restored_step"] == 20  # the next step taken is step 21
  # The LR of the next step is the schedule's value at step 20, as in an uninterrupted run.
  schedule = resumed.scaffold.optimizer._learning_rate  # pylint: disable=protected-access
  assert resumed_run["next_learning_rate"] == pytest.approx(float(schedule(20)))
  assert resumed.global_step == 40
  assert sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "ckpt-*.index"))) == [
      "ckpt-20.index", "ckpt-40.index"]

  results = resumed.evaluate(eval_input_fn(params))
  assert results["num_examples"] == NUM_VALIDATION and results["global_step"] == 40
  assert 0.0 <= results["top_1_accuracy"] <= results["top_5_accuracy"] == 1.0  # 3 classes < 5

  # One series of summaries across the restart; the logged LR is the schedule's (the next step's).
  scalars, images = read_events(str(tmp_path))
  assert scalars["train/learning_rate"] == pytest.approx(
      {step: float(schedule(step)) for step in (10, 20, 30, 40)})
  for name in ("train/loss", "train/cross_entropy", "train/weight_decay", "train/top_1_accuracy",
               "train/top_5_accuracy", "train/global_step_per_sec", "train/images_per_sec"):
    assert sorted(scalars[name]) == [10, 20, 30, 40], name
  assert sorted(images["train/images"]) == [10, 20, 30, 40]
  eval_scalars, eval_images = read_events(str(tmp_path / "eval"))
  assert eval_scalars["eval/top_1_accuracy"].keys() == {40} and eval_images["eval/images"].keys() == {40}


def read_events(folder):
  """{tag: {step: value}} for scalars and {tag: {step: number of images}} from the event files."""
  scalars, images = {}, {}
  for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor)
        if value.metadata.plugin_data.plugin_name == "images":
          images.setdefault(value.tag, {})[event.step] = len(tensor) - 2  # width, height, images...
        else:
          scalars.setdefault(value.tag, {})[event.step] = float(tensor)
  return scalars, images


@pytest.mark.xdist_group("resumed_run")
def test_fine_tune_restores_everything_but_the_classifier(resumed_run, tmp_path):
  # The source: the 3-class model of resumed_run; the target has 2 classes.
  params, source = resumed_run["params"], resumed_run["estimator"]
  target_params = params.replace_model(num_classes=2)
  init_fn = fine_tune.make_init_fn(str(resumed_run["model_dir"]))
  target = experiment.build_estimator(target_params, str(tmp_path / "target"), init_fn=init_fn)
  target.restore()  # warm-started by init_fn: model_dir has no checkpoint
  assert target.global_step == 0  # step and optimizer start fresh
  source_weights = {v.path: v.numpy() for v in source.scaffold.network.weights}
  for variable in target.scaffold.network.weights:
    if variable.path.startswith("classifier/"):
      assert variable.shape != source_weights[variable.path].shape
    else:
      np.testing.assert_array_equal(variable.numpy(), source_weights[variable.path], variable.path)


def test_two_replicas_match_one_device(records, tmp_path, two_replicas):
  # Global-batch BN statistics (bn_synchronized) make 2 replicas compute what 1 device computes on
  # the whole batch. Float32 sums taken in another order still differ by ~1e-4 of some gradients
  # (BN's shift gradients are sums that nearly cancel), and training amplifies that from step to
  # step, so the learning rate is small: the updates remain large enough to tell a wrong
  # aggregation (a gradient x2 or /2 would differ by the whole update).
  params = make_params(records, max_steps=5, batch_size=8, bn_synchronized=True,
                       random_flip=False, output_train_images=False, base_learning_rate=1e-5,
                       warmup_start_learning_rate=1e-5, precise_bn_examples=0)
  input_fn = train_input_fn(dataclasses.replace(params, input=dataclasses.replace(
      params.input, shuffle_buffer_size=1, deterministic_training=True)))
  one = experiment.build_estimator(params, str(tmp_path / "one"))
  two = experiment.build_estimator(params, str(tmp_path / "two"), strategy=two_replicas)
  initial = one.restore().network.get_weights()
  two.restore().network.set_weights(initial)
  for estimator in (one, two):
    estimator.train(input_fn, 5)
  trainable = lambda est: [v.numpy() for v in est.scaffold.network.trainable_variables]
  norm = lambda arrays: np.sqrt(sum(np.sum(np.square(a)) for a in arrays))
  w_one, w_two = trainable(one), trainable(two)
  w_initial = [w for w, v in zip(initial, one.scaffold.network.weights) if v.trainable]
  difference = norm([a - b for a, b in zip(w_one, w_two)])
  update = norm([a - b for a, b in zip(w_one, w_initial)])
  assert difference / norm(w_one) < 1e-4
  assert difference / update < 0.25, (difference, update)  # a gradient x2 or /2: about 1


def test_evaluate_counts_every_example_once_on_two_replicas(records, tmp_path, two_replicas):
  params = make_params(records)
  est = experiment.build_estimator(params, str(tmp_path), strategy=two_replicas)
  results = est.evaluate(eval_input_fn(params))
  assert results["num_examples"] == NUM_VALIDATION
