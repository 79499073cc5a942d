"""Checked file access and array validation shared by the data sources.

The lowest layer of `tl_jax.data`'s loaders: `tl_jax.data.sources` and
`tl_jax.data.sources_images` both import from here, and this module imports no source module,
so the dependency runs one way (sources -> sources_images -> checks). Every failure is a
`ConfigError` naming the config field and the offending value or path.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from tl_jax import paths
from tl_jax.errors import ConfigError


def resolve_existing(path: Any, field: str) -> pathlib.Path:
  """Resolves `shared://` and checks the path exists, naming the field and path if not."""
  if path is None:
    raise ConfigError(field, None, "a file path")
  p = paths.resolve(path)
  if not p.exists():
    raise ConfigError(field, str(path), hint=f"no such file or directory: {p}")
  return p


def read_class_names(path: pathlib.Path, n_classes: int, field: str) -> tuple[str, ...]:
  """Names from `classes.txt` beside `path` (one per line) or '0'..'n-1' when there is none."""
  f = path.parent / "classes.txt" if path.is_file() else path / "classes.txt"
  if not f.is_file():
    return tuple(str(i) for i in range(n_classes))
  names = tuple(line.strip() for line in f.read_text().splitlines() if line.strip())
  if len(names) < n_classes:
    raise ConfigError(field, str(f), hint=f"{len(names)} class names but labels go up to "
                      f"{n_classes - 1}")
  return names


def open_npz(path: pathlib.Path, keys: tuple[str, ...], field: str) -> dict[str, np.ndarray]:
  """Loads `keys` from an npz without pickle; corrupt files and missing keys -> ConfigError."""
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in keys if k not in z.files]
      if missing:
        raise ConfigError(field, str(path), hint=f"missing array(s) {missing}; has {z.files}")
      return {k: z[k] for k in keys}
  except ConfigError:
    raise
  except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError: all mean corrupt.
    raise ConfigError(field, str(path), hint=f"not a readable .npz file ({type(e).__name__}: "
                      f"{e})") from e


def check_images(images: np.ndarray, field: str) -> np.ndarray:
  """uint8 [N,H,W,C] with C in (1, 3, 4); [N,H,W] is taken as grey and gets a channel axis."""
  if images.dtype != np.uint8:
    raise ConfigError(f"{field}.image.dtype", str(images.dtype), ["uint8"])
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
    raise ConfigError(f"{field}.image.shape", images.shape, "[N, H, W, C] with C in 1, 3, 4")
  return images


def check_labels(labels: np.ndarray, n: int, field: str) -> np.ndarray:
  """Non-negative integer class ids of shape [n], returned as int32."""
  if labels.ndim != 1 or labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
    raise ConfigError(f"{field}.label", f"{labels.dtype}{list(labels.shape)}",
                      f"integer array of shape [{n}]")
  if labels.size and labels.min() < 0:
    raise ConfigError(f"{field}.label", int(labels.min()), "non-negative class ids")
  return labels.astype(np.int32)


def check_size(size, field: str) -> tuple[int, int]:
  """A positive (height, width) pair of ints."""
  try:
    h, w = (int(s) for s in size)
  except (TypeError, ValueError):
    raise ConfigError(field, size, "(height, width)") from None
  if h <= 0 or w <= 0:
    raise ConfigError(field, size, "positive (height, width)")
  return h, w


def check_splits(train: Any, val: Any, test: Any, named_classes: bool = False) -> None:
  """The splits of one run fit together: non-empty, one image shape (size and channels), at
  least two classes, and (unless class names were given) every class index between 0 and the
  largest label has training images - labels {0, 1, 6} are not silently a 7-class problem."""
  parts = [("data.train", train), ("data.val", val), ("data.test", test)]
  for field, ds in parts:
    if ds is not None and len(ds) == 0:
      raise ConfigError(field, 0, hint="the split holds no images")
  if train.num_classes < 2:
    raise ConfigError("data.train", train.class_names, "at least 2 classes",
                      hint="a classifier needs two or more classes")
  for field, ds in parts[1:]:
    if ds is None:
      continue
    if ds.image_shape != train.image_shape:
      (h, w, c), (h2, w2, c2) = train.image_shape, ds.image_shape
      what = "channels" if (h, w) == (h2, w2) else "image size"
      fix = "data.channels (1 or 3)" if what == "channels" else "data.size (H, W)"
      raise ConfigError(field, f"images of shape {ds.image_shape}",
                        f"the train split's shape {train.image_shape}",
                        hint=f"{what} differ; set {fix} to convert every split")
    if ds.num_classes != train.num_classes:
      raise ConfigError(field, f"{ds.num_classes} classes",
                        f"the train split's {train.num_classes}")
  counts = np.bincount(train.labels, minlength=train.num_classes)
  empty = [i for i, n in enumerate(counts) if n == 0]
  if empty and not named_classes:
    present = sorted(set(int(x) for x in np.unique(train.labels)))
    raise ConfigError("data.train", f"labels {present}",
                      f"every class 0..{train.num_classes - 1} with training images",
                      hint=f"classes {empty} have none; relabel to 0..K-1 or give class names "
                      "(classes.txt beside the data)")
