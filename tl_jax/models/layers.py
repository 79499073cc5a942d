"""Shared building blocks: a Conv that dodges the XLA:CPU small-map trap, BN defaults, inits.

Why `Conv` exists: on XLA:CPU a 3x3 convolution on a feature map of 2x2 or smaller takes ~1 s
instead of ~10 ms (see shared/docs/environment.md); so does a stride-2 conv producing such a map.
For those (output H*W <= `small_map_pixels`, default 4) `Conv` computes the very same
convolution as im2col + matmul. Both paths read the same parameters, named and shaped exactly like
`flax.linen.Conv` ('kernel' HWIO = (kh, kw, cin // groups, features), 'bias' (features,)), so
weights move freely between `Conv` and `nn.Conv` and between the two paths. The choice is made
from static shapes at trace time, so it costs nothing under jit.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from tl_jax.errors import ConfigError

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
  or explicit ((lo, hi), (lo, hi)).
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
                        kernel_size + (cin // self.feature_group_count, self.features))
    pads = explicit_padding(self.padding, x.shape[1:3], kernel_size, strides)
    out_hw = [(size + lo + hi - k) // s + 1
              for size, (lo, hi), k, s in zip(x.shape[1:3], pads, kernel_size, strides)]
    small = self.small_map_pixels > 0 and out_hw[0] * out_hw[1] <= self.small_map_pixels
    fn = conv_im2col if (self.force_im2col or small) else conv_lax
    y = fn(x, kernel, strides, pads, self.feature_group_count)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


_BN_FROZEN = contextvars.ContextVar("tl_jax_bn_frozen", default=False)


@contextlib.contextmanager
def frozen_batch_norm(frozen: bool = True) -> Iterator[None]:
  """Within this context (at trace time), every tl_jax BatchNorm runs in inference mode — running
  statistics used and left unchanged — even under `train=True`, while dropout keeps following
  `train`. This is `transfer.bn='frozen'`: frozen BN statistics without switching dropout off."""
  token = _BN_FROZEN.set(bool(frozen))
  try:
    yield
  finally:
    _BN_FROZEN.reset(token)


def bn_inference(train: bool) -> bool:
  """`use_running_average` for a BatchNorm built under `train` (see `frozen_batch_norm`)."""
  return (not train) or _BN_FROZEN.get()


def batch_norm(train: bool, name: str, momentum: float = 0.9,
               epsilon: float = 1e-5) -> nn.BatchNorm:
  """BatchNorm with PyTorch defaults (torch momentum 0.1 == flax momentum 0.9, eps 1e-5)."""
  return nn.BatchNorm(use_running_average=bn_inference(train), momentum=momentum,
                      epsilon=epsilon, name=name)


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(math.prod(getattr(leaf, "shape", ())) for leaf in jax.tree_util.tree_leaves(tree)))


def torch_linear_init(fan_in: int):
  """PyTorch nn.Linear default init as (kernel_init, bias_init): both U(-1/sqrt(fan_in), +)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init, init
