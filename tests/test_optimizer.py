"""The poly learning-rate schedule against the official solver's formula (the Caffe solver of the official release)."""

import pytest

from tools import optimizer as optimizer_lib


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
