"""One-off NumPy preprocessing of uint8 datasets (seed 004's GTSRB pipeline: grey, blur, equalise).

These run once before training (not per step), so they stay in NumPy/SciPy rather than JAX.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

from tl_jax.errors import ConfigError

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL 'L' and OpenCV RGB2GRAY


def _check(images: np.ndarray) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ConfigError("images", f"{images.dtype}{list(images.shape)}", "uint8 [N,H,W,1|3]")
  return images


def to_grey(images: np.ndarray) -> np.ndarray:
  """uint8 [N,H,W,3] RGB -> uint8 [N,H,W,1] luminance (LeNet-5 takes 32x32x1)."""
  images = _check(images)
  if images.shape[-1] == 1:
    return images
  y = images.astype(np.float64) @ _LUMA
  return np.clip(np.round(y), 0, 255).astype(np.uint8)[..., None]


def gaussian_blur(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
  """Blurs each image over H and W only (not across images or channels); uint8 out."""
  images = _check(images)
  if sigma < 0:
    raise ConfigError("sigma", sigma, "a non-negative float")
  out = scipy.ndimage.gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma, 0),
                                      mode="reflect")
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _equalize_channel(x: np.ndarray) -> np.ndarray:
  """OpenCV-style equalizeHist of one uint8 plane: round((cdf - cdf_min) / (N - cdf_min) * 255)."""
  hist = np.bincount(x.ravel(), minlength=256)
  cdf = np.cumsum(hist)
  cdf_min = cdf[np.flatnonzero(hist)[0]]
  denom = x.size - cdf_min
  if denom == 0:  # constant image: nothing to spread
    return x.copy()
  lut = np.clip(np.round((cdf - cdf_min) / denom * 255.0), 0, 255).astype(np.uint8)
  return lut[x]


def equalize_hist(images: np.ndarray) -> np.ndarray:
  """Histogram equalisation per image: grey directly, RGB on the Y of YCbCr (keeps colours)."""
  images = _check(images)
  if images.shape[-1] == 1:
    return np.stack([_equalize_channel(im[..., 0]) for im in images])[..., None]
  from PIL import Image
  out = np.empty_like(images)
  for i, im in enumerate(images):
    ycc = np.array(Image.fromarray(im).convert("YCbCr"))
    ycc[..., 0] = _equalize_channel(ycc[..., 0])
    out[i] = np.asarray(Image.fromarray(ycc, "YCbCr").convert("RGB"))
  return out


def standardize(images: np.ndarray, mode: str = "per_image") -> np.ndarray:
  """float32: 'per_image' (zero mean, unit std per image) or 'centered' ((x - 128) / 128)."""
  images = _check(images).astype(np.float32)
  if mode == "centered":
    return (images - 128.0) / 128.0
  if mode == "per_image":
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    std = images.std(axis=(1, 2, 3), keepdims=True)
    return (images - mean) / np.maximum(std, 1.0 / np.sqrt(images[0].size))
  raise ConfigError("standardize.mode", mode, ["per_image", "centered"])
