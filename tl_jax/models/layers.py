"""Shared building blocks: a Conv that dodges XLA:CPU's slow convolutions, BatchNorm, inits.

Why `Conv` exists: on XLA:CPU a 3x3 convolution on a feature map of 2x2 or smaller takes ~1 s
instead of ~10 ms (see shared/docs/environment.md); so does a stride-2 conv producing such a map.
For those (output H*W <= `small_map_pixels`, default 4) `Conv` computes the very same
convolution as im2col + matmul. Both paths read the same parameters, named and shaped exactly like
`flax.linen.Conv` ('kernel' HWIO = (kh, kw, cin // groups, features), 'bias' (features,)), so
weights move freely between `Conv` and `nn.Conv` and between the two paths. The choice is made
from static shapes at trace time, so it costs nothing under jit.

Conv formulations (all pure functions `f(x, kernel, strides, pads, groups)`, NHWC / HWIO, equal
to float rounding in value, gradient and second derivatives): `conv_lax` (XLA's convolution),
`conv_lax_loopsafe` (the same, with every derivative a convolution in XLA:CPU's canonical
layout, so that it stays fast inside `lax.scan` / `lax.map`: see `conv_nhwc`),
`conv_im2col` (patches + matmul), `conv_depthwise_shifts` (depthwise only: a sum of kh*kw
shifted slices times per-channel weights, i.e. fused multiply-adds XLA:CPU vectorises along
channels), `conv_1x1_matmul` (1x1, ungrouped: a strided slice + one matmul) and
`conv_toeplitz` (dense, ungrouped: one matmul of input rows with a banded kernel matrix, for
convs with few channels, e.g. LeNet-5's). Why several:
XLA:CPU is slow on some shapes (EfficientNet-Lite0's depthwise convs; see launch/bench_conv.py),
and which formulation wins depends on the shape and machine. Which one a `Conv` uses:
  1. `force_im2col=True` -> im2col;
  2. else an explicit choice for the conv's kind ('depthwise': groups == cin > 1; 'pointwise':
     1x1 with groups == 1; 'dense': everything else) from the trace-time context
     `conv_strategy(depthwise=..., pointwise=..., dense=...)`, else from the environment variable
     `TL_JAX_CONV_IMPL` (e.g. 'depthwise=shifts,pointwise=matmul', or one name for every kind);
     an explicit choice wins over the small-map rule;
  3. else 'auto': im2col on outputs of <= `small_map_pixels` pixels (as before, on every backend:
     VGG-9 sets that threshold per backend itself), otherwise `cpu_conv_impl` on the 'cpu'
     backend (the per-kind table `CPU_CONV_DEFAULTS`, set from measurements: depthwise as
     shifted multiply-adds, 1x1 as matmul, dense stride-1 convs with cin * cout <=
     `TOEPLITZ_MAX_CIN_COUT` as banded matmuls, the rest XLA's conv with loop-safe derivatives,
     `conv_lax_loopsafe`) and `conv_lax` on GPU/TPU.
Like `frozen_batch_norm`, the strategy is read while tracing, and jax caches traces by function
identity: `jax.jit(f)` (or `jax.make_jaxpr(f)`) of an `f` already traced under another strategy
reuses the old trace. To compare strategies trace a new function object per strategy (a fresh
closure, a fresh `make_train_step`).

Dtypes: like every flax layer, `Conv` creates its parameters in `param_dtype` (float32) and
computes in the promotion of input and parameters, so float32 inputs work under
`jax_enable_x64` and float64 inputs compute in float64. `init_variables` initialises a model with
variables in the input's precision (float64 input -> float64 params and BN statistics), which a
float64 end-to-end forward/gradient (finite-difference checks) needs.

`BatchNorm` is `nn.BatchNorm` (same variables and names) that honours two trace-time contexts:
`frozen_batch_norm` (inference mode under train=True, for every BatchNorm or for those at given
module paths) and `batch_norm_mask` (batch statistics over the real rows of a padded batch only).
"""

from __future__ import annotations

import contextlib
import functools
import contextvars
import math
import os
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from tl_jax.errors import ConfigError, check_choice

Array = jax.Array
PaddingLike = str | int | Sequence[tuple[int, int]]

# PyTorch kaiming_normal_(mode='fan_out', nonlinearity='relu'): untruncated N(0, 2 / (k*k*C_out)).
# (jax's "normal" is untruncated; "truncated_normal" is the other one.)
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# Default threshold on the *output* spatial size H*W at or below which `Conv` uses im2col.
# Measured (jit fwd+bwd, batch 32, 2 loaded cores): 3x3 512->512 on 2x2: XLA conv 1870 ms vs
# im2col 33 ms; 3x3/2 256->512 from 4x4 to 2x2: 383 vs 13 ms; on 4x4 outputs both ~280 ms.
SMALL_MAP_PIXELS = 4


def explicit_padding(padding: PaddingLike, in_hw: Sequence[int], kernel: Sequence[int],
                     strides: Sequence[int]) -> list[tuple[int, int]]:
  """(lo, hi) pads per spatial dim. 'SAME' is TensorFlow's: an odd extra pixel goes right/bottom."""
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return [(0, 0)] * len(kernel)
    if mode != "SAME":
      raise ConfigError("conv.padding", padding, ["SAME", "VALID", "int", "((lo, hi), ...)"])
    pads = []
    for size, k, s in zip(in_hw, kernel, strides):
      out = -(-size // s)
      total = max((out - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))
    return pads
  if isinstance(padding, int):
    return [(padding, padding)] * len(kernel)
  pads = [tuple(int(v) for v in p) for p in padding]
  if len(pads) != len(kernel) or any(len(p) != 2 for p in pads):
    raise ConfigError("conv.padding", padding, "one (lo, hi) pair per spatial dim")
  return pads  # type: ignore[return-value]


def conv_im2col(x: Array, kernel: Array, strides: Sequence[int], pads: Sequence[tuple[int, int]],
                groups: int = 1) -> Array:
  """NHWC conv as patch extraction + matmul; same result as lax.conv_general_dilated."""
  kh, kw, cin_g, cout = kernel.shape
  sh, sw = strides
  x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  n, hp, wp, cin = x.shape
  ho = (hp - kh) // sh + 1
  wo = (wp - kw) // sw + 1
  # Patches in (kh, kw) order, each [n, ho, wo, cin]; stacked -> [n, ho, wo, kh*kw, cin].
  taps = [x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
          for i in range(kh) for j in range(kw)]
  patches = jnp.stack(taps, axis=3)
  if groups == 1:
    return patches.reshape(n, ho, wo, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
  # Grouped: input channels split into `groups` contiguous chunks, output features likewise.
  patches = patches.reshape(n, ho, wo, kh * kw, groups, cin_g)
  k = kernel.reshape(kh * kw, cin_g, groups, cout // groups)
  out = jnp.einsum("nhwkgc,kcgf->nhwgf", patches, k)
  return out.reshape(n, ho, wo, cout)


def conv_lax(x: Array, kernel: Array, strides: Sequence[int], pads: Sequence[tuple[int, int]],
             groups: int = 1) -> Array:
  """The ordinary XLA convolution, NHWC / HWIO."""
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=tuple(strides), padding=[tuple(p) for p in pads],
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


_NHWC_DN = ("NHWC", "HWIO", "NHWC")


def _dilated(size: int, d: int) -> int:
  return 0 if size == 0 else 1 + d * (size - 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_nhwc(x: Array, kernel: Array, strides: tuple[int, int],
              pads: tuple[tuple[int, int], tuple[int, int]],
              lhs_dilation: tuple[int, int] = (1, 1),
              rhs_dilation: tuple[int, int] = (1, 1)) -> Array:
  """`lax.conv_general_dilated` in NHWC / HWIO / NHWC (groups 1) whose derivatives of every order
  are again `conv_nhwc` calls, i.e. convolutions in that same layout on transposed operands.

  Why: XLA:CPU rewrites a convolution into its fast kernel only when it can bring the operands
  into this layout; in a while-loop body (every `lax.scan` / `lax.map`: the engine's epoch and
  seed loops) it does not do so for the kernel gradient jax emits (dim_labels f01b_i01o->01bf),
  which then runs as a naive loop: 350-430 ms instead of 5-10 ms for a 3x3 16->16 conv on
  64x32x32 (whole models: launch/bench_loop.py, results/benchmarks/). Here the transposes are
  explicit, so the convolution XLA sees is always the canonical one. The rules are jax's own
  transpose rules (lhs: the flipped, in/out-swapped kernel over the stride-dilated cotangent;
  rhs: the input with batch and feature swapped against the cotangent as kernel), so values are
  the same to rounding.
  Forward-mode (jvp) is not defined (custom_vjp); reverse over reverse is, to any order."""
  return jax.lax.conv_general_dilated(x, kernel, strides, pads, lhs_dilation, rhs_dilation,
                                      _NHWC_DN)


def _conv_nhwc_fwd(x, kernel, strides, pads, lhs_dilation, rhs_dilation):
  return conv_nhwc(x, kernel, strides, pads, lhs_dilation, rhs_dilation), (x, kernel)


def _conv_nhwc_bwd(strides, pads, lhs_dilation, rhs_dilation, res, g):
  x, kernel = res
  in_d = [_dilated(n, d) for n, d in zip(x.shape[1:3], lhs_dilation)]
  k_d = [_dilated(n, d) for n, d in zip(kernel.shape[:2], rhs_dilation)]
  out_d = [_dilated(n, s) for n, s in zip(g.shape[1:3], strides)]
  lo = [p[0] for p in pads]
  before = [k - l - 1 for k, l in zip(k_d, lo)]
  after = [i + k - 1 - o - b for i, k, o, b in zip(in_d, k_d, out_d, before)]
  k_t = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  dx = conv_nhwc(g, k_t, tuple(lhs_dilation), tuple(zip(before, after)), tuple(strides),
                 tuple(rhs_dilation))
  hi = [(o - i) + (k - l - 1) for o, i, k, l in zip(out_d, in_d, k_d, lo)]
  dk = conv_nhwc(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), tuple(rhs_dilation),
                 tuple(zip(lo, hi)), tuple(lhs_dilation), tuple(strides))
  return dx.astype(x.dtype), dk.transpose(1, 2, 0, 3).astype(kernel.dtype)


conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv_lax_loopsafe(x: Array, kernel: Array, strides: Sequence[int],
                      pads: Sequence[tuple[int, int]], groups: int = 1) -> Array:
  """XLA's convolution with loop-safe derivatives (`conv_nhwc`); grouped convs (groups > 1)
  fall back to `conv_lax`."""
  if groups != 1:
    return conv_lax(x, kernel, strides, pads, groups)
  return conv_nhwc(x, kernel, tuple(int(s) for s in strides),
                   tuple((int(lo), int(hi)) for lo, hi in pads))


def _out_size(size: int, pad: tuple[int, int], k: int, s: int) -> int:
  return (size + pad[0] + pad[1] - k) // s + 1


def conv_depthwise_shifts(x: Array, kernel: Array, strides: Sequence[int],
                          pads: Sequence[tuple[int, int]], groups: int = 1) -> Array:
  """Depthwise NHWC conv (groups == cin, kernel (kh, kw, 1, cin * mult)) as a sum over the kh*kw
  taps of strided slices of the padded input times that tap's per-channel weights.

  Why: XLA:CPU is slow on feature_group_count == cin convolutions and their backward (Lite0
  trains at ~0.1x PyTorch's speed); written as elementwise multiply-adds the forward should fuse
  into one loop vectorised along the channel axis, and the gradients are pads and reductions,
  which differentiate again as plain ops (the L2T meta-gradient needs second order). Whether it
  is faster depends on the shape: launch/bench_conv.py measures it. Channel multiplier m > 1 (output o reads
  input o // m, lax's grouping) repeats the input channels first."""
  kh, kw, cin_g, cout = kernel.shape
  cin = x.shape[-1]
  if cin_g != 1 or groups != cin or cout % cin:
    raise ConfigError("conv_depthwise_shifts.kernel", tuple(kernel.shape),
                      f"a depthwise kernel (kh, kw, 1, {cin} * m) with groups == {cin}")
  mult = cout // cin
  if mult > 1:
    x = jnp.repeat(x, mult, axis=-1)
  sh, sw = strides
  ho, wo = (_out_size(size, p, k, s)
            for size, p, k, s in zip(x.shape[1:3], pads, (kh, kw), strides))
  x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  w = kernel.reshape(kh, kw, cout)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :] * w[i, j]
      out = tap if out is None else out + tap
  return out


def conv_1x1_matmul(x: Array, kernel: Array, strides: Sequence[int],
                    pads: Sequence[tuple[int, int]], groups: int = 1) -> Array:
  """1x1 NHWC conv (groups == 1, any stride and pads) as a strided slice + one matmul.

  Why: a 1x1 conv is a matmul over channels; handing XLA a dot_general lets it use its GEMM
  kernels (and the dot's transposes in the backward) instead of its convolution emitter."""
  kh, kw, cin, cout = kernel.shape
  if (kh, kw) != (1, 1) or groups != 1:
    raise ConfigError("conv_1x1_matmul.kernel", (tuple(kernel.shape), groups),
                      "a 1x1 kernel with feature_group_count 1")
  if any(lo or hi for lo, hi in pads):
    x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  sh, sw = strides
  if (sh, sw) != (1, 1):
    x = x[:, ::sh, ::sw, :]
  return x @ kernel.reshape(cin, cout)


def toeplitz_block(out_w: int, cout: int, max_cols: int = 80) -> int:
  """Output columns per block for `conv_toeplitz`: the largest divisor of `out_w` whose block
  (block * cout matmul columns) has at most `max_cols` columns. Why: wider blocks make a better
  shaped matmul but multiply zeros (the band holds kw of every block + kw - 1 input columns);
  timed in a scan, the best block of LeNet-5's two convs and ResNet-32's stem is this one
  (results/benchmarks/README.md, 2026-12-03 night)."""
  return max(b for b in range(1, out_w + 1) if out_w % b == 0 and (b == 1 or b * cout <= max_cols))


def conv_toeplitz(x: Array, kernel: Array, strides: Sequence[int],
                  pads: Sequence[tuple[int, int]], groups: int = 1,
                  block: int | None = None) -> Array:
  """Dense NHWC conv (groups 1) as one matmul per output row with a banded (block-Toeplitz)
  kernel matrix: the kh input rows under an output row, cut into blocks of `block` output columns
  (block - 1) * sw + kw input columns wide, times T[(i, u, c), (w, o)] = kernel[i, u - sw * w, c, o]
  (zero outside the band). `block` None: `toeplitz_block(out_w, cout)`.

  Why: XLA:CPU's convolution is slow when the channel counts are small (LeNet-5's 1->6 5x5 conv
  runs at ~11 GFLOP/s), because its GEMM then has 6 columns; im2col has the same shape. Folding
  `block` output columns into the matmul's columns gives it block * cout columns at the price of
  the band's zeros. For wide channels XLA's conv wins (launch/bench_conv.py). The gradients are
  the matmul's, a gather's (T from the kernel) and slices', so every order differentiates
  (forward mode too)."""
  kh, kw, cin, cout = kernel.shape
  if groups != 1 or cin != x.shape[-1]:
    raise ConfigError("conv_toeplitz.kernel", (tuple(kernel.shape), groups),
                      "a dense kernel with feature_group_count 1")
  sh, sw = strides
  x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  n, hp, wp, _ = x.shape
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  block = min(block or toeplitz_block(wo, cout), wo)
  nb = -(-wo // block)
  span = (block - 1) * sw + kw
  need = (nb * block - 1) * sw + kw
  if need > wp:  # a block size that does not divide the width: compute past the edge, cut below
    x = jnp.pad(x, ((0, 0), (0, 0), (0, need - wp), (0, 0)))
  rows = jnp.stack([x[:, i:i + (ho - 1) * sh + 1:sh] for i in range(kh)], axis=2)  # n ho kh W c
  rows = jnp.stack([rows[:, :, :, b * block * sw:b * block * sw + span] for b in range(nb)],
                   axis=2)  # n, ho, nb, kh, span, cin
  u = np.arange(span)[:, None] - sw * np.arange(block)[None, :]  # (span, block): tap column
  band = ((u >= 0) & (u < kw))[None, :, None, :, None]
  taps = kernel[:, np.clip(u, 0, kw - 1)].transpose(0, 1, 3, 2, 4)  # kh, span, cin, block, cout
  t = jnp.where(band, taps, jnp.zeros((), kernel.dtype))
  out = rows.reshape(n * ho * nb, kh * span * cin) @ t.reshape(kh * span * cin, block * cout)
  return out.reshape(n, ho, nb * block, cout)[:, :, :wo]


CONV_FNS: dict[str, Callable[..., Array]] = {
    "lax": conv_lax, "lax_loopsafe": conv_lax_loopsafe, "im2col": conv_im2col,
    "shifts": conv_depthwise_shifts, "matmul": conv_1x1_matmul, "toeplitz": conv_toeplitz}
CONV_KINDS = ("depthwise", "pointwise", "dense")
# Formulations valid per kind; 'auto' = the backend default (see the module docstring).
CONV_CHOICES: dict[str, tuple[str, ...]] = {
    "depthwise": ("auto", "lax", "im2col", "shifts"),
    "pointwise": ("auto", "lax", "lax_loopsafe", "im2col", "matmul"),
    "dense": ("auto", "lax", "lax_loopsafe", "im2col", "toeplitz"),
}
# The per-kind XLA:CPU default above the small-map rule, from launch/bench_conv.py on the 2-core
# AVX2 VM (results/benchmarks/conv_cpu2.json, README there): depthwise convs as shifted
# multiply-adds are 2-13x faster than XLA:CPU's grouped convolution on every EfficientNet-Lite0
# shape, 1x1 convs as a matmul about 2x; together EfficientNet-Lite0's train step goes from 8.6
# to 2.0 s. Dense 3x3 convs keep XLA's convolution (im2col loses above 4-pixel maps there), with
# loop-safe derivatives (`conv_nhwc`): inside the engine's epoch scan XLA:CPU's own kernel gradient
# runs 40-80x slower.
CPU_CONV_DEFAULTS: dict[str, str] = {"depthwise": "shifts", "pointwise": "matmul",
                                     "dense": "lax_loopsafe"}
# Dense stride-1 convs with cin * cout at most this use `conv_toeplitz` on CPU: timed in a scan
# (as the engine runs them), LeNet-5's two convs (1->6, 6->16) and ResNet-32's stem (3->16)
# train 1.6-2.6x faster that way, while VGG-9's stem (3->64), ResNet-32's 16->16 and Lite0's
# strided stem are faster as XLA's conv (results/benchmarks/README.md, 2026-12-03 night).
TOEPLITZ_MAX_CIN_COUT = 96
CONV_IMPL_ENV = "TL_JAX_CONV_IMPL"


def conv_kind(kernel_shape: Sequence[int], groups: int) -> str:
  """'depthwise' (groups == cin > 1, one input channel per group), 'pointwise' (1x1, groups 1)
  or 'dense' (the rest, grouped non-depthwise included), from an HWIO kernel shape."""
  kh, kw, cin_g, _ = kernel_shape
  if groups > 1 and cin_g == 1:
    return "depthwise"
  if (kh, kw) == (1, 1) and groups == 1:
    return "pointwise"
  return "dense"


def is_small_map(out_hw: Sequence[int], small_map_pixels: int = SMALL_MAP_PIXELS) -> bool:
  """Whether an output map is small enough for the im2col rule (0 disables it)."""
  return small_map_pixels > 0 and out_hw[0] * out_hw[1] <= small_map_pixels


def cpu_conv_impl(kernel_shape: Sequence[int], groups: int, out_hw: Sequence[int],
                  strides: Sequence[int], small_map_pixels: int = SMALL_MAP_PIXELS) -> str:
  """The formulation a conv uses on XLA:CPU by default: im2col for small maps, `conv_toeplitz`
  for dense stride-1 convs with few channels (`TOEPLITZ_MAX_CIN_COUT`), else the
  `CPU_CONV_DEFAULTS` entry of its kind. The one place to encode per-shape measurements."""
  if is_small_map(out_hw, small_map_pixels):
    return "im2col"
  kind = conv_kind(kernel_shape, groups)
  if (kind == "dense" and groups == 1 and tuple(strides) == (1, 1)
      and kernel_shape[2] * kernel_shape[3] <= TOEPLITZ_MAX_CIN_COUT):
    return "toeplitz"
  if kind == "pointwise" and tuple(strides) != (1, 1):
    # ResNet's strided 1x1 shortcuts: no measurable step gain as matmuls (conv_cpu2.json); XLA's
    # conv (with loop-safe derivatives) keeps ResNet-32 (the L2T source) computing as before
    return "lax_loopsafe"
  return CPU_CONV_DEFAULTS[kind]


def default_conv_impl(backend: str, kernel_shape: Sequence[int], groups: int,
                      out_hw: Sequence[int], strides: Sequence[int],
                      small_map_pixels: int = SMALL_MAP_PIXELS) -> str:
  """The 'auto' formulation on `backend`: `cpu_conv_impl` on 'cpu'; elsewhere XLA's convolution,
  except that the small-map rule still applies there as it always did (the threshold is the
  caller's: VGG-9 passes SMALL_MAP_PIXELS off CPU, so a model's GPU numerics stay as before)."""
  if backend == "cpu":
    return cpu_conv_impl(kernel_shape, groups, out_hw, strides, small_map_pixels)
  return "im2col" if is_small_map(out_hw, small_map_pixels) else "lax"


def _check_strategy(field: str, kind: str, impl: str) -> str:
  return check_choice(f"{field}.{kind}", impl, CONV_CHOICES[kind])


@functools.lru_cache(maxsize=16)
def parse_conv_impl(spec: str) -> dict[str, str]:
  """`TL_JAX_CONV_IMPL` text -> {kind: formulation}: 'depthwise=shifts,pointwise=matmul' (kinds
  not named stay 'auto') or one name for every kind ('lax', 'im2col', 'auto'). Empty -> {}."""
  spec = spec.strip()
  if not spec:
    return {}
  if "=" not in spec:
    return {k: _check_strategy(CONV_IMPL_ENV, k, spec) for k in CONV_KINDS}
  out = {}
  for item in spec.split(","):
    kind, sep, impl = (part.strip() for part in item.partition("="))
    if not sep:
      raise ConfigError(CONV_IMPL_ENV, spec, "kind=name pairs joined by ',' or one name")
    check_choice(CONV_IMPL_ENV, kind, CONV_KINDS)
    out[kind] = _check_strategy(CONV_IMPL_ENV, kind, impl)
  return out


_CONV_STRATEGY: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "tl_jax_conv_strategy", default={})


@contextlib.contextmanager
def conv_strategy(default: str | None = None, *, depthwise: str | None = None,
                  pointwise: str | None = None, dense: str | None = None) -> Iterator[None]:
  """Within this context (at trace time) every tl_jax `Conv` of the given kind uses the given
  formulation: `conv_strategy(depthwise="shifts", pointwise="matmul")`. `default` applies to every
  kind not named (it must be valid for all: 'auto', 'lax' or 'im2col'); None leaves a kind as the
  enclosing context / `TL_JAX_CONV_IMPL` / backend default has it; 'auto' restores the backend
  default. Parameters are the same whatever the formulation, so this only changes speed (and
  float rounding). Why a context, not a field: benchmarks and experiments switch every conv of
  any model without touching model code. Enter it around the tracing (the first call of a
  freshly built jitted step): jax caches traces by function identity, so re-jitting a function
  object already traced elsewhere silently keeps the strategy of that first trace."""
  given = {"depthwise": depthwise, "pointwise": pointwise, "dense": dense}
  new = dict(_CONV_STRATEGY.get())
  for kind in CONV_KINDS:
    impl = given[kind] if given[kind] is not None else default
    if impl is not None:
      new[kind] = _check_strategy("conv_strategy", kind, impl)
  token = _CONV_STRATEGY.set(new)
  try:
    yield
  finally:
    _CONV_STRATEGY.reset(token)


def conv_strategy_now() -> dict[str, str]:
  """{kind: formulation} in force now: the `conv_strategy` context over `TL_JAX_CONV_IMPL`,
  'auto' for kinds set by neither."""
  out = dict.fromkeys(CONV_KINDS, "auto")
  out.update(parse_conv_impl(os.environ.get(CONV_IMPL_ENV, "")))
  out.update(_CONV_STRATEGY.get())
  return out


def select_conv_impl(kernel_shape: Sequence[int], groups: int, out_hw: Sequence[int],
                     strides: Sequence[int], small_map_pixels: int = SMALL_MAP_PIXELS,
                     backend: str | None = None) -> str:
  """The formulation (a key of CONV_FNS) a `Conv` with these static shapes uses now: an explicit
  choice for its kind (`conv_strategy`, `TL_JAX_CONV_IMPL`), else `default_conv_impl` of
  `backend` (default: jax's default backend)."""
  impl = conv_strategy_now()[conv_kind(kernel_shape, groups)]
  if impl != "auto":
    return impl
  return default_conv_impl(backend or jax.default_backend(), kernel_shape, groups, out_hw,
                           strides, small_map_pixels)


_SECOND_ORDER = contextvars.ContextVar("tl_jax_second_order", default=False)


@contextlib.contextmanager
def second_order(active: bool = True) -> Iterator[None]:
  """Within this context (at trace time) the models traced will be differentiated twice (L2T's
  meta-gradient through the look-ahead, `tl_jax.kt.bilevel`), so a model that picks its CPU
  convolutions by measurement (`vgg.VGG9`) picks those measured for second order. Like
  `conv_strategy`, it changes speed and float rounding only."""
  token = _SECOND_ORDER.set(bool(active))
  try:
    yield
  finally:
    _SECOND_ORDER.reset(token)


def is_second_order() -> bool:
  """Whether a `second_order` context is in force now (at trace time)."""
  return _SECOND_ORDER.get()


YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def ynn_convolutions(xla_flags: str | None = None) -> bool:
  """Whether XLA:CPU computes convolutions with YNNPACK under `xla_flags` (default: the
  XLA_FLAGS environment variable, which XLA reads when its CPU backend starts). YNNPACK's
  convolution fusion is on by default; the last `--xla_cpu_experimental_ynn_fusion_type=` flag
  turns it off with an empty value, with '-individual_convolution', or with a list of kinds that
  leaves 'individual_convolution' out (tl_jax.runtime's 'auto' sets '-individual_convolution')."""
  flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  value = None
  for flag in flags.split():
    if flag.startswith(YNN_FUSION_FLAG + "="):
      value = flag.split("=", 1)[1]
  if value is None:
    return True
  kinds = [k.strip() for k in value.split(",") if k.strip()]
  if not kinds:
    return False
  if "-individual_convolution" in kinds:
    return False
  if "individual_convolution" in kinds or "+individual_convolution" in kinds:
    return True
  # a plain list replaces the default set; +/- entries only edit it
  return all(k[0] in "+-" for k in kinds)


class Conv(nn.Module):
  """2-D convolution with `nn.Conv`'s parameter layout and a choice of formulations (im2col for
  tiny maps; `conv_strategy` / `TL_JAX_CONV_IMPL` / per-backend defaults, see the module docstring).

  `small_map_pixels`: outputs with H*W at or below it use im2col + matmul unless a formulation is
  chosen explicitly (0 disables it; `force_im2col=True` always uses im2col, for tests).
  `padding` is 'SAME' (TF rule), 'VALID', an int, or explicit ((lo, hi), (lo, hi)). `param_dtype` / `dtype` as in `nn.Conv`: parameters are
  created in `param_dtype`; the computation runs in `dtype`, default the promotion of input and
  parameters (lax.conv requires equal dtypes, so both are cast to it).
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: PaddingLike = "SAME"
  use_bias: bool = True
  feature_group_count: int = 1
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros
  small_map_pixels: int = SMALL_MAP_PIXELS
  force_im2col: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim != 4:
      raise ConfigError("conv.input", x.shape, "NHWC (4-D) arrays")
    kernel_size = tuple(self.kernel_size)
    strides = tuple(self.strides)
    cin = x.shape[-1]
    if cin % self.feature_group_count or self.features % self.feature_group_count:
      raise ConfigError("conv.feature_group_count", self.feature_group_count,
                        f"a divisor of in ({cin}) and out ({self.features}) channels")
    kernel = self.param("kernel", self.kernel_init,
                        kernel_size + (cin // self.feature_group_count, self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    pads = explicit_padding(self.padding, x.shape[1:3], kernel_size, strides)
    out_hw = [_out_size(size, p, k, s)
              for size, p, k, s in zip(x.shape[1:3], pads, kernel_size, strides)]
    impl = "im2col" if self.force_im2col else select_conv_impl(
        kernel.shape, self.feature_group_count, out_hw, strides, self.small_map_pixels)
    y = CONV_FNS[impl](x, kernel, strides, pads, self.feature_group_count)
    if bias is not None:
      y = y + bias
    return y


_BN_FROZEN: contextvars.ContextVar[bool | frozenset[str]] = contextvars.ContextVar(
    "tl_jax_bn_frozen", default=False)


@contextlib.contextmanager
def frozen_batch_norm(frozen: bool | Iterable[str] = True) -> Iterator[None]:
  """Within this context (at trace time) tl_jax BatchNorms run in inference mode - running
  statistics used and left unchanged - even under `train=True`, while dropout keeps following
  `train`.

  `frozen=True`: every BatchNorm (`transfer.bn='frozen'`). A collection of '/'-joined module
  paths (e.g. {'block1/bn'}): only the BatchNorms at those paths, the others train as usual
  (`transfer.bn='frozen_layers'`: the layers a strategy freezes keep their statistics, as a
  Keras base model with `trainable=False` does). `False` or an empty collection: none."""
  value = frozenset(frozen) if not isinstance(frozen, bool) else frozen
  token = _BN_FROZEN.set(value)
  try:
    yield
  finally:
    _BN_FROZEN.reset(token)


def bn_inference(train: bool, path: Sequence[str] = ()) -> bool:
  """`use_running_average` of the BatchNorm at module `path` called under `train`
  (see `frozen_batch_norm`)."""
  frozen = _BN_FROZEN.get()
  if not train or frozen is True:
    return True
  return bool(frozen) and "/".join(path) in frozen


_BN_MASK: contextvars.ContextVar[Array | None] = contextvars.ContextVar("tl_jax_bn_mask",
                                                                        default=None)


@contextlib.contextmanager
def batch_norm_mask(mask: Array | None) -> Iterator[None]:
  """Within this context (at trace time), every tl_jax BatchNorm in train mode computes its batch
  mean/variance - hence its output and its running-statistics update - over the rows with
  mask != 0 only. `mask`: a [B] array of 0/1 over the leading (batch) axis of every BN input, or
  None (no masking). Why: the last batch of an epoch is padded to the fixed batch shape with
  copies of a real image; without the mask those copies would bias the batch statistics.

  Enter it inside the traced function (the train step, around `model.apply`) with the batch's
  own mask array: a mask captured from outside `jax.jit` would be baked in as a constant. A mask
  with no real row gives NaN statistics (mean over nothing). In inference mode (train=False or
  `frozen_batch_norm`) the mask has no effect.
  """
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.ndim != 1:
      raise ConfigError("batch_norm_mask.mask", mask.shape, "a [B] array of 0/1, or None")
  token = _BN_MASK.set(mask)
  try:
    yield
  finally:
    _BN_MASK.reset(token)


def bn_row_mask(x: Array) -> Array | None:
  """The `batch_norm_mask` row mask broadcast to `x` ([B, ...]) as bool, or None outside it."""
  mask = _BN_MASK.get()
  if mask is None:
    return None
  if mask.shape[0] != x.shape[0]:
    raise ConfigError("batch_norm_mask.mask", mask.shape,
                      f"one entry per row of the BatchNorm input {tuple(x.shape)}")
  rows = mask.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.broadcast_to(rows, x.shape).astype(bool)


BN_RUNNING_VAR = ("biased", "unbiased")
_BN_UNBIASED = contextvars.ContextVar("tl_jax_bn_unbiased", default=False)


@contextlib.contextmanager
def bn_running_var(kind: str = "biased") -> Iterator[None]:
  """Within this context (at trace time), how every tl_jax BatchNorm in train mode updates its
  running variance: 'biased' (flax: the batch variance over n values) or 'unbiased' (PyTorch's
  `nn.BatchNorm2d`: the batch variance times n / (n - 1), n = real rows x H x W). Normalisation
  itself always uses the biased batch variance, in both libraries; only the stored statistic, and
  hence eval-mode predictions, differ. Use 'unbiased' for models imported from PyTorch code or
  compared with it (`model.bn_running_var`)."""
  check_choice("model.bn_running_var", kind, BN_RUNNING_VAR)
  token = _BN_UNBIASED.set(kind == "unbiased")
  try:
    yield
  finally:
    _BN_UNBIASED.reset(token)


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` whose batch statistics skip padded rows inside `batch_norm_mask` and whose
  running variance follows `bn_running_var`.

  Only `__call__` differs: without an explicit `mask=` it passes the context's row mask to
  flax's own masked statistics (`mean(..., where=mask)`); outside both contexts it is exactly
  `nn.BatchNorm`. Same fields, variables ('scale', 'bias'; 'mean', 'var') and names, so weight
  files and checkpoints written with `nn.BatchNorm` load unchanged.
  """

  # Set by `batch_norm(train, ...)` instead of `use_running_average`: the mode is then decided
  # at call time, when the module knows its path (`frozen_batch_norm` with module paths).
  train: Optional[bool] = None

  def __call__(self, x: Array, use_running_average: bool | None = None, *,
               mask: Array | None = None) -> Array:
    if mask is None:
      mask = bn_row_mask(x)
    if self.train is not None and self.use_running_average is None and use_running_average is None:
      use_running_average = bn_inference(self.train, self.scope.path if self.scope else ())
    running = nn.merge_param("use_running_average", self.use_running_average,
                             use_running_average)
    old_var = None
    if (_BN_UNBIASED.get() and not running and not self.is_initializing()
        and self.has_variable("batch_stats", "var")):
      old_var = self.get_variable("batch_stats", "var")
    y = super().__call__(x, use_running_average, mask=mask)
    if old_var is not None:
      self.put_variable("batch_stats", "var", self._unbiased_var(x, mask, old_var))
    return y

  def _unbiased_var(self, x: Array, mask: Array | None, old_var: Array) -> Array:
    """momentum * old + (1 - momentum) * var_b * n / (n - 1), var_b computed as flax does
    (E[x^2] - E[x]^2 over the masked rows, at least float32)."""
    if self.axis not in (-1, x.ndim - 1):
      raise ConfigError("model.bn_running_var", "unbiased", "BatchNorm over the last axis only")
    axes = tuple(range(x.ndim - 1))
    xf = jnp.asarray(x, jnp.promote_types(jnp.float32, x.dtype))
    if mask is None:
      n = jnp.asarray(math.prod(x.shape[:-1]), xf.dtype)
      mean, mean2 = jnp.mean(xf, axes), jnp.mean(jnp.square(xf), axes)
    else:
      n = jnp.sum(mask[..., 0].astype(xf.dtype))
      mean = jnp.mean(xf, axes, where=mask)
      mean2 = jnp.mean(jnp.square(xf), axes, where=mask)
    var = jnp.maximum(0.0, mean2 - jnp.square(mean))
    var = var * n / jnp.maximum(n - 1.0, 1.0)
    return (self.momentum * old_var + (1.0 - self.momentum) * var).astype(old_var.dtype)


def batch_norm(train: bool, name: str, momentum: float = 0.9,
               epsilon: float = 1e-5) -> BatchNorm:
  """BatchNorm with PyTorch defaults (torch momentum 0.1 == flax momentum 0.9, eps 1e-5) that
  follows `frozen_batch_norm` and `batch_norm_mask`."""
  return BatchNorm(train=bool(train), momentum=momentum, epsilon=epsilon, name=name)


def _window_slices(x: Array, window: Sequence[int], strides: Sequence[int]):
  (wh, ww), (sh, sw) = window, strides
  oh, ow = (x.shape[1] - wh) // sh + 1, (x.shape[2] - ww) // sw + 1
  return [(i, j, (slice(None), slice(i, i + sh * (oh - 1) + 1, sh),
                  slice(j, j + sw * (ow - 1) + 1, sw), slice(None)))
          for i in range(wh) for j in range(ww)]


def _first_max_slices(x: Array, window: tuple[int, int],
                      strides: tuple[int, int]) -> tuple[Array, Array]:
  """(max over each window, index of its first maximum, int8, taps in row-major order) from one
  strided slice of `x` per tap, in one pass of compares and selects (see `_first_max`)."""
  best = arg = None
  for t, (_, _, idx) in enumerate(_window_slices(x, window, strides)):
    v = x[idx]
    if best is None:
      best, arg = v, jnp.zeros(v.shape, jnp.int8)
    else:
      better = v > best
      best, arg = jnp.where(better, v, best), jnp.where(better, jnp.int8(t), arg)
  return best, arg


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_slices(x: Array, window: tuple[int, int], strides: tuple[int, int]) -> Array:
  # x spans its windows exactly: (h - wh) % sh == 0 == (w - ww) % sw (max_pool crops it)
  return _first_max_slices(x, window, strides)[0]


def _max_pool_slices_fwd(x, window, strides):
  # the first maximum's tap is kept from the forward pass (as in `_max_pool_blocks_fwd`)
  return _first_max_slices(x, window, strides)


def _max_pool_slices_bwd(window, strides, arg, g):
  # like XLA's select-and-scatter: each window's gradient goes to its first maximum; the
  # transpose of a strided slice is an interior pad, so dx is a sum of padded, masked copies of g
  (wh, ww), (sh, sw) = window, strides
  zero = jnp.zeros((), g.dtype)
  dx = None
  for t in range(wh * ww):
    i, j = divmod(t, ww)
    part = jax.lax.pad(jnp.where(arg == t, g, zero), zero,
                   ((0, 0, 0), (i, wh - 1 - i, sh - 1), (j, ww - 1 - j, sw - 1), (0, 0, 0)))
    dx = part if dx is None else dx + part
  return (dx,)


_max_pool_slices.defvjp(_max_pool_slices_fwd, _max_pool_slices_bwd)


def _blocks(x: Array, window: tuple[int, int]) -> Array:
  """(b, h, w, c) -> (b, h // wh, w // ww, wh * ww, c): the non-overlapping windows (h, w
  multiples of the window), taps in row-major order (the order of `_window_slices`)."""
  (wh, ww), (b, h, w, c) = window, x.shape
  return x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      b, h // wh, w // ww, wh * ww, c)


def _first_max(xb: Array) -> tuple[Array, Array]:
  """(max over axis 3, index of its first occurrence) in one pass of compares and selects (no
  reduce: a variadic argmax reduce fails to lower for float64 inside a jit traced without x64,
  as XLA's reduce_window max gradient does)."""
  best, arg = xb[:, :, :, 0], jnp.zeros(xb.shape[:3] + xb.shape[4:], jnp.int8)
  for t in range(1, xb.shape[3]):
    better = xb[:, :, :, t] > best
    best, arg = jnp.where(better, xb[:, :, :, t], best), jnp.where(better, jnp.int8(t), arg)
  return best, arg


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_blocks(x: Array, window: tuple[int, int]) -> Array:
  return _first_max(_blocks(x, window))[0]


def _max_pool_blocks_fwd(x, window):
  # The window's first maximum is found here, with the max itself, and kept as the residual: a
  # backward that compared x with the pooled max would depend on XLA computing x bit-identically
  # in two fusions, which it does not always do (a recomputed producer can round differently)
  return _first_max(_blocks(x, window))


def _max_pool_blocks_bwd(window, arg, g):
  (wh, ww), (b, oh, ow, c) = window, g.shape
  taps = jnp.arange(wh * ww, dtype=arg.dtype)[:, None]
  d = jnp.where(arg[:, :, :, None, :] == taps, g[:, :, :, None, :], jnp.zeros((), g.dtype))
  return (d.reshape(b, oh, ow, wh, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      b, oh * wh, ow * ww, c),)


_max_pool_blocks.defvjp(_max_pool_blocks_fwd, _max_pool_blocks_bwd)


def max_pool(x: Array, window: Sequence[int], strides: Sequence[int],
             backend: str | None = None) -> Array:
  """`nn.max_pool(x, window, strides)` ('VALID'), NHWC, with the same value and the same gradient
  (each window's to its first maximum, as XLA's select-and-scatter), computed three ways:
  - non-overlapping windows (window == strides) on the 'cpu' backend or in float64: a reshape into
    windows and a max, the first maximum's tap kept from the forward pass, and a custom VJP of
    elementwise ops: on XLA:CPU `nn.max_pool`'s gradient
    (select-and-scatter, expanded into full-size iotas and a scatter) is several times slower,
    first and second order (results/benchmarks/README.md);
  - overlapping windows (AlexNet's and ResNet-50's 3x3/2) on the 'cpu' backend or in float64: one
    strided slice per tap, the first maximum's tap kept, and a backward of masked interior pads
    (`_max_pool_slices`): faster than select-and-scatter on XLA:CPU for the same reason, and in
    float64 XLA's reduce_window max gradient pads with a float32 value when x64 is enabled inside
    a jit traced without it (the float64 meta-gradient, `kt.meta_dtype`), which fails to lower;
  - otherwise (GPU/TPU float32) `nn.max_pool` itself."""
  window, strides = tuple(int(v) for v in window), tuple(int(v) for v in strides)
  on_cpu = (backend or jax.default_backend()) == "cpu"
  if not (on_cpu or x.dtype == jnp.float64) or window[0] * window[1] > 127:  # int8 taps
    return nn.max_pool(x, window, strides)
  (wh, ww), (sh, sw) = window, strides
  oh, ow = (x.shape[1] - wh) // sh + 1, (x.shape[2] - ww) // sw + 1  # 'VALID': partial windows dropped
  x = x[:, :sh * (oh - 1) + wh, :sw * (ow - 1) + ww]
  if window == strides:
    return _max_pool_blocks(x, window)
  return _max_pool_slices(x, window, strides)


def avg_pool(x: Array, window: Sequence[int], strides: Sequence[int],
             backend: str | None = None) -> Array:
  """`nn.avg_pool(x, window, strides)` ('VALID'), NHWC. Non-overlapping windows on the 'cpu'
  backend are a reshape into windows and a mean, whose gradient is a broadcast: XLA:CPU's
  reduce_window gradient (a padded reduce_window of the cotangent) is 2-3x slower at LeNet-5's
  shapes. Other windows and backends: `nn.avg_pool`."""
  window, strides = tuple(int(v) for v in window), tuple(int(v) for v in strides)
  if window != strides or (backend or jax.default_backend()) != "cpu":
    return nn.avg_pool(x, window, strides)
  (wh, ww), (b, h, w, c) = window, x.shape
  oh, ow = h // wh, w // ww
  return x[:, :oh * wh, :ow * ww].reshape(b, oh, wh, ow, ww, c).mean(axis=(2, 4))


def cast_floating(tree: Any, dtype: Any) -> Any:
  """`tree` with every floating-point leaf cast to `dtype` (integer/bool leaves untouched)."""
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


def init_variables(model: nn.Module, rngs: Any, x: Array, *args: Any, **kwargs: Any) -> Any:
  """`model.init(rngs, x, ...)` with its floating variables in the precision of `x` when that is
  above float32 (float64 under `jax_enable_x64`; float32/half inputs: exactly `model.init`).

  Why: flax layers create float32 params (`param_dtype`) and float32 BN statistics whatever the
  input, so a float64 input alone gives float32 gradients and statistics whose dtype changes at
  the first update. The values are the float32 init's, cast (same draws in both precisions).
  """
  variables = model.init(rngs, x, *args, **kwargs)
  x_dtype = jnp.result_type(x)
  if not jnp.issubdtype(x_dtype, jnp.floating):
    return variables
  dtype = jnp.promote_types(jnp.float32, x_dtype)
  return variables if dtype == jnp.float32 else cast_floating(variables, dtype)


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(math.prod(getattr(leaf, "shape", ())) for leaf in jax.tree_util.tree_leaves(tree)))


def torch_linear_init(fan_in: int):
  """PyTorch nn.Linear default init as (kernel_init, bias_init): both U(-1/sqrt(fan_in), +)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init, init
