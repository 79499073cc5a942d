"""Feature matching losses: UFM (FitNets-style), L2T-ww (what + where) and L2T-www (+ which).

Per pair (m, n), with Ŝ the source map m bilinearly resized to target map n's size (half-pixel,
no antialias) and R_mn a 1x1 conv (with bias) from C_t(n) to C_s(m) channels applied to the target:

  d_{b,c}   = (1/HW) Σ_{i,j} γ_{b,c,i,j} (Ŝ_{b,i,j,c} - R(T_b)_{i,j,c})²   (γ ≡ 1 except L2T-www)
  L_wfm     = β Σ_pairs (1/B) Σ_b λ_b Σ_c w_{b,c} d_{b,c}

Reductions follow the reference code (spatial mean, channel weighted sum with Σ_c w = 1, per-sample
λ, batch mean, sum over pairs, β only on the matching term). For L2T-www the thesis' Eq. 7 keeps the
plain 1/(HW) factor in front of the γ-weighted pixel sum, i.e. γ is *not* renormalised over pixels;
we follow it. Since γ ≡ 1 at init (see meta_nets) the loss scale starts identical to L2T-ww.
UFM = uniform channel weights 1/C_s and λ = 1 for every pair.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.kt.meta_nets import resize_which, torch_linear_uniform
from tl_jax.kt.pairs import PairSpec
from tl_jax.kt.resize import resize_bilinear


class Regressors(nn.Module):
  """1x1 conv (with bias) per pair, target C_t -> source C_s channels; part of θ, not φ.

  Stored as Dense on the channel axis (kernel (C_t, C_s) == a (1, 1, C_t, C_s) conv kernel),
  which avoids XLA:CPU's slow small-map convolution path. Init = PyTorch Conv2d default
  (weight and bias U(±1/sqrt(C_t))), as the reference's `nn.Conv2d(C_t, C_s, 1)`.
  """
  pairs: Sequence[PairSpec]

  @nn.compact
  def __call__(self, target_feats: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    out = {}
    for p in self.pairs:
      init = torch_linear_uniform(p.target_channels)
      out[p.key] = nn.Dense(p.source_channels, kernel_init=init, bias_init=init,
                            precision=jax.lax.Precision.HIGHEST, name=p.key)(target_feats[p.target])
    return out


def init_regressors(pairs: Sequence[PairSpec], key: jax.Array) -> Any:
  feats = {p.target: jnp.zeros((1, 1, 1, p.target_channels), jnp.float32) for p in pairs}
  return Regressors(tuple(pairs)).init(key, feats)["params"]


def resize_sources(pairs: Sequence[PairSpec], source_feats: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Ŝ per pair: the source map resized to the target map's (H, W). Constant w.r.t. θ and φ,
  so the bilevel step computes it once per iteration."""
  return {p.key: resize_bilinear(jax.lax.stop_gradient(source_feats[p.source]), p.target_hw)
          for p in pairs}


def pooled_sources(source_feats: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Global average pool of each source map (the meta-networks' input), no gradient. Vector
  features (e.g. LeNet's fc1) are never paired (parse_pairs needs maps) and are skipped."""
  return {k: jnp.mean(jax.lax.stop_gradient(v), axis=(1, 2)) for k, v in source_feats.items()
          if v.ndim == 4}


def squared_differences(pairs: Sequence[PairSpec], regressor_params: Any,
                        target_feats: Mapping[str, jax.Array],
                        resized_sources: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-pair (Ŝ - R(T))² maps, (B, H_n, W_n, C_s)."""
  mapped = Regressors(tuple(pairs)).apply({"params": regressor_params}, target_feats)
  return {p.key: jnp.square(resized_sources[p.key] - mapped[p.key]) for p in pairs}


def full_gamma(pairs: Sequence[PairSpec], meta_out: Mapping[str, Mapping[str, jax.Array]]
               ) -> dict[str, jax.Array | None]:
  """γ per pair resized to the pair's map size (B, H, W, C_s), or None where there is no 'which'."""
  out = {}
  for p in pairs:
    g = meta_out[p.key].get("gamma")
    out[p.key] = None if g is None else resize_which(g, p.target_hw)
  return out


def channel_distances(sq: jax.Array, gamma: jax.Array | None = None) -> jax.Array:
  """d_{b,c} = (1/HW) Σ_ij γ · sq; plain spatial mean when γ is None (Eq. 4 vs Eq. 7)."""
  if gamma is not None:
    sq = sq * gamma
  return jnp.mean(sq, axis=(1, 2))


def uniform_meta(pairs: Sequence[PairSpec], batch: int, dtype=jnp.float32) -> dict[str, dict[str, jax.Array]]:
  """UFM weights: w = 1/C_s for every channel, λ = 1 for every pair and sample."""
  return {p.key: {"w": jnp.full((batch, p.source_channels), 1.0 / p.source_channels, dtype),
                  "lam": jnp.ones((batch,), dtype)} for p in pairs}


def batch_mean(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean over the batch; with a 0/1 `mask` (padded last batch) only real samples count."""
  if mask is None:
    return jnp.mean(x)
  mask = mask.astype(x.dtype)
  return jnp.sum(jnp.where(mask > 0, x, 0.0) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def weighted_matching_loss(pairs: Sequence[PairSpec], sq: Mapping[str, jax.Array],
                           meta_out: Mapping[str, Mapping[str, jax.Array]], beta: float,
                           gammas: Mapping[str, jax.Array | None] | None = None,
                           mask: jax.Array | None = None) -> jax.Array:
  """L_wfm = β Σ_pairs mean_b λ_b Σ_c w_bc d_bc (see module docstring)."""
  total = 0.0
  for p in pairs:
    g = None if gammas is None else gammas.get(p.key)
    d = channel_distances(sq[p.key], g)  # (B, C)
    o = meta_out[p.key]
    per_sample = o["lam"] * jnp.sum(o["w"] * d, axis=-1)  # (B,)
    total = total + batch_mean(per_sample, mask)
  return beta * total


def matching_loss(pairs: Sequence[PairSpec], regressor_params: Any,
                  target_feats: Mapping[str, jax.Array], resized_sources: Mapping[str, jax.Array],
                  meta_out: Mapping[str, Mapping[str, jax.Array]], beta: float,
                  gammas: Mapping[str, jax.Array | None] | None = None,
                  mask: jax.Array | None = None) -> jax.Array:
  """Regress, square, weight, reduce: the whole L_wfm from target features and meta outputs."""
  sq = squared_differences(pairs, regressor_params, target_feats, resized_sources)
  return weighted_matching_loss(pairs, sq, meta_out, beta, gammas, mask)


def count_params(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))
