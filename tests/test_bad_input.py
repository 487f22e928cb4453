"""Rows of the README's bad-input catalogue that the module tests do not cover already: unusual
records that training goes on with, and the model_dir failures of `train.py`."""

import glob
import io
import os
import resource
import signal

import cv2
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import data_utils
import dataloader
import process_utils
from process_utils import run
from process_utils import run_cases
from process_utils import TRAIN
from tools import experiment
from tools import params as params_lib
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


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return data_utils.build_records(tmp_path_factory.mktemp("bad_input"))


def train_args(records, model_dir, *extra):
  return [TRAIN, f"--model_dir={model_dir}", f"--train_file_pattern={records.train_pattern}",
          "--configuration=tiny_SqNxt", "--image_size=32", f"--num_classes={records.num_classes}",
          "--batch_size=4", "--max_steps=4", "--steps_per_loop=2", "--save_checkpoints_steps=2",
          "--output_train_images=false", "--precise_bn_examples=0", *extra]


def one_error_line(result):
  return process_utils.one_error_line(
      result if isinstance(result, dict) else {"code": result.returncode, "stderr": result.stderr})


def test_model_dir_not_writable_holding_another_network_or_full_while_saving(records, tmp_path):
  blocked = tmp_path / "a_file"  # root may write anywhere: a file in the way stands for it
  blocked.write_text("")
  run_dir = tmp_path / "run"
  outcomes = run_cases("train", [train_args(records, blocked / "run")[1:],
                                 train_args(records, run_dir)[1:],  # ckpt-2 and ckpt-4
                                 train_args(records, run_dir, "--configuration=v_1_0_SqNxt_23",
                                            "--max_steps=6")[1:]])
  line = one_error_line(outcomes[0])
  assert "--model_dir" in line and "not a writable folder" in line
  assert outcomes[1]["code"] == 0, outcomes[1]["stderr"][-3000:]
  line = one_error_line(outcomes[2])
  assert f"--model_dir={run_dir}" in line and "does not fit this network" in line
  assert tf.train.latest_checkpoint(run_dir).endswith("ckpt-4")  # nothing new written

  # A disk that fills up while the checkpoint of step 6 is written.
  data_file = tf.io.gfile.glob(str(run_dir / "ckpt-4.data-*"))[0]
  limit = os.path.getsize(data_file) // 2  # room for the event files, not for a checkpoint

  def disk_full():  # writes past `limit` bytes fail as on a full disk (EFBIG instead of ENOSPC)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

  result = run(train_args(records, run_dir, "--max_steps=6"), preexec_fn=disk_full)
  line = one_error_line(result)
  assert "could not write the checkpoint of step 6" in line and "ckpt-4" in line
  assert not glob.glob(str(run_dir / "*_temp*")) and not glob.glob(str(run_dir / "*.tmp-*"))
  assert tf.train.latest_checkpoint(run_dir).endswith("ckpt-4")
  # And it resumes (in-process: the Estimator train.py builds, on the same params).
  user = dict(configuration="tiny_SqNxt", image_size=32, num_classes=records.num_classes,
              batch_size=4, max_steps=6, steps_per_loop=2, save_checkpoints_steps=2,
              output_train_images=False, precise_bn_examples=0)
  params = params_lib.resolve_params(user, dict(train_file_pattern=records.train_pattern,
                                                num_examples_per_epoch=records.num_train))
  resumed = experiment.build_estimator(params, str(run_dir))
  assert resumed.global_step == 4
  resumed.train(experiment.make_input_fn(params, records.train_pattern, True), 6)
  assert tf.train.latest_checkpoint(run_dir).endswith("ckpt-6")


def test_a_full_disk_at_start_is_one_line_and_leaves_no_partial_file(records, tmp_path):
  def disk_full():  # writes past 16 bytes fail, as on a full disk (EFBIG instead of ENOSPC)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))

  line = one_error_line(run(train_args(records, tmp_path / "run"), preexec_fn=disk_full))
  assert f"--model_dir={tmp_path / 'run'}: cannot write there" in line
  assert not [n for n in os.listdir(tmp_path / "run") if n == "params.json" or ".tmp-" in n]
