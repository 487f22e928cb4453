"""The poly optimizer of the official SqueezeNext solver: SGD with momentum, linear warm-up, poly decay.

Source: the Caffe solver of the official release (amirgholami/SqueezeNext), identical for all five
networks:

  global batch 1024, 150,136 iterations (120 epochs of 1,281,167 images), SGD momentum 0.9 (not Nesterov),
  weight decay 1e-4 on every weight, learning rate warmed up linearly from 0.1 to 0.4 over 780 iterations,
  then  lr = base_lr * (1 - it / max_iter) ** 2  with `it` the absolute iteration.

The seed repository (a TF1 Estimator port) scaled this linearly to batch 256 (base_lr 0.1, warm-up 3120
iterations from 0.025); `scale_recipe(batch_size)` scales the learning rates the same way for any
batch. The warm-up is a share of the data, not a number of steps: 780 x 1024 images = 0.623 epochs of
ImageNet (`OFFICIAL_WARMUP_EPOCHS`); tools/recipe/params.py converts it to steps for the run's data and batch. Weight decay is not part of the optimizer: Caffe
adds `weight_decay * w` to the gradient before the momentum update, which is the gradient of the L2 term
that model_fn adds to the loss (Keras' own `weight_decay` is decoupled and would not match Caffe).
"""

import dataclasses

import keras
import tensorflow as tf

from tools.common import param
from tools.common import UserError

IMAGENET_TRAIN_EXAMPLES = 1281167  # ILSVRC2012 training set size.
# The official warm-up as a share of the data: 780 iterations x 1024 images / 1,281,167 = 0.6234 epochs.
OFFICIAL_WARMUP_EPOCHS = 780 * 1024 / IMAGENET_TRAIN_EXAMPLES


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A training recipe: the solver's numbers. Units: learning rates per example-averaged loss, steps.

  Attributes:
    batch_size: global batch (examples per optimizer step, summed over replicas).
    base_learning_rate: learning rate at the end of warm-up (`base_lr` of the solver).
    warmup_start_learning_rate: learning rate at step 0.
    warmup_steps: steps of linear warm-up (0 disables it).
    warmup_epochs: the warm-up as given in epochs (None: as steps, or the default); the run's
      warmup_steps are derived from it once (tools/recipe/params.py).
    max_steps: steps of the whole run (`max_iter`); the learning rate reaches 0 there.
    poly_power: exponent of the poly decay.
    momentum: SGD momentum (heavy ball, not Nesterov).
    weight_decay: L2 factor; the gradient gets `weight_decay * w` added (Caffe's convention).
  """
  batch_size: int = param(1024, "Global batch (summed over replicas).", minimum=1, meaning=True,
                          default_text="256, halved while an epoch has fewer than 8 steps (at least "
                          "8)")
  base_learning_rate: float = param(0.4, "Learning rate after warm-up.", minimum=0, meaning=True,
                                    default_text="the official 0.4 at batch 1024, scaled linearly")
  warmup_start_learning_rate: float = param(
      0.1, "Learning rate at step 0.", minimum=0, meaning=True,
      default_text="the official 0.1 at batch 1024, scaled linearly")
  warmup_steps: int = param(780, "Warm-up steps (or --warmup_epochs).", minimum=0,
                            default_text="--warmup_epochs' default")
  warmup_epochs: float | None = param(
      None, "Warm-up in epochs of the training data (converted to warmup_steps).", minimum=0,
      default_text="the official 0.623 (780 steps of 1,024 ImageNet images), at most 10% of the run")
  max_steps: int = param(150136, "Steps to train (overrides --num_epochs).", minimum=1,
                         default_text="--num_epochs of the data")
  poly_power: float = param(2.0, "Exponent of the poly decay.", flag=False, meaning=True)
  momentum: float = param(0.9, "SGD momentum.", flag=False, meaning=True)
  weight_decay: float = param(1e-4, "L2 weight decay (Caffe's sense).", minimum=0, meaning=True)


# The official Caffe solver: 150,136 steps = 120 epochs at batch 1024.
OFFICIAL_RECIPE = Recipe()


def scale_recipe(batch_size, recipe=OFFICIAL_RECIPE):
  """Scales `recipe` linearly to another global batch (learning rates x k, steps / k, k = batch / 1024).

  At batch 256 this gives the seed repository's recipe: base_lr 0.1, warm-up 3120 steps from 0.025,
  600,544 steps. Raises UserError when batch_size is not a positive integer.
  """
  if batch_size < 1:
    raise UserError(f"batch_size={batch_size}: expected a positive number of examples",
                    param="batch_size")
  k = batch_size / recipe.batch_size
  return dataclasses.replace(
      recipe, batch_size=batch_size,
      base_learning_rate=recipe.base_learning_rate * k,
      warmup_start_learning_rate=recipe.warmup_start_learning_rate * k,
      warmup_steps=round(recipe.warmup_steps / k),
      max_steps=round(recipe.max_steps / k))


@keras.saving.register_keras_serializable(package="squeezenext")
class PolyWarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Caffe's "poly" learning rate with the official linear warm-up, as a Keras schedule.

  For step `it` (the optimizer's iteration count, 0 for the first update):
    it <  warmup_steps: (it * base_lr + (warmup_steps - it) * warmup_start_lr) / warmup_steps
    it >= warmup_steps: base_lr * (1 - min(it, max_steps) / max_steps) ** power
  so the rate is warmup_start_lr at step 0 and 0 from max_steps on. Returns float32 scalars.
  """

  def __init__(self, base_learning_rate, warmup_start_learning_rate, warmup_steps, max_steps,
               power=2.0):
    super().__init__()
    self.base_learning_rate = float(base_learning_rate)
    self.warmup_start_learning_rate = float(warmup_start_learning_rate)
    self.warmup_steps = int(warmup_steps)
    self.max_steps = int(max_steps)
    self.power = float(power)

  def __call__(self, step):
    it = tf.cast(step, tf.float32)
    warmup_steps = float(max(self.warmup_steps, 1))  # avoids 0/0 when warm-up is off
    warmup = (it * self.base_learning_rate
              + (warmup_steps - it) * self.warmup_start_learning_rate) / warmup_steps
    remaining = 1.0 - tf.minimum(it, float(self.max_steps)) / float(self.max_steps)
    poly = self.base_learning_rate * remaining ** self.power
    return tf.where(it < self.warmup_steps, warmup, poly)

  def get_config(self):
    return dict(base_learning_rate=self.base_learning_rate,
                warmup_start_learning_rate=self.warmup_start_learning_rate,
                warmup_steps=self.warmup_steps, max_steps=self.max_steps, power=self.power)


def build_optimizer(recipe, loss_scale=False):
  """SGD with momentum on the poly schedule of `recipe`.

  Args:
    recipe: a `Recipe`.
    loss_scale: wrap in `keras.optimizers.LossScaleOptimizer` (dynamic loss scaling, for float16).
  Returns:
    A Keras 3 optimizer; `optimizer.iterations` is the global step.
  """
  schedule = PolyWarmupSchedule(recipe.base_learning_rate, recipe.warmup_start_learning_rate,
                                recipe.warmup_steps, recipe.max_steps, recipe.poly_power)
  optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=recipe.momentum, nesterov=False)
  return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scale else optimizer
