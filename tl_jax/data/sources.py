"""`load_dataset(spec)`: one entry point from a config to in-memory uint8 datasets.

`spec` is a dict or ml_collections ConfigDict with `spec.source` in SOURCES. Fields by source:

- npz:           `path` (one file -> ArrayDataset) or `train`/`val`/`test` (-> DataSplits); files
                 hold `image` uint8 NHWC and `label`; class names from `classes.txt` beside them.
- tiny_imagenet: same paths, JPEG-bytes + offsets npz; `per_class` (first k rows per class) and
                 `cache_dir` (decoded arrays cached, keyed by file identity) optional.
- image_folder:  `root` (one subfolder per class -> ArrayDataset) or `train`/`val`/`test` roots.
- digits:        scikit-learn 8x8 digits (-> ArrayDataset).
- tfds:          `name`, `split` (-> ArrayDataset) or `splits` {'train': 'train[:90%]', ...};
                 `data_dir`, `download` (default False).

Fields every source accepts, applied in this order: `size` (H, W) resize with PIL bilinear
(antialiased, as torchvision's Resize on PIL images), `channels` (1: luminance, 3: grey repeated),
`classes` (keep these label ids, relabelled 0..k-1), `merge` ({new_name: [ids or names]}),
`val_per_class` / `test_per_class` (carved from train with `seed`, default 0).
Paths may be `shared://...` (see tl_jax.paths).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tl_jax.data import sampling, sources_extra, sources_images
# Checked file access and array validation live in tl_jax.data.checks, shared with
# sources_images (which must not import this module); the names stay importable from here.
from tl_jax.data.checks import (check_images, check_labels, check_size, open_npz,
                                read_class_names, resolve_existing)
from tl_jax.data.types import ArrayDataset, DataSplits
from tl_jax.errors import ConfigError

SOURCES = ("npz", "tiny_imagenet", "image_folder", "digits", "tfds")  # built in; source_names()
_USER_SOURCES: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register_dataset(name: str, loader: Callable[[dict[str, Any]], Any]) -> None:
  """Makes `loader` available as `data.source = name`.

  `loader(spec)` gets the run's data fields as a dict (`data.root`, `data.train`, `data.size`,
  ... as set in the config) and returns an `ArrayDataset` (a train pool: validation / test are
  then carved with `data.val_per_class` / `data.test_per_class`) or a `DataSplits`. Images are
  uint8 NHWC, labels int in [0, number of class names). `data.size` / `data.channels` are
  applied to what it returns, as for the built-in sources.
  """
  if name in SOURCES:
    raise ConfigError("register_dataset.name", name, hint="a built-in source has that name")
  _USER_SOURCES[name] = loader


def source_names() -> tuple[str, ...]:
  """Every `data.source` a config may use: the built-in ones, then registered ones."""
  return SOURCES + tuple(_USER_SOURCES)
SPLIT_NAMES = ("train", "val", "test")


def spec_get(spec: Any, key: str, default: Any = None) -> Any:
  """Reads `key` from a dict or ConfigDict, `default` when absent or None."""
  if spec is None:
    return default
  if hasattr(spec, "get"):
    value = spec.get(key, default)
  else:
    value = getattr(spec, key, default)
  return default if value is None else value


def load_npz(path: Any, field: str = "path", image_key: str = "image",
             label_key: str = "label") -> ArrayDataset:
  """One npz file in the shared format as an ArrayDataset."""
  p = resolve_existing(path, field)
  arrays = open_npz(p, (image_key, label_key), field)
  images = check_images(arrays[image_key], field)
  labels = check_labels(arrays[label_key], images.shape[0], field)
  if not labels.size:
    raise ConfigError(field, str(path), hint="the npz holds no images")
  n_classes = int(labels.max()) + 1
  return ArrayDataset(images, labels, read_class_names(p, n_classes, field))


def _user_source(source: str, spec: Any) -> Any:
  d = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
  out = _USER_SOURCES[source](d)
  if isinstance(out, DataSplits):
    parts = {k: _postprocess(v, spec) for k, v in (("train", out.train), ("val", out.val),
                                                   ("test", out.test)) if v is not None}
    return _carve(DataSplits(**parts), spec)
  if not isinstance(out, ArrayDataset):
    raise ConfigError("data.source", source, hint=f"its loader returned {type(out).__name__}, "
                      "not an ArrayDataset or DataSplits")
  ds = _postprocess(out, spec)
  if spec_get(spec, "val_per_class") is not None or spec_get(spec, "test_per_class") is not None:
    return _carve(DataSplits(ds), spec)
  return ds


# ----------------------------------------------------------------------------- post-processing


def pil_resize(images: np.ndarray, size, field: str = "size") -> np.ndarray:
  """Resizes uint8 NHWC images to (H, W) with PIL bilinear (antialiased when shrinking)."""
  from PIL import Image
  size = check_size(size, field)
  if images.shape[1:3] == size:
    return images
  h, w = size
  out = np.empty((images.shape[0], h, w, images.shape[3]), np.uint8)
  for i, img in enumerate(images):
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    r = np.asarray(pil.resize((w, h), Image.BILINEAR))
    out[i] = r.reshape(h, w, -1)
  return out


def set_channels(images: np.ndarray, channels: int, field: str = "channels") -> np.ndarray:
  """1: ITU-R 601 luminance (as PIL 'L'); 3: grey repeated to RGB (RGBA drops alpha)."""
  from tl_jax.data.preprocess import to_grey
  if channels not in (1, 3):
    raise ConfigError(field, channels, [1, 3])
  c = images.shape[-1]
  if channels == 1:
    return images if c == 1 else to_grey(images[..., :3])
  if c == 1:
    return np.repeat(images, 3, axis=-1)
  return images[..., :3]


def _postprocess(ds: ArrayDataset, spec: Any) -> ArrayDataset:
  images = ds.images
  size = spec_get(spec, "size")
  if size is not None:
    images = pil_resize(images, size)
  channels = spec_get(spec, "channels")
  if channels is not None:
    images = set_channels(images, int(channels))
  if images is not ds.images:
    ds = ArrayDataset(images, ds.labels, ds.class_names)
  classes = spec_get(spec, "classes")
  if classes is not None:
    ds = ds.select_classes(classes)
  merge = spec_get(spec, "merge")
  if merge:
    labels, names = sampling.merge_classes(ds.labels, dict(merge), ds.class_names)
    ds = ds.relabel(labels, names)
  return ds


def _carve(splits: DataSplits, spec: Any) -> DataSplits:
  train, val, test = splits.train, splits.val, splits.test
  rng = np.random.default_rng(int(spec_get(spec, "seed", 0)))
  for name in ("test", "val"):
    n = spec_get(spec, f"{name}_per_class")
    if n is None:
      continue
    if getattr(splits, name) is not None:
      raise ConfigError(f"{name}_per_class", n, hint=f"the source already has a {name} split")
    held = sampling.sample_per_class(train.labels, int(n), rng)
    rest = np.setdiff1d(np.arange(len(train)), held)
    train, held_ds = train.subset(rest), train.subset(held)
    if name == "val":
      val = held_ds
    else:
      test = held_ds
  return DataSplits(train, val, test)


# ----------------------------------------------------------------------------- dispatch


def _split_paths(spec: Any, single_key: str) -> tuple[Any, dict[str, Any]]:
  single = spec_get(spec, single_key)
  multi = {k: spec_get(spec, k) for k in SPLIT_NAMES if spec_get(spec, k) is not None}
  if single is None and not multi:
    raise ConfigError(single_key, None, hint=f"give `{single_key}` or train/val/test paths")
  if single is not None and multi:
    raise ConfigError(single_key, single, hint=f"give either `{single_key}` or train/val/test")
  if multi and "train" not in multi:
    raise ConfigError("train", None, hint="a `train` path is needed with val/test")
  return single, multi


def load_dataset(spec: Any) -> DataSplits | ArrayDataset:
  """Loads what `spec` describes: an ArrayDataset for one split, else DataSplits."""
  source = spec_get(spec, "source")
  if source in _USER_SOURCES:
    return _user_source(source, spec)
  if source not in SOURCES:
    raise ConfigError("data.source", source, source_names())
  if source == "npz":
    single, multi = _split_paths(spec, "path")
    loader = lambda p, f: load_npz(p, f, spec_get(spec, "image_key", "image"),  # noqa: E731
                                   spec_get(spec, "label_key", "label"))
  elif source == "tiny_imagenet":
    single, multi = _split_paths(spec, "path")
    loader = lambda p, f: sources_images.load_jpeg_npz(  # noqa: E731
        p, field=f, per_class=spec_get(spec, "per_class"), size=spec_get(spec, "size"),
        cache_dir=spec_get(spec, "cache_dir"))
  elif source == "image_folder":
    single, multi = _split_paths(spec, "root")
    loader = lambda p, f: sources_images.load_image_folder(  # noqa: E731
        p, size=spec_get(spec, "size"), field=f)
  elif source == "digits":
    single, multi = "digits", {}
    loader = lambda p, f: sources_extra.load_digits()  # noqa: E731
  else:
    name = spec_get(spec, "name")
    if not name:
      raise ConfigError("data.name", name, hint="the TFDS dataset name, e.g. 'cifar10'")
    split, splits = spec_get(spec, "split"), spec_get(spec, "splits")
    if (split is None) == (not splits):
      raise ConfigError("data.split", split, hint="give exactly one of `split` or `splits`")
    single, multi = split, dict(splits or {})
    loader = lambda s, f: sources_extra.load_tfds(  # noqa: E731
        name, s, data_dir=spec_get(spec, "data_dir"), download=bool(spec_get(spec, "download",
                                                                              False)),
        size=spec_get(spec, "size"))
  if single is not None:
    ds = _postprocess(loader(single, "data.path"), spec)
    if spec_get(spec, "val_per_class") is not None or spec_get(spec, "test_per_class") is not None:
      return _carve(DataSplits(ds), spec)
    return ds
  loaded = {k: _postprocess(loader(v, f"data.{k}"), spec) for k, v in multi.items()}
  names = loaded["train"].class_names
  for k, ds in loaded.items():  # a split may lack the top classes: widen its names to train's
    if ds.class_names != names and len(ds.class_names) <= len(names) and \
        names[:len(ds.class_names)] == ds.class_names[:len(names)]:
      loaded[k] = ArrayDataset(ds.images, ds.labels, names)
  return _carve(DataSplits(**loaded), spec)
