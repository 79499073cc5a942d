"""On-device augmentation and normalisation: pure, jittable JAX functions of (key, NHWC batch).

Every random choice is drawn per image (vector draws of shape [B]), so one call augments a whole
batch inside the jitted train step. The Keras-style transform mirrors ImageDataGenerator's
parameter distributions (seed 000) as one affine map per image, sampled bilinearly with edge
replication ('nearest' fill). Unlike Keras 3, which swaps height and width in the centring offset,
the transform here is centred on the true image centre; square images are unaffected.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.errors import ConfigError, check_choice

AUGMENTS = ("none", "crop_flip", "flip", "keras_seed000", "rotate")
NORMALIZE_MODES = ("imagenet", "zero_one", "minus_one_one", "efficientnet", "caffe", "none")
# Keras `preprocess_input(mode='caffe')` (its ImageNet ResNet50 / VGG16 weights): RGB -> BGR,
# minus the ImageNet mean per BGR channel, no scaling
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# seed 000's ImageDataGenerator arguments, in this module's names.
KERAS_SEED000 = dict(rotation=45.0, width_shift=0.2, height_shift=0.2, shear=0.15,
                     zoom=(0.8, 1.2), hflip=True, vflip=True, brightness=(0.8, 1.2))
# seed 004 (GTSRB): small random rotations only.
ROTATE_DEFAULT = dict(rotation=15.0)


def _check_batch(x: jax.Array, name: str = "images") -> None:
  if x.ndim != 4:
    raise ConfigError(name, tuple(x.shape), "a [B, H, W, C] batch")


# ----------------------------------------------------------------------------- crop / flip


def random_flip(key: jax.Array, x: jax.Array, horizontal: bool = True,
                vertical: bool = False) -> jax.Array:
  """Flips each image left-right (and/or up-down) with probability 1/2."""
  _check_batch(x)
  kh, kv = jax.random.split(key)
  b = x.shape[0]
  if horizontal:
    x = jnp.where(jax.random.bernoulli(kh, 0.5, (b, 1, 1, 1)), x[:, :, ::-1], x)
  if vertical:
    x = jnp.where(jax.random.bernoulli(kv, 0.5, (b, 1, 1, 1)), x[:, ::-1], x)
  return x


def crop(x: jax.Array, offsets: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Crops each image i at (row, col) = offsets[i] to `size` (offsets may be traced)."""
  h, w = size
  c = x.shape[-1]
  return jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
      x, offsets.astype(jnp.int32))


def random_crop_flip(key: jax.Array, x: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
  """CIFAR-style: zero-pad by `pad`, crop back to HxW at a random offset, random h-flip."""
  _check_batch(x)
  if pad < 0:
    raise ConfigError("crop_flip.pad", pad, "a non-negative int")
  b, h, w, _ = x.shape
  kc, kf = jax.random.split(key)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(kc, (b, 2), 0, 2 * pad + 1)
  out = crop(padded, offsets, (h, w))
  return random_flip(kf, out) if flip else out


# ----------------------------------------------------------------------------- affine


def affine_matrices(theta_deg, tx, ty, shear_deg, zx, zy) -> jax.Array:
  """[B,3,3] maps from output (x=col, y=row) offsets about the centre to input offsets.

  Composition as Keras: rotation @ shift @ shear @ zoom; tx shifts columns, ty rows (pixels).
  """
  theta_deg, tx, ty, shear_deg, zx, zy = jnp.broadcast_arrays(
      *[jnp.asarray(v, jnp.float32) for v in (theta_deg, tx, ty, shear_deg, zx, zy)])
  t, s = jnp.deg2rad(theta_deg), jnp.deg2rad(shear_deg)
  one, zero = jnp.ones_like(t), jnp.zeros_like(t)

  def m(*rows):
    return jnp.stack([jnp.stack(r, -1) for r in rows], -2)

  rot = m((jnp.cos(t), -jnp.sin(t), zero), (jnp.sin(t), jnp.cos(t), zero), (zero, zero, one))
  shift = m((one, zero, tx), (zero, one, ty), (zero, zero, one))
  shr = m((one, -jnp.sin(s), zero), (zero, jnp.cos(s), zero), (zero, zero, one))
  zoom = m((zx, zero, zero), (zero, zy, zero), (zero, zero, one))
  return rot @ shift @ shr @ zoom


def affine_transform(x: jax.Array, matrices: jax.Array) -> jax.Array:
  """Resamples each image through its 3x3 matrix (bilinear, edge pixels repeated outside)."""
  _check_batch(x)
  b, h, w, c = x.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                            indexing="ij")
  grid = jnp.stack([cols - cx, rows - cy, jnp.ones_like(rows)], 0).reshape(3, -1)

  def one(img, mat):
    src = mat.astype(jnp.float32) @ grid
    coords = [(src[1] + cy).reshape(h, w), (src[0] + cx).reshape(h, w)]
    sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, coords, order=1,  # noqa: E731
                                                          mode="nearest")
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(img)

  return jax.vmap(one)(x.astype(jnp.float32), matrices)


def _uniform(key, b, lo, hi):
  return jax.random.uniform(key, (b,), jnp.float32, lo, hi)


def random_affine(key: jax.Array, x: jax.Array, rotation: float = 0.0, width_shift: float = 0.0,
                  height_shift: float = 0.0, shear: float = 0.0,
                  zoom: float | Sequence[float] = 0.0, hflip: bool = False, vflip: bool = False,
                  brightness: Sequence[float] | None = None) -> jax.Array:
  """Keras ImageDataGenerator-style augmentation of a batch, float32 out (same 0-255 scale).

  rotation: degrees, uniform in +-rotation. width/height_shift: fraction of W/H (< 1) or pixels.
  shear: degrees, uniform in +-shear (Keras passes shear_range to a degree-based matrix).
  zoom: float z -> [1-z, 1+z], or (lo, hi); zx and zy drawn independently. hflip/vflip: p=1/2.
  brightness: (lo, hi) factor multiplying pixels, clipped to [0, 255] like PIL's Brightness.
  """
  _check_batch(x)
  b, h, w, _ = x.shape
  zlo, zhi = (1 - zoom, 1 + zoom) if np.isscalar(zoom) else tuple(zoom)
  ks = jax.random.split(key, 8)
  theta = _uniform(ks[0], b, -rotation, rotation)
  tx = _uniform(ks[1], b, -width_shift, width_shift) * (w if width_shift < 1 else 1)
  ty = _uniform(ks[2], b, -height_shift, height_shift) * (h if height_shift < 1 else 1)
  sh = _uniform(ks[3], b, -shear, shear)
  zx, zy = _uniform(ks[4], b, zlo, zhi), _uniform(ks[5], b, zlo, zhi)
  out = affine_transform(x, affine_matrices(theta, tx, ty, sh, zx, zy))
  out = random_flip(ks[6], out, horizontal=hflip, vertical=vflip)
  if brightness is not None:
    f = _uniform(ks[7], b, brightness[0], brightness[1])
    out = jnp.clip(out * f[:, None, None, None], 0.0, 255.0)
  return out


# ----------------------------------------------------------------------------- resize / normalise


def resize(x: jax.Array, size: Sequence[int] | None, antialias: bool = True) -> jax.Array:
  """Bilinear resize of a batch to (H, W), float32 out; antialias=False matches PyTorch's
  interpolate(align_corners=False) when shrinking."""
  _check_batch(x)
  if size is None:
    return x.astype(jnp.float32)
  h, w = int(size[0]), int(size[1])
  b, h0, w0, c = x.shape
  x = x.astype(jnp.float32)
  if (h, w) == (h0, w0):
    return x
  if antialias:
    return jax.image.resize(x, (b, h, w, c), method="bilinear")
  scale = jnp.array([h / h0, w / w0], jnp.float32)
  return jax.image.scale_and_translate(x, (b, h, w, c), (1, 2), scale, jnp.zeros(2),
                                       method="linear", antialias=False)


def normalize(x: jax.Array, mode: str) -> jax.Array:
  """Pixels on the 0-255 scale (uint8 or float) -> float32 network input for `mode`."""
  check_choice("normalize", mode, NORMALIZE_MODES)
  x = jnp.asarray(x).astype(jnp.float32)
  if mode == "none":
    return x
  if mode == "zero_one":
    return x / 255.0
  if mode == "minus_one_one":
    return x / 127.5 - 1.0
  if mode == "efficientnet":
    return (x - 127.0) / 128.0
  if mode == "caffe":
    if x.shape[-1] != 3:
      raise ConfigError("normalize", mode, NORMALIZE_MODES, hint=f"'caffe' needs 3 channels, "
                        f"got {x.shape[-1]}")
    return x[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  if x.shape[-1] != 3:
    raise ConfigError("normalize", mode, NORMALIZE_MODES, hint=f"'imagenet' needs 3 channels, "
                      f"got {x.shape[-1]}")
  return (x / 255.0 - mean) / std


# ----------------------------------------------------------------------------- config builders


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
  if cfg is None:
    return default
  value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if value is None else value


def _augment_fn(name: str, kwargs: dict) -> Callable[[jax.Array, jax.Array], jax.Array]:
  check_choice("augment", name, AUGMENTS)
  if name == "none":
    return lambda key, x: x.astype(jnp.float32)
  if name == "crop_flip":
    allowed = {"pad", "flip"}
    fn = lambda key, x, **kw: random_crop_flip(key, x, **kw).astype(jnp.float32)  # noqa: E731
    params = {}
  elif name == "flip":
    allowed = {"horizontal", "vertical"}
    fn = lambda key, x, **kw: random_flip(key, x, **kw).astype(jnp.float32)  # noqa: E731
    params = {}
  else:
    allowed = set(KERAS_SEED000)
    fn = random_affine
    params = dict(KERAS_SEED000 if name == "keras_seed000" else ROTATE_DEFAULT)
  unknown = sorted(set(kwargs) - allowed)
  if unknown:
    raise ConfigError("augment_kwargs", unknown, sorted(allowed), hint=f"for augment={name!r}")
  params.update(kwargs)
  return lambda key, x: fn(key, x, **params)


def make_augment(cfg: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(key, uint8 batch) -> float32 batch: `cfg.augment` (+ `cfg.augment_kwargs`), then
  `cfg.resize` (H, W) or None, then `cfg.normalize` (default 'zero_one'). Jittable."""
  aug = _augment_fn(_cfg_get(cfg, "augment", "none"), dict(_cfg_get(cfg, "augment_kwargs", {})))
  post = make_preprocess(cfg)

  def augment(key: jax.Array, x: jax.Array) -> jax.Array:
    return post(aug(key, x))

  return augment


def make_preprocess(cfg: Any) -> Callable[[jax.Array], jax.Array]:
  """uint8 (or 0-255 float) batch -> float32: resize then normalise; the eval-time pipeline."""
  size = _cfg_get(cfg, "resize", None)
  if size is not None and (len(tuple(size)) != 2 or min(int(s) for s in size) <= 0):
    raise ConfigError("resize", size, "(height, width) or None")
  mode = check_choice("normalize", _cfg_get(cfg, "normalize", "zero_one"), NORMALIZE_MODES)
  antialias = bool(_cfg_get(cfg, "resize_antialias", True))

  def preprocess(x: jax.Array) -> jax.Array:
    return normalize(resize(x, size, antialias), mode)

  return preprocess
