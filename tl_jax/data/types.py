"""In-memory image datasets: uint8 NHWC images + int32 labels, validated once at construction.

Everything downstream (sampling, batching, augmentation on device) can then trust shapes and dtypes
instead of re-checking them, and a bad source fails here with the offending field named.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tl_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
  """images uint8 [N,H,W,C], labels int32 [N] in [0, len(class_names)), class_names tuple."""

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __post_init__(self):
    images, labels = self.images, self.labels
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
      raise ConfigError("images.dtype", getattr(images, "dtype", type(images)), ["uint8"])
    if images.ndim != 4:
      raise ConfigError("images.shape", images.shape, "[N, H, W, C]")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
      raise ConfigError("labels.shape", labels.shape, f"[{images.shape[0]}] (one per image)")
    if not np.issubdtype(labels.dtype, np.integer):
      raise ConfigError("labels.dtype", labels.dtype, "an integer dtype")
    names = tuple(str(n) for n in self.class_names)
    if len(names) == 0:
      raise ConfigError("class_names", self.class_names, "a non-empty sequence of names")
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
      raise ConfigError("labels", (int(labels.min()), int(labels.max())),
                        f"values in [0, {len(names) - 1}] (one per class name)")
    object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))
    object.__setattr__(self, "class_names", names)

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def class_counts(self) -> np.ndarray:
    """Number of images per class, length num_classes."""
    return np.bincount(self.labels, minlength=self.num_classes)

  def subset(self, idx: np.ndarray | Sequence[int]) -> ArrayDataset:
    """Rows `idx` (indices, repeats allowed, or a boolean mask); same class names."""
    idx = np.asarray(idx)
    if idx.dtype == bool:
      if idx.shape != (len(self),):
        raise ConfigError("subset.mask", idx.shape, f"boolean mask of shape ({len(self)},)")
    elif idx.size and not np.issubdtype(idx.dtype, np.integer):
      raise ConfigError("subset.idx", idx.dtype, "integer indices or a boolean mask")
    else:
      idx = idx.astype(np.int64)
    return ArrayDataset(self.images[idx], self.labels[idx], self.class_names)

  def concat(self, other: ArrayDataset) -> ArrayDataset:
    """Rows of self then other; both must share class names and image shape."""
    if other.class_names != self.class_names:
      raise ConfigError("concat.class_names", other.class_names, [self.class_names])
    if other.image_shape != self.image_shape:
      raise ConfigError("concat.image_shape", other.image_shape, [self.image_shape])
    return ArrayDataset(np.concatenate([self.images, other.images]),
                        np.concatenate([self.labels, other.labels]), self.class_names)

  def relabel(self, new_labels: np.ndarray, class_names: Sequence[str]) -> ArrayDataset:
    """Same images with new labels (e.g. after merge_classes)."""
    return ArrayDataset(self.images, np.asarray(new_labels), tuple(class_names))

  def select_classes(self, classes: Sequence[int]) -> ArrayDataset:
    """Keeps only `classes` (old label ids) and relabels them 0..k-1 in the order given."""
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < self.num_classes]
    if bad or len(set(classes)) != len(classes) or not classes:
      raise ConfigError("classes", classes, f"distinct ids in [0, {self.num_classes - 1}]")
    lut = np.full(self.num_classes, -1, np.int64)
    lut[classes] = np.arange(len(classes))
    keep = lut[self.labels] >= 0
    return ArrayDataset(self.images[keep], lut[self.labels[keep]].astype(np.int32),
                        tuple(self.class_names[c] for c in classes))


@dataclasses.dataclass(frozen=True)
class DataSplits:
  """train / val / test datasets; val and test may be None when the source has none."""

  train: ArrayDataset
  val: ArrayDataset | None = None
  test: ArrayDataset | None = None

  def __post_init__(self):
    for name in ("train", "val", "test"):
      ds = getattr(self, name)
      if ds is None and name == "train":
        raise ConfigError("splits.train", None, "an ArrayDataset")
      if ds is not None and not isinstance(ds, ArrayDataset):
        raise ConfigError(f"splits.{name}", type(ds).__name__, ["ArrayDataset", "None"])
      if ds is not None and ds.class_names != self.train.class_names:
        raise ConfigError(f"splits.{name}.class_names", ds.class_names, [self.train.class_names])

  @property
  def num_classes(self) -> int:
    return self.train.num_classes

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.train.class_names

  def items(self) -> list[tuple[str, ArrayDataset]]:
    """(name, dataset) for the splits that exist."""
    return [(n, getattr(self, n)) for n in ("train", "val", "test") if getattr(self, n) is not None]
