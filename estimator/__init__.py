"""The tf.estimator contract, re-implemented on TensorFlow 2 and tf.distribute.

Why a runner of our own: tf.estimator was removed in TensorFlow 2.16 (the tensorflow-estimator
package ends at 2.15). Keras 3 `Model.fit` was checked on TF 2.21 and falls short for this design:
`BackupAndRestore` resumes at the start of an epoch (steps are repeated and a step-based learning
rate drifts), `tf.summary.image` inside a compiled `train_step` records at the wrong steps,
`jit_compile=True` under MirroredStrategy fails, and Keras 3 does not support
MultiWorkerMirroredStrategy (keras-team/keras#20585). Orbit, the Model Garden loop library, ships
only inside tf-models-official, which pins an older TensorFlow and many heavy packages.

This package keeps the Estimator vocabulary so that a reader of the TF1 design finds every concept
where he expects it:

  TF1 Estimator                        here
  -----------------------------------  --------------------------------------------------------------
  ModeKeys, EstimatorSpec              same names (spec.py); `EstimatorSpec.loss` in TRAIN is the loss
                                       *after* the optimizer step taken by model_fn (the TF2 form of
                                       `train_op`)
  model_fn(features, labels, mode,     model_fn(features, labels, mode, params, scaffold): variables
    params)                            cannot be created at every call in TF2, so the network,
                                       optimizer and metrics live in a `Scaffold` built once by
                                       `scaffold_fn(params)` inside `strategy.scope()` and passed in
  Scaffold(init_fn=...)                `Scaffold.init_fn`: a warm start run when model_dir has no
                                       checkpoint yet (tools/recipe/fine_tune.py)
  RunConfig                            `RunConfig`: strategy, checkpoint/summary/log intervals,
                                       steps per loop, XLA, population statistics
  Estimator.train/evaluate/predict     same (runner.py); train resumes from the newest checkpoint at
                                       its exact step; `predict_function` is the one restore-and-run
                                       path of inference (tools/serving/inference.py)
  Saver, CheckpointSaverHook           `CheckpointKeeper` (checkpoints.py): save, restore, fallback
                                       past damaged checkpoints, per-worker scratch, input position
  SessionRunHook                       `Hook` with begin / after_step / end
  TrainSpec, EvalSpec,                 same; evaluation every N steps or seconds and at the end
    train_and_evaluate

Layout, as Orbit splits it: spec.py (the vocabulary), checkpoints.py (what is saved and restored),
loops.py (the compiled loops and the host-side progress), runner.py (the Estimator that schedules
them).
"""

from estimator.checkpoints import checkpoint_key
from estimator.checkpoints import CheckpointKeeper
from estimator.checkpoints import latest_checkpoint
from estimator.checkpoints import network_variables
from estimator.runner import Estimator
from estimator.runner import is_chief
from estimator.runner import train_and_evaluate
from estimator.spec import EstimatorSpec
from estimator.spec import EvalSpec
from estimator.spec import Hook
from estimator.spec import itstime
from estimator.spec import ModeKeys
from estimator.spec import NonFiniteLossError
from estimator.spec import RunConfig
from estimator.spec import Scaffold
from estimator.spec import TrainSpec
