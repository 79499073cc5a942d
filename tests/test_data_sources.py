"""load_dataset over every source, its error messages, and the shared real-data subsets."""

from __future__ import annotations

import io

import sys

import numpy as np
import pytest
from PIL import Image

from tl_jax import paths
from tl_jax.data import load_dataset
from tl_jax.data.sources import pil_resize, set_channels
from tl_jax.data.sources_images import load_jpeg_npz
from tl_jax.data.types import ArrayDataset, DataSplits
from tl_jax.errors import ConfigError


def _write_npz(path, n=6, hw=8, k=3, names=True, **extra):
  rng = np.random.default_rng(n)
  images = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
  labels = (np.arange(n) % k).astype(np.int32)
  np.savez(path, image=images, label=labels, **extra)
  if names:
    (path.parent / "classes.txt").write_text("\n".join(f"n{i}" for i in range(k)) + "\n")
  return images, labels


def test_npz_single_and_splits(tmp_path):
  images, labels = _write_npz(tmp_path / "train.npz", n=12)
  _write_npz(tmp_path / "test.npz", n=6)
  ds = load_dataset({"source": "npz", "path": str(tmp_path / "train.npz")})
  assert isinstance(ds, ArrayDataset) and ds.class_names == ("n0", "n1", "n2")
  np.testing.assert_array_equal(ds.images, images)
  np.testing.assert_array_equal(ds.labels, labels)
  splits = load_dataset({"source": "npz", "train": str(tmp_path / "train.npz"),
                         "test": str(tmp_path / "test.npz"), "val_per_class": 2, "seed": 1})
  assert isinstance(splits, DataSplits)
  assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 6, 6)
  np.testing.assert_array_equal(splits.val.class_counts(), [2, 2, 2])
  # the carved val rows are train rows, disjoint from what is left in train.
  rows = {im.tobytes() for im in images}
  val_rows = {im.tobytes() for im in splits.val.images}
  train_rows = {im.tobytes() for im in splits.train.images}
  assert val_rows <= rows and train_rows <= rows and not val_rows & train_rows


def test_npz_grey_without_class_file_and_postprocessing(tmp_path):
  grey = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)
  np.savez(tmp_path / "g.npz", image=grey, label=np.array([0, 1, 1, 0]))
  ds = load_dataset({"source": "npz", "path": str(tmp_path / "g.npz"), "size": (3, 3),
                     "channels": 3, "classes": [1]})
  assert ds.images.shape == (2, 3, 3, 3) and ds.class_names == ("1",)
  np.testing.assert_array_equal(ds.images[..., 0], ds.images[..., 2])


def test_pil_resize_and_channels_values():
  img = np.full((1, 4, 4, 3), [10, 200, 30], np.uint8)
  out = pil_resize(img, (2, 6))
  assert out.shape == (1, 2, 6, 3)
  np.testing.assert_array_equal(out, np.broadcast_to([10, 200, 30], out.shape))
  grey = set_channels(img, 1)
  assert grey.shape == (1, 4, 4, 1)
  assert int(grey[0, 0, 0, 0]) == round(0.299 * 10 + 0.587 * 200 + 0.114 * 30)


@pytest.mark.parametrize("content,match", [
    (b"not a zip file at all", "not a readable .npz"),
    (None, "missing array"),
])
def test_corrupt_npz(tmp_path, content, match):
  p = tmp_path / "bad.npz"
  if content is None:
    np.savez(p, images=np.zeros((1, 2, 2, 3), np.uint8), label=np.zeros(1, np.int32))
  else:
    p.write_bytes(content)
  with pytest.raises(ConfigError, match=match) as e:
    load_dataset({"source": "npz", "path": str(p)})
  assert str(p) in str(e.value)


def test_npz_bad_dtype_shape_missing_file(tmp_path):
  np.savez(tmp_path / "f.npz", image=np.zeros((2, 4, 4, 3), np.float32), label=np.zeros(2))
  with pytest.raises(ConfigError, match="dtype"):
    load_dataset({"source": "npz", "path": str(tmp_path / "f.npz")})
  np.savez(tmp_path / "s.npz", image=np.zeros((2, 4), np.uint8), label=np.zeros(2, np.int32))
  with pytest.raises(ConfigError, match="shape"):
    load_dataset({"source": "npz", "path": str(tmp_path / "s.npz")})
  missing = tmp_path / "nope" / "train.npz"
  with pytest.raises(ConfigError, match="nope/train.npz"):
    load_dataset({"source": "npz", "path": str(missing)})
  with pytest.raises(ConfigError) as e:
    load_dataset({"source": "csv", "path": "x"})
  assert e.value.field == "data.source" and "tfds" in str(e.value)


def _jpeg(arr, mode="RGB"):
  buf = io.BytesIO()
  Image.fromarray(arr, mode).save(buf, format="JPEG", quality=95)
  return np.frombuffer(buf.getvalue(), np.uint8)


def test_jpeg_npz_decode_grey_resize_and_cache(tmp_path):
  smooth = [np.clip(np.add.outer(np.arange(16), np.arange(16))[..., None] * 8 + c * 40, 0,
                    255).astype(np.uint8).repeat(3, -1) for c in range(3)]
  grey = np.full((16, 16), 77, np.uint8)
  blobs = [_jpeg(s) for s in smooth] + [_jpeg(grey, "L")]
  offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])]).astype(np.int64)
  labels = np.array([0, 0, 1, 1], np.int32)
  p = tmp_path / "t.npz"
  np.savez(p, jpeg_bytes=np.concatenate(blobs), offsets=offsets, label=labels)
  ds = load_jpeg_npz(str(p))
  assert ds.images.shape == (4, 16, 16, 3) and ds.images.dtype == np.uint8
  assert np.abs(ds.images[0].astype(int) - smooth[0]).mean() < 3  # JPEG q95 round trip
  np.testing.assert_allclose(ds.images[3], 77, atol=1)  # grey JPEG -> RGB
  sub = load_dataset({"source": "tiny_imagenet", "path": str(p), "per_class": 1,
                      "size": (8, 8), "cache_dir": str(tmp_path / "cache")})
  assert sub.images.shape == (2, 8, 8, 3)
  np.testing.assert_array_equal(sub.labels, [0, 1])
  cached = list((tmp_path / "cache").glob("*.npz"))
  assert len(cached) == 1
  again = load_dataset({"source": "tiny_imagenet", "path": str(p), "per_class": 1,
                        "size": (8, 8), "cache_dir": str(tmp_path / "cache")})
  np.testing.assert_array_equal(again.images, sub.images)
  bad = tmp_path / "b.npz"
  np.savez(bad, jpeg_bytes=np.zeros(10, np.uint8), offsets=np.array([0, 10]), label=[0])
  with pytest.raises(ConfigError, match="cannot decode"):
    load_jpeg_npz(str(bad))


def test_image_folder(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "imgs"
  arrays = {}
  for cls in ("dog", "cat"):
    (root / cls).mkdir(parents=True)
    for i in range(2):
      a = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
      Image.fromarray(a).save(root / cls / f"{i}.png")
      arrays[(cls, i)] = a
  ds = load_dataset({"source": "image_folder", "root": str(root)})
  assert ds.class_names == ("cat", "dog") and ds.images.shape == (4, 5, 7, 3)
  np.testing.assert_array_equal(ds.images[0], arrays[("cat", 0)])  # PNG is lossless
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
  Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "cat" / "z.png")
  with pytest.raises(ConfigError, match="differ in shape"):
    load_dataset({"source": "image_folder", "root": str(root)})
  ds = load_dataset({"source": "image_folder", "root": str(root), "size": (4, 4)})
  assert ds.images.shape == (5, 4, 4, 3)
  (root / "empty").mkdir()
  with pytest.raises(ConfigError, match="has no images"):
    load_dataset({"source": "image_folder", "root": str(root)})
  (tmp_path / "none").mkdir()
  with pytest.raises(ConfigError, match="no class subfolders"):
    load_dataset({"source": "image_folder", "root": str(tmp_path / "none")})


def test_digits_scaling_subset_and_upsample():
  from sklearn.datasets import load_digits
  raw = load_digits()
  ds = load_dataset({"source": "digits"})
  assert ds.images.shape == (1797, 8, 8, 1) and ds.images.max() == 255
  np.testing.assert_array_equal(ds.images[..., 0], np.round(raw.images * 255 / 16))
  sub = load_dataset({"source": "digits", "classes": [0, 1, 2, 3, 4], "size": (32, 32)})
  assert sub.images.shape[1:] == (32, 32, 1) and sub.class_names == ("0", "1", "2", "3", "4")
  assert len(sub) == int(np.isin(raw.target, range(5)).sum())
  np.testing.assert_array_equal(sub.labels, raw.target[raw.target < 5])


def test_tfds_mock_data_source():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    ds = load_dataset({"source": "tfds", "name": "cifar10", "split": "train"})
    assert ds.images.shape == (6, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.num_classes == 10 and ds.labels.max() < 10
    splits = load_dataset({"source": "tfds", "name": "mnist",
                           "splits": {"train": "train", "test": "test"}})
    assert splits.train.images.shape == (6, 28, 28, 1) and len(splits.test) == 6
    with pytest.raises(ConfigError, match="tfds.data_source failed"):
      load_dataset({"source": "tfds", "name": "no_such_dataset_xyz", "split": "train"})
  with pytest.raises(ConfigError, match="exactly one"):
    load_dataset({"source": "tfds", "name": "mnist"})


# ----------------------------------------------------------------------------- shared data


@pytest.mark.shared
def test_shared_cifar10():
  ds = load_dataset({"source": "npz", "path": "shared://data/cifar10/train.npz"})
  assert ds.images.shape == (5000, 32, 32, 3) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.class_counts(), [500] * 10)
  assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
  assert ds.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # README: canonical order


@pytest.mark.shared
def test_shared_tiny_imagenet_decode():
  path = "shared://data/tiny_imagenet/val.npz"
  ds = load_jpeg_npz(path, indices=[0, 1, 20, 3999])
  assert ds.images.shape == (4, 64, 64, 3) and ds.images.dtype == np.uint8
  with np.load(paths.resolve(path)) as z:
    np.testing.assert_array_equal(ds.labels, z["label"][[0, 1, 20, 3999]])
  assert ds.num_classes == 200 and ds.class_names[0] == "n01443537"
  assert ds.images.std() > 10  # real photographs, not blank
  small = load_jpeg_npz(path, indices=[0], size=(32, 32))
  assert small.images.shape == (1, 32, 32, 3)


@pytest.mark.shared
def test_shared_cats_vs_dogs_and_corrupt_copy(tmp_path):
  splits = load_dataset({"source": "image_folder", "train": "shared://data/cats_vs_dogs/train",
                         "test": "shared://data/cats_vs_dogs/test", "size": (16, 16)})
  assert len(splits.train) == 600 and len(splits.test) == 200
  assert splits.class_names == ("cat", "dog")
  np.testing.assert_array_equal(splits.train.class_counts(), [300, 300])
  src = paths.resolve("shared://data/cifar10/test.npz").read_bytes()
  bad = tmp_path / "test.npz"
  bad.write_bytes(src[: len(src) // 2])  # truncated download
  with pytest.raises(ConfigError, match="not a readable"):
    load_dataset({"source": "npz", "path": str(bad)})


def test_tfds_images_of_varying_size_are_resized_per_record(tmp_path):
  """cats_vs_dogs-like records (every image its own size): one error naming data.size without
  a size; resized one by one with it; data.split / data.splits work from the base config."""
  pytest.importorskip("tensorflow_datasets")
  import tensorflow_datasets as tfds
  from tests.helpers import tiny_config
  from tl_jax import experiment
  from tl_jax.sweep import grid
  with tfds.testing.mock_data(num_examples=12):
    with pytest.raises(ConfigError, match=r"data.size: got None; allowed: \(H, W\)"):
      load_dataset({"source": "tfds", "name": "cats_vs_dogs", "split": "train"})
    ds = load_dataset({"source": "tfds", "name": "cats_vs_dogs", "split": "train",
                       "size": (16, 12)})
    assert ds.images.shape == (12, 16, 12, 3) and ds.class_names == ("cat", "dog")
    cfg = tiny_config({"train": "", "test": ""}, **{
        "data.source": "tfds", "data.name": "cats_vs_dogs", "data.split": "train",
        "data.size": (16, 16), "data.val_per_class": 1, "data.test_per_class": 1,
        "train.num_epochs": 1})
    splits = experiment.load_splits(cfg)
    assert splits.train.image_shape == (16, 16, 3) and len(splits.test) == 2
    grid.set_field(cfg, "data.splits.train", "train[:50%]")  # a new key of the open dict
    assert cfg.data.splits.train == "train[:50%]"


def test_tfds_dataset_prepared_offline_from_an_image_folder_trains(tmp_path):
  """The guide's path, end to end and TF-free: an image folder of variable-size (and mixed
  mode) images -> an array_record TFDS dataset -> a tl_jax run reading it by name."""
  pytest.importorskip("tensorflow_datasets")
  from PIL import Image
  from tests.helpers import tiny_config
  from tl_jax import experiment
  from tl_jax.data import tfds_prepare
  rng = np.random.default_rng(0)
  for c in ("cat", "dog"):
    (tmp_path / "imgs" / c).mkdir(parents=True)
    for i in range(10):
      h, w = int(rng.integers(10, 30)), int(rng.integers(10, 30))
      a = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
      img = Image.fromarray(a if i % 3 else a[..., 0])  # some greyscale
      img.save(tmp_path / "imgs" / c / f"{i}.png")
  out = tfds_prepare.prepare(tmp_path / "imgs", "tl_jax_test_pets", tmp_path / "tfds",
                             test_fraction=0.2)
  assert list(out.glob("*.array_record*"))
  cfg = tiny_config({"train": "", "test": ""}, **{
      "data.source": "tfds", "data.name": "tl_jax_test_pets", "data.data_dir": str(tmp_path / "tfds"),
      "data.split": "", "data.size": (12, 12), "data.val_per_class": 2, "train.num_epochs": 1,
      "model.name": "tiny_cnn"})
  cfg.data.splits = {"train": "train", "test": "test"}
  s = experiment.train_and_evaluate(cfg, tmp_path / "run")
  assert s["train_size"] == 12 and s["num_classes"] == 2  # 16 train - 2x2 val; 4 test
  assert sum(s["test_confusion_matrix"][0]) + sum(s["test_confusion_matrix"][1]) == 4
  assert "tensorflow" not in sys.modules
  assert tfds_prepare.main(["--image_folder", str(tmp_path / "nope"), "--name", "x",
                            "--data_dir", str(tmp_path)]) == 2
