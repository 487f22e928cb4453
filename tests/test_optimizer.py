"""The poly learning-rate schedule against the official solver's formula (the Caffe solver of the
official release), and the recipe resolved for a run."""

import pytest

from tools.recipe import optimizer as optimizer_lib
from tools.recipe import params as params_lib


def official_lr(it, base=0.4, start=0.1, warmup=780, max_iter=150136, power=2.0):
  """The Caffe solver's learning rate at absolute iteration `it`, written out independently."""
  if it < warmup:
    return (it * base + (warmup - it) * start) / warmup
  return base * (1.0 - it / max_iter) ** power


@pytest.mark.parametrize("step", [0, 390, 779, 780, 75068, 150136])
def test_official_schedule_matches_formula(step):
  recipe = optimizer_lib.OFFICIAL_RECIPE
  schedule = optimizer_lib.PolyWarmupSchedule(recipe.base_learning_rate,
                                              recipe.warmup_start_learning_rate,
                                              recipe.warmup_steps, recipe.max_steps,
                                              recipe.poly_power)
  assert float(schedule(step)) == pytest.approx(official_lr(step), rel=1e-6, abs=1e-9)


def test_schedule_endpoints():
  schedule = optimizer_lib.PolyWarmupSchedule(0.4, 0.1, 780, 150136)
  assert float(schedule(0)) == pytest.approx(0.1)
  assert float(schedule(780)) == pytest.approx(0.4 * (1 - 780 / 150136) ** 2)
  assert float(schedule(150136)) == 0.0
  assert float(schedule(200000)) == 0.0  # clamped past the end, never negative


def test_scale_recipe_gives_the_seed_batch_256_recipe():
  recipe = optimizer_lib.scale_recipe(256)
  assert recipe.base_learning_rate == pytest.approx(0.1)
  assert recipe.warmup_start_learning_rate == pytest.approx(0.025)
  assert recipe.warmup_steps == 3120
  assert recipe.max_steps == 600544


def test_optimizer_is_sgd_momentum_on_the_schedule():
  optimizer = optimizer_lib.build_optimizer(optimizer_lib.OFFICIAL_RECIPE)
  assert optimizer.momentum == pytest.approx(0.9) and not optimizer.nesterov
  assert float(optimizer.learning_rate) == pytest.approx(0.1)  # step 0: warm-up start


def test_the_official_imagenet_run_resolves_to_the_official_recipe():
  # Warm-up as a share of the data: 0.623 epochs of ImageNet at batch 1024 are exactly 780 steps.
  data = dict(train_file_pattern="train-*", num_examples_per_epoch=optimizer_lib.IMAGENET_TRAIN_EXAMPLES)
  recipe = params_lib.resolve_params({"batch_size": 1024}, data).recipe
  # 120 epochs are 150,136.7 steps: the official solver truncates to 150,136, the run rounds up.
  assert (recipe.warmup_steps, recipe.max_steps) == (780, 150137)
  assert (recipe.base_learning_rate, recipe.warmup_start_learning_rate) == pytest.approx((0.4, 0.1))
  # The same share of an epoch for any data and batch, at most 10% of the run.
  small = params_lib.resolve_params({"batch_size": 32, "max_steps": 150},
                                    dict(num_examples_per_epoch=400)).recipe
  assert small.warmup_steps == round(0.6234 * 400 / 32) == 8
  short = params_lib.resolve_params({"batch_size": 32, "max_steps": 20},
                                    dict(num_examples_per_epoch=4000)).recipe
  assert short.warmup_steps == 2  # 78 would be 0.623 epochs: capped at 10% of 20 steps
  assert params_lib.resolve_params({"batch_size": 256, "warmup_epochs": 1.0},
                                   data).recipe.warmup_steps == 5005  # 1,281,167 / 256
