"""tools/recipe/data_facts.py in-process: what the records hold, for the parameters a user leaves out.

The records are the project's builder's (with labels.txt and manifest.json beside them) and
rewrites of them as other tools write records (tests/data_utils.foreign_records). The programs'
view of the same facts (flags, one-line errors, a restart) is in test_user_faults.py.
"""

import os

import pytest

import data_utils
import dataloader
from tools.recipe import data_facts
from tools.recipe import params as params_lib
from tools.common import UserError


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return data_utils.build_records(str(tmp_path_factory.mktemp("facts")), num_classes=3, per_class=4)


def test_the_builders_records_give_classes_count_and_keys_without_a_pass(records):
  data = data_facts.resolve_data(records.train_pattern, records.validation_pattern, user={})
  assert data["num_classes"] == 3 and data["label_map"] == records.label_map  # labels.txt beside
  assert data["num_examples_per_epoch"] == records.num_train  # manifest.json
  assert (data["image_key"], data["label_key"]) == dataloader.IMAGENET_KEYS
  params = params_lib.resolve_params({}, data)
  assert params.model.num_classes == 3 and params.run.num_examples_per_epoch == records.num_train


def test_other_tools_records_give_keys_offset_and_classes_from_one_pass(records, tmp_path):
  tfds = data_utils.foreign_records(records.train_pattern, str(tmp_path / "tfds"), "image", "label",
                                    label_shift=-1)  # TensorFlow Datasets: 0-based labels
  data = data_facts.resolve_data(tfds, None, user={})
  assert (data["image_key"], data["label_key"]) == dataloader.TFDS_KEYS
  assert data["label_offset"] == 0 and data["num_classes"] == 3
  assert data["num_examples_per_epoch"] == records.num_train  # counted: no manifest beside
  other = data_utils.foreign_records(records.train_pattern, str(tmp_path / "other"), "jpeg", "cls",
                                     label_shift=-1)
  with pytest.raises(UserError, match="jpeg"):  # unknown keys: the error lists the record's keys
    data_facts.resolve_data(other, None, user={})
  data = data_facts.resolve_data(other, None, user=dict(image_key="jpeg", label_key="cls"))
  assert data["label_offset"] == 0 and data["num_classes"] == 3  # a label 0 occurs: 0-based


def test_labels_outside_the_given_classes_and_empty_patterns_are_user_errors(records, tmp_path):
  unlisted = data_utils.foreign_records(records.train_pattern, str(tmp_path / "unlisted"),
                                        *dataloader.IMAGENET_KEYS, label_shift=0)
  with pytest.raises(UserError) as error:
    data_facts.resolve_data(unlisted, None, user=dict(num_classes=2))
  # No manifest beside them: the counting pass checks the labels against num_classes first.
  assert "the records' labels run from 1 to 3, outside 1..2" in str(error.value)
  assert error.value.param == ("num_classes", "label_offset")
  nothing = str(tmp_path / "nothing-*")
  with pytest.raises(UserError, match="no file matches this pattern") as error:
    data_facts.resolve_data(nothing, None, user={})
  assert error.value.param == "train_file_pattern"


def test_a_restart_reuses_the_earlier_starts_facts_for_the_same_files(records, tmp_path):
  data = data_facts.resolve_data(records.train_pattern, records.validation_pattern, user={})
  params = params_lib.resolve_params({"batch_size": 4}, data)
  model_dir = str(tmp_path / "run")
  os.makedirs(model_dir)
  params_lib.save_params(params, model_dir, ["test"])
  # No checkpoint yet: the earlier start trained nothing, so nothing of it is reused.
  assert data_facts.earlier_data_facts(data, {}, model_dir) == {}
  open(os.path.join(model_dir, "checkpoint"), "w").write('model_checkpoint_path: "ckpt-1"\n')
  open(os.path.join(model_dir, "ckpt-1.index"), "wb").close()
  facts = data_facts.earlier_data_facts(data, {}, model_dir)
  assert facts["num_examples_per_epoch"] == records.num_train and facts["batch_size"] == 4
  assert "batch_size" not in data_facts.earlier_data_facts(data, {"batch_size": 8}, model_dir)
  other = {**data, "validation_file_pattern": None}
  assert data_facts.earlier_data_facts(other, {}, model_dir) == {}  # other files: counted anew
