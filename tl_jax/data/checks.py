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
