"""ArrayDataset validation and the seeded samplers in tl_jax.data.sampling."""

from __future__ import annotations

import numpy as np
import pytest

from tl_jax.data import sampling
from tl_jax.data.types import ArrayDataset, DataSplits
from tl_jax.errors import ConfigError


def _ds(n=12, k=3, hw=4, c=3, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, hw, hw, c), dtype=np.uint8)
  return ArrayDataset(images, np.arange(n) % k, tuple(f"c{i}" for i in range(k)))


def _labels():
  # class 0: 10, class 1: 6, class 2: 3 examples, interleaved.
  return np.array([0] * 10 + [1] * 6 + [2] * 3)[np.random.default_rng(1).permutation(19)]


# ----------------------------------------------------------------------------- ArrayDataset


def test_array_dataset_basics():
  ds = _ds()
  assert len(ds) == 12 and ds.num_classes == 3 and ds.labels.dtype == np.int32
  np.testing.assert_array_equal(ds.class_counts(), [4, 4, 4])
  sub = ds.subset([5, 0, 5])
  np.testing.assert_array_equal(sub.images[0], ds.images[5])
  np.testing.assert_array_equal(sub.labels, [2, 0, 2])
  both = ds.concat(sub)
  assert len(both) == 15
  np.testing.assert_array_equal(both.images[12:], sub.images)
  mask = ds.labels == 1
  assert len(ds.subset(mask)) == 4


@pytest.mark.parametrize("kwargs,field", [
    (dict(images=np.zeros((2, 4, 4, 3), np.float32)), "images.dtype"),
    (dict(images=np.zeros((2, 4, 4), np.uint8)), "images.shape"),
    (dict(labels=np.zeros(3, np.int32)), "labels.shape"),
    (dict(labels=np.array([0.0, 1.0])), "labels.dtype"),
    (dict(labels=np.array([0, 5])), "labels"),
    (dict(class_names=()), "class_names"),
])
def test_array_dataset_rejects(kwargs, field):
  args = dict(images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([0, 1]),
              class_names=("a", "b"))
  args.update(kwargs)
  with pytest.raises(ConfigError) as e:
    ArrayDataset(**args)
  assert e.value.field == field


def test_concat_and_splits_check_class_names():
  a = _ds()
  b = ArrayDataset(a.images, a.labels, ("x", "y", "z"))
  with pytest.raises(ConfigError, match="class_names"):
    a.concat(b)
  with pytest.raises(ConfigError, match="splits.test.class_names"):
    DataSplits(a, None, b)
  s = DataSplits(a, a.subset([0, 1]))
  assert [n for n, _ in s.items()] == ["train", "val"] and s.num_classes == 3


def test_select_classes_relabels_in_given_order():
  ds = _ds(n=12, k=4)
  sub = ds.select_classes([3, 1])
  assert sub.class_names == ("c3", "c1")
  np.testing.assert_array_equal(np.bincount(sub.labels), [3, 3])
  np.testing.assert_array_equal(sub.images[sub.labels == 0], ds.images[ds.labels == 3])
  with pytest.raises(ConfigError):
    ds.select_classes([0, 7])


# ----------------------------------------------------------------------------- samplers


def test_sample_per_class_exact_and_seeded():
  labels = _labels()
  idx = sampling.sample_per_class(labels, 3, seed=0)
  assert len(set(idx.tolist())) == 9
  np.testing.assert_array_equal(np.bincount(labels[idx]), [3, 3, 3])
  np.testing.assert_array_equal(idx, sampling.sample_per_class(labels, 3, seed=0))
  draws = {tuple(sampling.sample_per_class(labels, 3, seed=s)) for s in range(5)}
  assert len(draws) > 1
  gen = sampling.sample_per_class(labels, 2, np.random.default_rng(3), classes=[0, 1])
  np.testing.assert_array_equal(np.bincount(labels[gen], minlength=3), [2, 2, 0])


def test_sample_per_class_too_many_names_class():
  with pytest.raises(ConfigError, match="class 2 has only 3"):
    sampling.sample_per_class(_labels(), 4, seed=0)


def test_train_val_split_disjoint():
  labels = _labels()
  tr, va = sampling.train_val_split(labels, 2, 1, seed=7)
  assert not set(tr) & set(va)
  np.testing.assert_array_equal(np.bincount(labels[tr]), [2, 2, 2])
  np.testing.assert_array_equal(np.bincount(labels[va]), [1, 1, 1])
  with pytest.raises(ConfigError, match="class 2"):
    sampling.train_val_split(labels, 3, 1, seed=7)


def test_imbalanced_dict_and_tuple():
  labels = _labels()
  idx = sampling.imbalanced(labels, {1: 2}, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[idx]), [10, 2, 3])  # others kept whole
  idx = sampling.imbalanced(labels, ([0], 1, 3), seed=0)
  np.testing.assert_array_equal(np.bincount(labels[idx]), [1, 3, 3])
  assert len(set(idx.tolist())) == len(idx)
  with pytest.raises(ConfigError):
    sampling.imbalanced(labels, {9: 1}, seed=0)
  with pytest.raises(ConfigError):
    sampling.imbalanced(labels, [1, 2], seed=0)


def test_merge_classes_by_name_and_id():
  names = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
  labels = np.arange(7)
  new, new_names = sampling.merge_classes(labels, {"other": ["akiec", "df", 6]}, names)
  assert new_names == ("other", "bcc", "bkl", "mel", "nv")
  np.testing.assert_array_equal(new, [0, 1, 2, 0, 3, 4, 0])
  assert new.dtype == np.int32
  with pytest.raises(ConfigError):
    sampling.merge_classes(labels, {"x": ["nope"]}, names)
  with pytest.raises(ConfigError, match="two groups"):
    sampling.merge_classes(labels, {"x": [0, 1], "y": [1, 2]}, names)


def test_balance_down_and_up():
  labels = _labels()
  down = sampling.balance(labels, "down", seed=0)
  np.testing.assert_array_equal(np.bincount(labels[down]), [3, 3, 3])
  assert len(set(down.tolist())) == 9
  up = sampling.balance(labels, "up", seed=0)
  np.testing.assert_array_equal(np.bincount(labels[up]), [10, 10, 10])
  assert set(up.tolist()) == set(range(19))  # every original row kept
  with pytest.raises(ConfigError) as e:
    sampling.balance(labels, "sideways")
  assert e.value.field == "balance.mode"
