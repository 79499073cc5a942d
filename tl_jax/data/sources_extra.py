"""Sources from installed libraries: scikit-learn digits and TFDS random-access data sources."""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_jax.data.sources_images import resize_uint8
from tl_jax.data.types import ArrayDataset
from tl_jax.errors import ConfigError


def load_digits() -> ArrayDataset:
  """scikit-learn's 1,797 8x8 digits, values 0-16 scaled to uint8 0-255, shape [N,8,8,1].

  Upsample with the generic `size` field (PIL bilinear), e.g. to 32x32 for LeNet-5.
  """
  from sklearn.datasets import load_digits as sk_digits
  d = sk_digits()
  images = np.round(d.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return ArrayDataset(images, d.target.astype(np.int32), tuple(str(i) for i in range(10)))


def load_tfds(name: str, split: str, data_dir: Any = None, download: bool = False,
              size: Any = None) -> ArrayDataset:
  """All records of `tfds.data_source(name, split)` as arrays (TF-free; array_record/parquet).

  Records whose images differ in size (cats_vs_dogs, tf_flowers, ...) are resized one by one
  to `size` (H, W) with PIL bilinear before stacking; without a `size` that is an error naming
  `data.size`."""
  import tensorflow_datasets as tfds
  try:
    source = tfds.data_source(name, split=split, data_dir=None if data_dir is None else
                              str(data_dir), download=download)
  except Exception as e:  # DatasetNotFoundError, missing/unsupported prepared files, bad split.
    raise ConfigError("data.name/split", f"{name}:{split}", hint=f"tfds.data_source failed "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); prepare the dataset "
                      "with file_format='array_record' or set download=True") from e
  n = len(source)
  if n == 0:
    raise ConfigError("data.split", f"{name}:{split}", hint="the split is empty")
  records = [source[i] for i in range(n)]
  first = records[0]
  if "image" not in first or "label" not in first:
    raise ConfigError("data.name", name, hint=f"records lack 'image'/'label': {sorted(first)}")
  imgs = [np.asarray(r["image"]) for r in records]
  shapes = sorted({im.shape for im in imgs})
  if len(shapes) > 1 or (size is not None and shapes[0][:2] != tuple(int(x) for x in size)):
    if size is None:
      raise ConfigError("data.size", None, "(H, W) to resize every image to",
                        hint=f"the records of {name}:{split} differ in size (e.g. {shapes[0]} "
                        f"and {shapes[-1]})")
    imgs = [resize_uint8(im, size) for im in imgs]
  images = np.stack(imgs)
  labels = np.asarray([int(r["label"]) for r in records], np.int32)
  if images.dtype != np.uint8:
    raise ConfigError("data.image.dtype", str(images.dtype), ["uint8"])
  if images.ndim == 3:
    images = images[..., None]
  try:
    names = tuple(source.dataset_info.features["label"].names)
  except Exception:  # features without names (e.g. a custom Tensor label)
    names = tuple(str(i) for i in range(int(labels.max()) + 1))
  return ArrayDataset(images, labels, names)
