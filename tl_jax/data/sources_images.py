"""Image-file sources: JPEG-bytes npz (Tiny ImageNet layout) and one-folder-per-class trees."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
from typing import Any, Sequence

import numpy as np

from tl_jax.data.checks import (check_labels, check_size, open_npz, read_class_names,
                                resolve_existing)
from tl_jax.data.types import ArrayDataset
from tl_jax.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


def decode_image(data: bytes, size: tuple[int, int] | None = None, what: str = "image"
                 ) -> np.ndarray:
  """Decodes image bytes to uint8 HxWx3 RGB, optionally PIL-bilinear resized.

  Every mode ends as 8-bit RGB by what its pixels mean, not by clipping: 16-bit (and 32-bit
  integer) greyscale is scaled from its full range (0..65535 -> 0..255; clipping would make
  most of a 16-bit image solid white); palette, CMYK, bilevel and greyscale images are
  converted by PIL; an alpha channel (RGBA, LA, PA, palette transparency) is composited over
  black. Floating-point images ('F': no fixed range) are rejected with a clear error.
  """
  from PIL import Image
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      mode = img.mode
      if mode == "F":
        raise ConfigError("image", what, "8- or 16-bit integer images (PNG, JPEG, BMP, PPM)",
                          hint="a floating-point image has no fixed range to map to 8 bits")
      if mode.startswith("I"):  # I;16* (16-bit) or I (32-bit int) greyscale
        a = np.asarray(img).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
          raise ConfigError("image", what, "8- or 16-bit integer images",
                            hint=f"pixel values {a.min():.0f}..{a.max():.0f} exceed 16 bits")
        full = 65535.0 if (mode.startswith("I;16") or (a.size and a.max() > 255)) else 255.0
        img = Image.fromarray(np.round(a * (255.0 / full)).astype(np.uint8), "L")
      elif "A" in mode or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
      img = img.convert("RGB")
      if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
      return np.asarray(img, np.uint8)
  except ConfigError:
    raise
  except Exception as e:
    raise ConfigError("image", what, hint=f"cannot decode ({type(e).__name__}: {e})") from e


def resize_uint8(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """One uint8 HxW[xC] image resized to `size` (H, W) with PIL bilinear (antialiased)."""
  from PIL import Image
  h, w = (int(x) for x in size)
  img = np.asarray(image, np.uint8)
  pil = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)
  out = np.asarray(pil.resize((w, h), Image.BILINEAR), np.uint8)
  return out.reshape(h, w, *img.shape[2:]) if img.ndim == 3 else out


def first_per_class(labels: np.ndarray, k: int) -> np.ndarray:
  """Indices of the first `k` rows of each class, in row order (cheap subsets for tests)."""
  out = [np.flatnonzero(labels == c)[:k] for c in np.unique(labels)]
  return np.sort(np.concatenate(out))


def _cache_file(cache_dir: Any, p: pathlib.Path, per_class, size) -> pathlib.Path:
  st = p.stat()
  key = json.dumps([str(p.resolve()), st.st_size, st.st_mtime_ns, per_class,
                    None if size is None else list(size)])
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return pathlib.Path(cache_dir).expanduser() / f"{p.stem}_{digest}.npz"


def load_jpeg_npz(path: Any, field: str = "path", per_class: int | None = None,
                  size: Sequence[int] | None = None, cache_dir: Any = None,
                  indices: Sequence[int] | None = None) -> ArrayDataset:
  """A `jpeg_bytes` + `offsets` + `label` npz (shared/data/tiny_imagenet) decoded to uint8 RGB.

  `size` resizes each image with PIL bilinear (the L2T-ww ResNet-32 source was evaluated on
  Tiny ImageNet resized 64->32 that way). `per_class` or `indices` decode only some rows.
  """
  p = resolve_existing(path, field)
  size = None if size is None else check_size(size, "size")
  cache = None
  if cache_dir is not None and indices is None:
    cache = _cache_file(cache_dir, p, per_class, size)
    if cache.is_file():
      z = open_npz(cache, ("image", "label"), "cache")
      return ArrayDataset(z["image"], z["label"], read_class_names(p, int(z["label"].max()) + 1,
                                                                   field))
  arrays = open_npz(p, ("jpeg_bytes", "offsets", "label"), field)
  data, offsets = arrays["jpeg_bytes"], arrays["offsets"]
  n = offsets.shape[0] - 1
  labels = check_labels(arrays["label"], n, field)
  if data.dtype != np.uint8 or data.ndim != 1:
    raise ConfigError(f"{field}.jpeg_bytes", f"{data.dtype}{list(data.shape)}", "uint8 1-D")
  if offsets.ndim != 1 or n < 0 or offsets[0] != 0 or offsets[-1] != data.size or \
      np.any(np.diff(offsets) <= 0):
    raise ConfigError(f"{field}.offsets", str(p), hint="offsets must rise from 0 to len(bytes)")
  if indices is not None:
    rows = np.asarray(indices, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
      raise ConfigError("indices", (int(rows.min()), int(rows.max())), f"in [0, {n - 1}]")
  elif per_class is not None:
    rows = first_per_class(labels, int(per_class))
  else:
    rows = np.arange(n)
  if rows.size == 0:
    raise ConfigError(field, str(p), hint="no images selected")
  decoded = [decode_image(data[offsets[i]:offsets[i + 1]].tobytes(), size, f"{p}[{i}]")
             for i in rows]
  shapes = {d.shape for d in decoded}
  if len(shapes) != 1:
    raise ConfigError("size", None, hint=f"images have different shapes {sorted(shapes)[:3]}; set "
                      "`size`")
  images = np.stack(decoded)
  ds = ArrayDataset(images, labels[rows], read_class_names(p, int(labels.max()) + 1, field))
  if cache is not None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, image=ds.images, label=ds.labels)
    tmp.replace(cache)
  return ds


def load_image_folder(root: Any, size: Sequence[int] | None = None, field: str = "root",
                      class_names: Sequence[str] | None = None) -> ArrayDataset:
  """`root/<class>/<image>` (JPEG/PNG/PPM) as RGB uint8, classes in sorted folder-name order.

  `size` (H, W) resizes with PIL bilinear; without it all images must share one size.
  `class_names` fixes the class order (and requires every named folder to exist).
  """
  p = resolve_existing(root, field)
  if not p.is_dir():
    raise ConfigError(field, str(root), hint=f"not a directory: {p}")
  folders = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
  if class_names is None:
    class_names = folders
  else:
    missing = [c for c in class_names if c not in folders]
    if missing:
      raise ConfigError("class_names", missing, folders, hint=f"folders missing under {p}")
  if not class_names:
    raise ConfigError(field, str(root), hint=f"no class subfolders in {p}")
  size = None if size is None else check_size(size, "size")
  images, labels = [], []
  for c, name in enumerate(class_names):
    files = sorted(f for f in (p / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise ConfigError(field, str(root), hint=f"class folder {p / name} has no images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    for f in files:
      images.append(decode_image(f.read_bytes(), size, str(f)))
      labels.append(c)
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise ConfigError("size", None, hint=f"images under {p} differ in shape "
                      f"({sorted(shapes)[:3]} ...); set `size` to (H, W)")
  return ArrayDataset(np.stack(images), np.asarray(labels, np.int32), tuple(class_names))
