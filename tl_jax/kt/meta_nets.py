"""Meta-networks φ of L2T-ww ('what', 'where') and L2T-www ('which'), one set per layer pair.

All three read the per-sample globally average-pooled source map S^m (a C_s vector; the source is
frozen, so the input carries no gradient) and are single Dense layers, as in the reference code and
thesis §5.3.

- what  f: Dense(C_s -> C_s), kernel and bias zero-initialised, softmax over channels -> w_{b,c}
  (sums to 1; uniform 1/C_s at init).
- where g: Dense(C_s -> 1), bias 1.0, kernel PyTorch-default uniform(±1/sqrt(C_s)), relu6 -> λ_b.
  (The thesis' §5.3 text swaps the activations of f and g; its Eq. 4 requires Σ_c w_c = 1, so
  softmax belongs to 'what', as in the reference code.)
- which h (L2T-www, thesis §4.1.1 / §5.3 / Eq. 7): for every source channel c one Dense(-> 9)
  + softplus, unflattened row-major to a 3x3 matrix and bilinearly resized (half-pixel, no
  antialias) to the pair's map size -> γ_{b,c,i,j} > 0.
  Its input (`which_input`) is a reading of the thesis, which says only that h "receives the
  activation maps", the words it also uses for f and g:
    'pooled' - the pooled S^m (C_s numbers), like f and g; the C_s nets are one
               DenseGeneral(C_s -> (C_s, 9)): C_s (9 C_s + 9) numbers, 246,960 for the 15
               ResNet-32 -> VGG-9 pairs. γ cannot see where in the image the activations are.
    'map'    - channel c's own map S^m_{:,:,c} flattened (H_s W_s numbers): kernel (C_s, H_s W_s, 9),
               bias (C_s, 9): 1,295,280 numbers for the 15 pairs. γ can follow the activations.
  Init (`which_init`; the thesis is silent):
    'identity' - kernel 0 and bias log(e - 1), so softplus gives γ ≡ 1 exactly: L2T-www starts as
                 L2T-ww and the extra net moves away only when the meta-gradient says so (mirrors
                 the zero-init of 'what'). γ's gradient is not zero there: the kernel gradient is
                 (input ⊗ upstream) through softplus' = 1 - 1/e.
    'torch'    - PyTorch's nn.Linear default, kernel and bias U(±1/sqrt(fan_in)) (what a PyTorch
                 implementation gets when it does not choose): γ starts around softplus(0) = 0.69
                 with per-channel noise.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.errors import check_choice
from tl_jax.kt.pairs import PairSpec
from tl_jax.kt.resize import resize_bilinear

WHICH_GRID = 3
WHICH_BIAS_INIT = math.log(math.e - 1.0)  # softplus(x) == 1


def torch_linear_uniform(fan_in: int):
  """PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class WhatNet(nn.Module):
  """Channel weights w (B, C), softmax over channels."""
  channels: int

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    z = nn.Dense(self.channels, kernel_init=nn.initializers.zeros,
                 bias_init=nn.initializers.zeros, name="fc")(pooled)
    return jax.nn.softmax(z, axis=-1)


class WhereNet(nn.Module):
  """Pair weight λ (B,), relu6 of a Dense with bias 1.0 (reference `--loss-weight-init 1.0`)."""
  channels: int
  bias_init_value: float = 1.0

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    z = nn.Dense(1, kernel_init=torch_linear_uniform(self.channels),
                 bias_init=nn.initializers.constant(self.bias_init_value), name="fc")(pooled)
    return jax.nn.relu6(z[..., 0])


WHICH_INPUTS = ("pooled", "map")
WHICH_INITS = ("identity", "torch")


class ChannelDense(nn.Module):
  """One Dense(P -> K) per channel: (B, P, C) -> (B, C, K), kernel (C, P, K), bias (C, K)."""
  features: int
  kernel_init: Any
  bias_init: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, p, c = x.shape
    kernel = self.param("kernel", self.kernel_init, (c, p, self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (c, self.features), jnp.float32)
    return jnp.einsum("bpc,cpk->bck", x, kernel, precision=jax.lax.Precision.HIGHEST) + bias


def _which_inits(which_init: str, fan_in: int):
  if which_init == "torch":
    return torch_linear_uniform(fan_in), torch_linear_uniform(fan_in)
  return nn.initializers.zeros, nn.initializers.constant(WHICH_BIAS_INIT)


class WhichNet(nn.Module):
  """Per-channel 3x3 pixel-weight grid γ (B, 3, 3, C) > 0, before resizing to the map size.
  Input: the pooled source (B, C) for which_input='pooled', the source map (B, H, W, C) for
  'map' (module docstring)."""
  channels: int
  which_input: str = "pooled"
  which_init: str = "identity"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k9 = WHICH_GRID * WHICH_GRID
    if self.which_input == "pooled":
      k_init, b_init = _which_inits(self.which_init, x.shape[-1])
      z = nn.DenseGeneral((self.channels, k9), kernel_init=k_init, bias_init=b_init,
                          name="fc")(x)
    else:
      b, h, w, c = x.shape
      k_init, b_init = _which_inits(self.which_init, h * w)
      z = ChannelDense(k9, k_init, b_init, name="fc")(x.reshape(b, h * w, c))
    g = jax.nn.softplus(z)  # (B, C, 9)
    g = g.reshape(*g.shape[:-1], WHICH_GRID, WHICH_GRID)  # row-major unflatten -> (B, C, 3, 3)
    return jnp.moveaxis(g, -3, -1)  # (B, 3, 3, C), NHWC like the feature maps


def resize_which(grid: jax.Array, hw: Sequence[int]) -> jax.Array:
  """Bilinearly resizes a (B, 3, 3, C) γ grid to the pair's (H, W) (thesis Fig. 33)."""
  return resize_bilinear(grid, hw)


class MetaNetworks(nn.Module):
  """All meta-nets for `pairs`; `which=True` adds the L2T-www 'which' nets.

  Input: {source feature name: pooled source map (B, C_s)} and, for which_input='map', `maps`
  {source feature name: source map (B, H, W, C_s)}. Output: {pair.key: {'w': (B, C_s),
  'lam': (B,), and with which=True 'gamma': (B, 3, 3, C_s)}}. Param tree:
  {'what_<pair.key>': ..., 'where_<pair.key>': ..., 'which_<pair.key>': ...}.
  """
  pairs: Sequence[PairSpec]
  which: bool = False
  which_input: str = "pooled"
  which_init: str = "identity"

  @nn.compact
  def __call__(self, pooled: Mapping[str, jax.Array],
               maps: Mapping[str, jax.Array] | None = None) -> dict[str, dict[str, jax.Array]]:
    out = {}
    for p in self.pairs:
      x = pooled[p.source]
      o = {"w": WhatNet(p.source_channels, name=f"what_{p.key}")(x),
           "lam": WhereNet(p.source_channels, name=f"where_{p.key}")(x)}
      if self.which:
        h_in = x
        if self.which_input == "map":
          if maps is None:
            raise ValueError("which_input='map' needs the source maps (maps=...)")
          h_in = maps[p.source]
        o["gamma"] = WhichNet(p.source_channels, self.which_input, self.which_init,
                              name=f"which_{p.key}")(h_in)
      out[p.key] = o
    return out


def init_meta_params(pairs: Sequence[PairSpec], which: bool, key: jax.Array,
                     which_input: str = "pooled", which_init: str = "identity") -> Any:
  """Initial φ for `pairs` (inputs are zeros of the right shapes; shapes only matter)."""
  check_choice("kt.which_input", which_input, WHICH_INPUTS)
  check_choice("kt.which_init", which_init, WHICH_INITS)
  pooled = {p.source: jnp.zeros((1, p.source_channels), jnp.float32) for p in pairs}
  maps = {p.source: jnp.zeros((1, *p.source_hw, p.source_channels), jnp.float32) for p in pairs}
  net = MetaNetworks(tuple(pairs), which=which, which_input=which_input, which_init=which_init)
  return net.init(key, pooled, maps)["params"]


def count_meta_params(meta_params: Any) -> dict[str, int]:
  """{'what': n, 'where': n, 'which': n, 'total': n} from a φ tree (arrays or ShapeDtypeStructs)."""
  counts = {"what": 0, "where": 0, "which": 0}
  for name, sub in meta_params.items():
    kind = name.split("_", 1)[0]
    counts[kind] += sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(sub))
  counts["total"] = sum(counts.values())
  return counts
