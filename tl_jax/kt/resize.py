"""Bilinear resize with PyTorch `interpolate(mode='bilinear', align_corners=False)` semantics.

Why not `jax.image.resize(..., 'bilinear')`: it antialiases when downsampling (a wider triangle
kernel), so a 32->2 resize averages the whole 16x16 cell, whereas PyTorch (and the L2T-ww
reference) samples at half-pixel centres `(j + 0.5) / s - 0.5` and reads only the 2x2 input
pixels around that point. `jax.image.scale_and_translate(..., antialias=False)` with zero
translation uses exactly that mapping; at the borders it renormalises the linear kernel over the
in-range taps, which equals PyTorch's clamping of negative source coordinates to 0.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.errors import ConfigError


@functools.lru_cache(maxsize=None)
def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix of the 1-D resize: column k = the resize of the unit vector e_k.

  Computed once per size pair with `jax.image.scale_and_translate(..., antialias=False)` (zero
  translation, scale n_out / n_in) under `ensure_compile_time_eval`, so inside jit the resize is
  two small constant matmuls instead of the kernel-building ops scale_and_translate stages
  (that made the twice-differentiated L2T step's HLO several times larger and slow to compile).
  """
  with jax.ensure_compile_time_eval():
    eye = jnp.eye(n_in, dtype=jnp.float32)
    m = jax.image.scale_and_translate(
        eye, (n_out, n_in), (0,), jnp.array([n_out / n_in], jnp.float32), jnp.zeros((1,), jnp.float32),
        method="linear", antialias=False, precision=jax.lax.Precision.HIGHEST)
    return np.asarray(m, dtype=np.float64)


def resize_bilinear(x: jax.Array, out_hw: Sequence[int]) -> jax.Array:
  """Resizes NHWC (or HWC) `x` to spatial size `out_hw`, half-pixel centres, no antialias.

  Matches `torch.nn.functional.interpolate(x, size=out_hw, mode='bilinear',
  align_corners=False)`; for integer ratios also the `scale_factor=` form the reference uses.
  Bilinear = separable, so rows then columns are resized with `interpolation_matrix`.
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
  dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  mh = jnp.asarray(interpolation_matrix(in_h, out_h), dtype)
  mw = jnp.asarray(interpolation_matrix(in_w, out_w), dtype)
  hi = jax.lax.Precision.HIGHEST
  y = jnp.einsum("oh,...hwc->...owc", mh, x.astype(dtype), precision=hi)
  return jnp.einsum("pw,...owc->...opc", mw, y, precision=hi)
