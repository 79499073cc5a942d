"""Shared building blocks: a Conv that dodges the XLA:CPU small-map trap, BatchNorm, inits.

Why `Conv` exists: on XLA:CPU a 3x3 convolution on a feature map of 2x2 or smaller takes ~1 s
instead of ~10 ms (see shared/docs/environment.md); so does a stride-2 conv producing such a map.
For those (output H*W <= `small_map_pixels`, default 4) `Conv` computes the very same
convolution as im2col + matmul. Both paths read the same parameters, named and shaped exactly like
`flax.linen.Conv` ('kernel' HWIO = (kh, kw, cin // groups, features), 'bias' (features,)), so
weights move freely between `Conv` and `nn.Conv` and between the two paths. The choice is made
from static shapes at trace time, so it costs nothing under jit.

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
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
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


class Conv(nn.Module):
  """2-D convolution with `nn.Conv`'s parameter layout and an im2col path for tiny maps.

  `small_map_pixels`: outputs with H*W at or below it use im2col + matmul (0 disables it;
  `force_im2col=True` always uses it, for tests). `padding` is 'SAME' (TF rule), 'VALID', an int,
  or explicit ((lo, hi), (lo, hi)). `param_dtype` / `dtype` as in `nn.Conv`: parameters are
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
    out_hw = [(size + lo + hi - k) // s + 1
              for size, (lo, hi), k, s in zip(x.shape[1:3], pads, kernel_size, strides)]
    small = self.small_map_pixels > 0 and out_hw[0] * out_hw[1] <= self.small_map_pixels
    fn = conv_im2col if (self.force_im2col or small) else conv_lax
    y = fn(x, kernel, strides, pads, self.feature_group_count)
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_slices(x: Array, window: tuple[int, int], strides: tuple[int, int]) -> Array:
  out = None
  for _, _, idx in _window_slices(x, window, strides):
    out = x[idx] if out is None else jnp.maximum(out, x[idx])
  return out


def _max_pool_fwd(x, window, strides):
  out = _max_pool_slices(x, window, strides)
  return out, (x, out)


def _max_pool_bwd(window, strides, res, g):
  # like XLA's select-and-scatter: each window's gradient goes to its first maximum
  x, out = res
  dx = jnp.zeros_like(x)
  taken = jnp.zeros(out.shape, bool)
  for _, _, idx in _window_slices(x, window, strides):
    hit = (x[idx] == out) & ~taken
    taken = taken | hit
    dx = dx.at[idx].add(jnp.where(hit, g, 0.0))
  return (dx,)


_max_pool_slices.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: Array, window: Sequence[int], strides: Sequence[int]) -> Array:
  """`nn.max_pool(x, window, strides)` ('VALID'). float64 inputs take a max over strided slices
  instead, with the same gradient (each window's to its first maximum): XLA's reduce_window max
  gradient pads with a float32 value when x64 is enabled inside a jit traced without it (the
  float64 meta-gradient, `kt.meta_dtype`), which fails to lower."""
  if x.dtype != jnp.float64:
    return nn.max_pool(x, tuple(window), tuple(strides))
  return _max_pool_slices(x, tuple(window), tuple(strides))


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
