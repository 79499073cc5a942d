"""Bilinear resize with PyTorch `interpolate(mode='bilinear', align_corners=False)` semantics.

Why not `jax.image.resize(..., 'bilinear')`: it antialiases when downsampling (a wider triangle
kernel), so a 32->2 resize averages the whole 16x16 cell, whereas PyTorch (and the L2T-ww
reference) samples at half-pixel centres `(j + 0.5) / s - 0.5` and reads only the 2x2 input
pixels around that point. `jax.image.scale_and_translate(..., antialias=False)` with zero
translation uses exactly that mapping; at the borders it renormalises the linear kernel over the
in-range taps, which equals PyTorch's clamping of negative source coordinates to 0.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from tl_jax.errors import ConfigError


def resize_bilinear(x: jax.Array, out_hw: Sequence[int]) -> jax.Array:
  """Resizes NHWC (or HWC) `x` to spatial size `out_hw`, half-pixel centres, no antialias.

  Matches `torch.nn.functional.interpolate(x, size=out_hw, mode='bilinear',
  align_corners=False)`; for integer ratios also the `scale_factor=` form the reference uses.
  Returns `x` unchanged when the size already matches. Differentiable in `x`.
  """
  if x.ndim not in (3, 4):
    raise ConfigError("resize.input.ndim", x.ndim, (3, 4), hint="expects HWC or NHWC")
  out_h, out_w = int(out_hw[0]), int(out_hw[1])
  if out_h <= 0 or out_w <= 0:
    raise ConfigError("resize.out_hw", tuple(out_hw), "positive (height, width)")
  h_axis = x.ndim - 3
  in_h, in_w = x.shape[h_axis], x.shape[h_axis + 1]
  if (in_h, in_w) == (out_h, out_w):
    return x
  out_shape = list(x.shape)
  out_shape[h_axis], out_shape[h_axis + 1] = out_h, out_w
  dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  scale = jnp.array([out_h / in_h, out_w / in_w], dtype=dtype)
  translation = jnp.zeros((2,), dtype=dtype)
  y = jax.image.scale_and_translate(
      x.astype(dtype), tuple(out_shape), (h_axis, h_axis + 1), scale, translation,
      method="linear", antialias=False, precision=jax.lax.Precision.HIGHEST)
  return y.astype(dtype)
