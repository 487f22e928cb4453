r"""Writes the committed fixture of tests/test_import_weights.py: a real pytorchcv `.pth` file and
what pytorchcv computes from it on real photographs, so that the importer is tested without
PyTorch. Needs the peers (requirements-peers.txt: torch, pytorchcv); rerun with

  /path/to/peers-venv/bin/python -m scripts.make_import_fixture [--output_dir tests/fixtures/...]

Writes into --output_dir (default FIXTURE_DIR):
  weights.pth    torch.save (zip format) of the state_dict of pytorchcv's sqnxt23_w1 with
                 NUM_CLASSES classes (a small classifier keeps the file at 2.4 MB): seeded
                 initialisation, BatchNorm statistics measured on photo crops then perturbed,
                 BatchNorm scales and shifts and all biases random, so that every tensor matters.
  reference.npz  images: uint8 [N, 224, 224, 3], the photos of `sample_photos` through
                 `torchvision_reference` (Pillow); logits: float32 [N, NUM_CLASSES], pytorchcv's
                 network in eval mode on them after ToTensor and Normalize (torch's arithmetic);
                 names: the photos' names.

The functions here are also the reference side of the tests that run with the peers installed;
torch is imported only by the functions that need it.

With --tf2cv (needs tf2cv 0.0.18 and tf_keras, run with TF_USE_LEGACY_KERAS=1: tf2cv is written
for Keras 2) it writes instead weights.tf2.h5 (tf2cv's sqnxt23_w1, 1,000 classes, seeded,
BatchNorm statistics, scales, shifts and biases random, saved as tf2cv's files are, by Keras 2's
save_weights) and reference.npz (tf2cv's logits on the same photos: `logits` with the stem's
max-pool in PyTorch's ceil mode, `tf2cv_logits` with tf2cv's own): the check of the importer's
.tf2.h5 path against tf2cv itself (tests/test_import_weights.py). tf2cv's ceil-mode MaxPool2d
(tf2cv/models/common.py) pads one row and column on both sides, where PyTorch and Gluon, whose
weights these are, let only the last window hang over the bottom and right: tf2cv's windows are one
pixel off, its logits not quite pytorchcv's.
"""

import io
import os

from absl import app
from absl import flags
import numpy as np

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                           "fixtures", "import_sqnxt23_w1")
FIXTURE_CONFIGURATION = "sqnxt23_w1"
NUM_CLASSES = 10
IMAGE_SIZE = 224  # pytorchcv's SqueezeNext is defined at 199..230 pixels only (its 7x7 pooling)
# ImageNet's mean and std of torchvision's Normalize as osmr evaluates (imgclsmob's ImageNet1K).
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)


def sample_photos():
  """[(name, encoded bytes)]: scikit-learn's two sample photographs as shipped (JPEG, 640x427) and
  three lossless PNG crops of them (portrait 300x427, landscape 640x200, small 180x120), so that
  the resize runs down and up, on both orientations."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  import sklearn.datasets  # pylint: disable=import-outside-toplevel
  folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
  photos = []
  for name in ("china.jpg", "flower.jpg"):
    with open(os.path.join(folder, name), "rb") as f:
      photos.append((name, f.read()))
  china, flower = (np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data in photos)
  for name, crop in (("china_portrait.png", china[:, 170:470]), ("flower_strip.png", flower[100:300]),
                     ("flower_small.png", flower[150:270, 250:430])):
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, "PNG")
    photos.append((name, buffer.getvalue()))
  return photos


def torchvision_reference(data, size=IMAGE_SIZE):
  """osmr's evaluation transforms up to ToTensor, with Pillow (torchvision's Resize(ceil(size /
  0.875)) and CenterCrop(size) of torchvision/transforms/functional.py written out: torchvision
  itself does not import beside the CPU torch of the peers): uint8 [size, size, 3]."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  image = Image.open(io.BytesIO(data)).convert("RGB")
  width, height = image.size
  resize = int(np.ceil(size / 0.875))
  short, long = (width, height) if width <= height else (height, width)
  new_short, new_long = resize, int(resize * long / short)
  new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
  image = image.resize((new_width, new_height), Image.BILINEAR)
  top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
  return np.asarray(image.crop((left, top, left + size, top + size)))


def torch_logits(network, images):
  """pytorchcv's logits (float32 numpy [N, K]) of uint8 [N, S, S, 3] images after ToTensor's
  x / 255 and Normalize(MEAN_RGB, STD_RGB), in torch's float32 arithmetic."""
  import torch  # pylint: disable=import-outside-toplevel
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div(255)
  x = (x - torch.tensor(MEAN_RGB).view(1, 3, 1, 1)) / torch.tensor(STD_RGB).view(1, 3, 1, 1)
  with torch.no_grad():
    return network.eval()(x).numpy()


def pytorchcv_network(name, num_classes=1000, seed=0, calibration=None):
  """pytorchcv's `name` (pretrained=False) with every tensor made to matter: seeded
  initialisation; BatchNorm statistics averaged over `calibration` (uint8 [N, S, S, 3] images,
  normalised) when given, then perturbed (mean + 0.1 N(0, 1) sqrt(var), var x exp(0.2 N(0, 1)));
  BatchNorm scale in 0.8..1.25, shift N(0, 0.1); every bias N(0, 0.05). Eval mode."""
  import torch  # pylint: disable=import-outside-toplevel
  from pytorchcv.models import squeezenext  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  network = getattr(squeezenext, name)(pretrained=False, num_classes=num_classes)
  batch_norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  if calibration is not None:  # realistic statistics: logits of a sane range
    for m in batch_norms:
      m.reset_running_stats()
      m.momentum = None  # a cumulative average
    x = torch.from_numpy(np.ascontiguousarray(calibration.transpose(0, 3, 1, 2))).float().div(255)
    with torch.no_grad():
      network.train()((x - torch.tensor(MEAN_RGB).view(1, 3, 1, 1))
                      / torch.tensor(STD_RGB).view(1, 3, 1, 1))
  generator = torch.Generator().manual_seed(seed + 1)
  normal = lambda t, scale: torch.randn(t.shape, generator=generator) * scale
  with torch.no_grad():
    for m in batch_norms:
      m.running_mean += normal(m.running_mean, 0.1) * m.running_var.sqrt()
      m.running_var *= torch.exp(normal(m.running_var, 0.2))
      m.weight.copy_(0.8 + torch.rand(m.weight.shape, generator=generator) * 0.45)
      m.bias.copy_(normal(m.bias, 0.1))
    for m in network.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
        m.bias.copy_(normal(m.bias, 0.05))
  return network.eval()


def calibration_images(photos, count=8, size=IMAGE_SIZE, seed=0):
  """uint8 [count, size, size, 3]: random square crops of the photos resized with Pillow."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  images = []
  for i in range(count):
    photo = Image.open(io.BytesIO(photos[i % len(photos)][1])).convert("RGB")
    side = int(rng.integers(100, min(photo.size) + 1))
    left, top = (int(rng.integers(0, n - side + 1)) for n in photo.size)
    images.append(np.asarray(photo.crop((left, top, left + side, top + side)).resize(
        (size, size), Image.BILINEAR)))
  return np.stack(images)


def make_fixture(output_dir):
  """Writes weights.pth and reference.npz into output_dir (module docstring); returns their paths."""
  import torch  # pylint: disable=import-outside-toplevel
  photos = sample_photos()
  network = pytorchcv_network(FIXTURE_CONFIGURATION, NUM_CLASSES, seed=0,
                              calibration=calibration_images(photos))
  os.makedirs(output_dir, exist_ok=True)
  weights = os.path.join(output_dir, "weights.pth")
  torch.save(network.state_dict(), weights)
  images = np.stack([torchvision_reference(data) for _, data in photos])
  reference = os.path.join(output_dir, "reference.npz")
  np.savez_compressed(reference, images=images, logits=torch_logits(network, images),
                      names=np.array([name for name, _ in photos]))
  return weights, reference


def _pytorch_ceil_mode_pool(pool_layer, x):
  """tf2cv's MaxPool2d call with PyTorch's ceil mode: zeros (the input is a ReLU's) only below
  and right of the input, as many as the last window needs."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  pads = [(-(n - k) % s) for n, k, s in zip(x.shape[1:3], pool_layer.pool_size,
                                            pool_layer.strides)]
  return pool_layer.pool(tf.pad(x, [[0, 0], [0, pads[0]], [0, pads[1]], [0, 0]]))


def make_tf2cv_reference(output_dir):
  """Writes weights.tf2.h5 and reference.npz of tf2cv's sqnxt23_w1 (module docstring); returns
  their paths. Needs TF_USE_LEGACY_KERAS=1 before TensorFlow is imported."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tf2cv.models import squeezenext  # pylint: disable=import-outside-toplevel
  photos = sample_photos()
  images = np.stack([torchvision_reference(data) for _, data in photos])
  inputs = ((images / np.float32(255) - np.float32(MEAN_RGB)) / np.float32(STD_RGB))
  tf.keras.utils.set_random_seed(0)
  network = squeezenext.sqnxt23_w1(pretrained=False, data_format="channels_last")
  network(inputs[:1])  # builds the variables
  rng = np.random.default_rng(1)
  for variable in network.variables:
    name, shape = variable.name, variable.shape
    value = {"moving_mean": lambda: rng.normal(0.0, 0.1, shape),
             "moving_variance": lambda: rng.uniform(0.5, 1.5, shape),
             "gamma": lambda: rng.uniform(0.8, 1.25, shape),
             "beta": lambda: rng.normal(0.0, 0.1, shape),
             "bias": lambda: rng.normal(0.0, 0.05, shape)}.get(name.split("/")[-1][:-2])
    if value is not None:
      variable.assign(value().astype(np.float32))
  os.makedirs(output_dir, exist_ok=True)
  weights = os.path.join(output_dir, "weights.tf2.h5")
  network.save_weights(weights)
  tf2cv_logits = network(inputs, training=False).numpy()
  from tf2cv.models import common  # pylint: disable=import-outside-toplevel
  tf2cv_call = common.MaxPool2d.call
  common.MaxPool2d.call = lambda layer, x: (_pytorch_ceil_mode_pool(layer, x) if layer.ceil_mode
                                            else tf2cv_call(layer, x))
  try:
    logits = network(inputs, training=False).numpy()
  finally:
    common.MaxPool2d.call = tf2cv_call
  reference = os.path.join(output_dir, "reference.npz")
  np.savez_compressed(reference, images=images, logits=logits, tf2cv_logits=tf2cv_logits,
                      names=np.array([name for name, _ in photos]))
  return weights, reference


def main(argv):
  del argv
  make = make_tf2cv_reference if flags.FLAGS.tf2cv else make_fixture
  for path in make(flags.FLAGS.output_dir):
    print(f"Wrote {path} ({os.path.getsize(path):,} bytes)")


if __name__ == "__main__":
  flags.DEFINE_string("output_dir", FIXTURE_DIR, "Folder of the fixture.")
  flags.DEFINE_boolean("tf2cv", False, "Write tf2cv's .tf2.h5 and its logits instead (Keras 2).")
  app.run(main)
