"""Rows of the README's bad-input catalogue that the module tests do not cover already: unusual
records that training goes on with. The model_dir failures of `train.py` (not writable, another
network, a full disk) are in test_user_faults.py."""

import io

import cv2
import numpy as np
from PIL import Image
import pytest

import data_utils
import dataloader
from tools.common import UserError

INPUT_PARAMS = dataloader.InputParams()
IMAGE_SIZE, BATCH_SIZE, NUM_CLASSES = 24, 4, 3


def decoded_records(path):
  """(images, class_idx, skipped) of one evaluation pass over the TFRecord file `path`."""
  counter = dataloader.SkippedRecords()
  images, labels = [], []
  with dataloader.user_errors_from_data():
    for features, batch_labels in dataloader.input_fn(path, False, INPUT_PARAMS, IMAGE_SIZE,
                                                      BATCH_SIZE, NUM_CLASSES, skipped=counter):
      images.append(features["image"].numpy())
      labels.append(batch_labels["class_idx"].numpy())
  return np.concatenate(images), np.concatenate(labels), counter.count


def encoded(image, extension, **pil):
  if pil:  # Pillow writes the CMYK JPEGs OpenCV cannot
    buffer = io.BytesIO()
    Image.fromarray(image).convert(pil["mode"]).save(buffer, format="JPEG")
    return buffer.getvalue()
  return cv2.imencode(extension, image)[1].tobytes()


def test_png_grayscale_and_cmyk_bytes_in_records_decode_as_rgb(tmp_path):
  rgb = np.zeros((30, 30, 3), np.uint8)
  rgb[..., 0] = 200  # red in RGB order
  sources = [encoded(rgb[..., ::-1], ".jpg"), encoded(rgb[..., ::-1], ".png"),
             encoded(rgb[..., 0], ".jpg"), encoded(rgb, ".jpg", mode="CMYK")]
  path = data_utils.write_records(str(tmp_path / "records"),
                                  [data_utils.example(b, label=1) for b in sources])
  images, labels, skipped = decoded_records(path)
  assert skipped == 0 and list(labels) == [0, 0, 0, 0]
  pixels = dataloader.add_mean(images, INPUT_PARAMS).numpy().astype(int)
  centre = pixels[:, 12, 12]
  np.testing.assert_allclose(centre[:2], [[200, 0, 0]] * 2, atol=4)  # JPEG and PNG: red
  assert abs(centre[2, 0] - centre[2, 1]) <= 2  # grayscale: three equal channels
  np.testing.assert_allclose(centre[3], [200, 0, 0], atol=12)  # CMYK converted to RGB


def test_a_file_that_is_not_a_tfrecord_is_named(tmp_path):
  path = tmp_path / "train-00000-of-00001"
  path.write_bytes(data_utils.jpeg_bytes())  # a JPEG under a record file's name
  with pytest.raises(UserError, match="train-00000-of-00001"):
    decoded_records(str(path))
