"""Feature-matching losses, meta-networks and pair parsing on tiny maps."""

from __future__ import annotations

import functools
import math

import chex
import flax.linen as nn
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from tl_jax.errors import ConfigError
from tl_jax.kt import matching
from tl_jax.kt.meta_nets import MetaNetworks, WHICH_BIAS_INIT, count_meta_params, init_meta_params
from tl_jax.kt.pairs import all_to_all, feature_shapes, parse_pairs
from tl_jax.kt.resize import interpolation_matrix

SRC_SHAPES = {"a": (8, 8, 4), "b": (4, 4, 6)}
TGT_SHAPES = {"t0": (8, 8, 3), "t1": (4, 4, 5), "t2": (2, 2, 5)}
B = 3


def _pairs(spec="all"):
  return parse_pairs(spec, SRC_SHAPES, TGT_SHAPES)


def _feats(shapes, seed):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.standard_normal((B, *s)).astype(np.float32)) for k, s in shapes.items()}


def _perturb(tree, seed, scale=0.3):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)])


def _setup(which, seed=0):
  pairs = _pairs("0-0,0-2,1-1,1-0")  # same size, 8->2 down, 4->8 up; both source layers
  src, tgt = _feats(SRC_SHAPES, seed), _feats(TGT_SHAPES, seed + 1)
  reg = matching.init_regressors(pairs, jax.random.PRNGKey(seed))
  resized = matching.resize_sources(pairs, src)
  pooled = matching.pooled_sources(src)
  phi = init_meta_params(pairs, which, jax.random.PRNGKey(seed + 7))
  return pairs, src, tgt, reg, resized, pooled, phi


@functools.partial(jax.jit, static_argnums=(0, 5))
def _loss(pairs, reg, tgt, resized, meta_out, beta=0.5):
  return matching.matching_loss(pairs, reg, tgt, resized, meta_out, beta, matching.full_gamma(pairs, meta_out))


# ------------------------------------------------------------------ pairs
def test_parse_pairs_indices_names_and_all():
  p = parse_pairs("1-0, a-t2", SRC_SHAPES, TGT_SHAPES)
  assert [(q.source, q.target) for q in p] == [("b", "t0"), ("a", "t2")]
  assert p[0].source_channels == 6 and p[0].target_channels == 3 and p[0].target_hw == (8, 8)
  assert p[0].source_hw == (4, 4)
  assert len(_pairs()) == 6
  assert all_to_all([4, 9, 14], range(5)).split(",")[:2] == ["4-0", "4-1"]
  assert len(all_to_all([4, 9, 14], range(5)).split(",")) == 15
  # names containing '-' resolve
  p2 = parse_pairs(["x-y-t1"], {"x-y": (2, 2, 1)}, TGT_SHAPES)
  assert (p2[0].source, p2[0].target) == ("x-y", "t1")


@pytest.mark.parametrize("bad", ["2-0", "0-3", "a-zz", "0", "0-0,0-0", ""])
def test_parse_pairs_rejects_unknown(bad):
  with pytest.raises(ConfigError) as e:
    parse_pairs(bad, SRC_SHAPES, TGT_SHAPES)
  assert "kt.pairs" in str(e.value)
  if bad in ("2-0", "a-zz"):
    assert "allowed" in str(e.value)  # names the allowed indices/names


def test_feature_shapes_via_eval_shape():
  class M(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      f = nn.Conv(4, (3, 3), strides=2)(x)
      return jnp.mean(f, (1, 2)), {"f": f}
  m = M()
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  assert feature_shapes(m, v, (8, 8, 3)) == {"f": (4, 4, 4)}


# ------------------------------------------------------------------ regressors / loss formula
def test_regressor_is_1x1_conv_with_torch_default_init():
  pairs = _pairs("1-0")
  reg = matching.init_regressors(pairs, jax.random.PRNGKey(3))
  k, b = reg[pairs[0].key]["kernel"], reg[pairs[0].key]["bias"]
  assert k.shape == (3, 6) and b.shape == (6,)
  bound = 1 / math.sqrt(3)
  assert float(jnp.max(jnp.abs(k))) <= bound and float(jnp.max(jnp.abs(b))) <= bound
  assert float(jnp.std(b)) > 0  # bias not zero-initialised (PyTorch Conv2d default)
  t = _feats(TGT_SHAPES, 4)
  out = matching.Regressors(pairs).apply({"params": reg}, t)[pairs[0].key]
  conv = jax.lax.conv_general_dilated(t["t0"], k.reshape(1, 1, 3, 6), (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=jax.lax.Precision.HIGHEST) + b
  chex.assert_trees_all_close(out, conv, rtol=1e-5, atol=1e-6)


def _np_resize(x, hw):
  """NumPy bilinear resize with the (torch-checked) separable interpolation matrices."""
  mh, mw = interpolation_matrix(x.shape[1], hw[0]), interpolation_matrix(x.shape[2], hw[1])
  return np.einsum("oh,pw,bhwc->bopc", mh, mw, x)


def test_wfm_loss_matches_explicit_reductions():
  pairs, src, tgt, reg, resized, pooled, phi = _setup(which=True)
  phi = _perturb(phi, 11)
  out = MetaNetworks(pairs, which=True).apply({"params": phi}, pooled)
  got = float(_loss(pairs, reg, tgt, resized, out, beta=0.5))
  total = 0.0
  for p in pairs:
    s_hat = _np_resize(np.asarray(src[p.source], np.float64), p.target_hw)
    kr = np.asarray(reg[p.key]["kernel"], np.float64); br = np.asarray(reg[p.key]["bias"], np.float64)
    r = np.einsum("bhwt,ts->bhws", np.asarray(tgt[p.target], np.float64), kr) + br
    gamma = _np_resize(np.asarray(out[p.key]["gamma"], np.float64), p.target_hw)
    H, W = p.target_hw
    w = np.asarray(out[p.key]["w"], np.float64); lam = np.asarray(out[p.key]["lam"], np.float64)
    for b in range(B):
      acc = 0.0
      for c in range(p.source_channels):
        d = np.sum(gamma[b, :, :, c] * (s_hat[b, :, :, c] - r[b, :, :, c]) ** 2) / (H * W)  # Eq. 7
        acc += w[b, c] * d
      total += lam[b] * acc / B
  np.testing.assert_allclose(got, 0.5 * total, rtol=2e-5)


def test_ufm_equals_l2t_ww_with_uniform_what_and_unit_where():
  pairs, src, tgt, reg, resized, pooled, phi = _setup(which=False)
  phi = _perturb(phi, 5)
  # what: zero Dense -> softmax uniform; where: zero kernel, bias 1 -> relu6(1) = 1.
  for name in phi:
    if name.startswith("what_"):
      phi[name] = jax.tree_util.tree_map(jnp.zeros_like, phi[name])
    else:
      fc = phi[name]["fc"]
      phi[name] = {"fc": {"kernel": jnp.zeros_like(fc["kernel"]), "bias": jnp.ones_like(fc["bias"])}}
  ww = MetaNetworks(pairs).apply({"params": phi}, pooled)
  ufm = matching.uniform_meta(pairs, B)
  chex.assert_trees_all_close(ww, ufm, rtol=1e-6, atol=0)
  chex.assert_trees_all_close(_loss(pairs, reg, tgt, resized, ww), _loss(pairs, reg, tgt, resized, ufm),
                              rtol=1e-6)
  # non-vacuous: a perturbed φ gives a different loss
  other = MetaNetworks(pairs).apply({"params": _perturb(phi, 6)}, pooled)
  assert abs(float(_loss(pairs, reg, tgt, resized, other)) - float(_loss(pairs, reg, tgt, resized, ufm))) > 1e-3


def test_l2t_www_with_unit_which_equals_l2t_ww():
  pairs, src, tgt, reg, resized, pooled, phi_www = _setup(which=True)
  phi_ww = _perturb({k: v for k, v in phi_www.items() if not k.startswith("which_")}, 9)
  phi_www = dict(phi_www, **phi_ww)  # 'which' nets at init: h ≡ 1
  out_www = MetaNetworks(pairs, which=True).apply({"params": phi_www}, pooled)
  out_ww = MetaNetworks(pairs).apply({"params": phi_ww}, pooled)
  for p in pairs:
    chex.assert_trees_all_close(out_www[p.key]["gamma"], jnp.ones((B, 3, 3, p.source_channels)), rtol=1e-6)
  l_www = _loss(pairs, reg, tgt, resized, out_www)
  l_ww = _loss(pairs, reg, tgt, resized, out_ww)
  chex.assert_trees_all_close(l_www, l_ww, rtol=1e-6)
  # and a non-unit h changes it
  out_h = MetaNetworks(pairs, which=True).apply({"params": _perturb(phi_www, 10)}, pooled)
  g = out_h[pairs[0].key]["gamma"]
  assert float(jnp.min(g)) > 0 and float(jnp.std(g)) > 1e-2
  assert abs(float(_loss(pairs, reg, tgt, resized, out_h)) - float(l_ww)) > 1e-3


# ------------------------------------------------------------------ meta-nets
def test_meta_net_init_values():
  pairs, src, tgt, reg, resized, pooled, phi = _setup(which=True)
  out = MetaNetworks(pairs, which=True).apply({"params": phi}, pooled)
  for p in pairs:
    C = p.source_channels
    chex.assert_trees_all_close(out[p.key]["w"], jnp.full((B, C), 1 / C), rtol=1e-6)
    where = phi[f"where_{p.key}"]["fc"]
    np.testing.assert_array_equal(np.asarray(where["bias"]), [1.0])
    assert float(jnp.max(jnp.abs(where["kernel"]))) <= 1 / math.sqrt(C)
    assert float(jnp.std(where["kernel"])) > 0
    lam_expect = jnp.clip(pooled[p.source] @ where["kernel"][:, 0] + 1.0, 0, 6)
    chex.assert_trees_all_close(out[p.key]["lam"], lam_expect, rtol=1e-5)
  np.testing.assert_allclose(float(jax.nn.softplus(WHICH_BIAS_INIT)), 1.0, rtol=1e-7)


def test_meta_param_counts_resnet32_to_vgg9():
  src = {f"block{i}": ((32, 16, 8)[i // 5],) * 2 + ((16, 32, 64)[i // 5],) for i in range(15)}
  tgt = {f"pool{i}": ((32, 16, 8, 4, 2)[i],) * 2 + ((64, 128, 256, 512, 512)[i],) for i in range(5)}
  pairs = parse_pairs(all_to_all([4, 9, 14], range(5)), src, tgt)
  assert len(pairs) == 15
  shapes = jax.eval_shape(lambda k: init_meta_params(pairs, True, k), jax.random.PRNGKey(0))
  counts = count_meta_params(shapes)
  assert counts["what"] == 27_440
  assert counts["where"] == 575
  assert counts["which"] == 5 * sum(c * (9 * c + 9) for c in (16, 32, 64))
  ww = count_meta_params(jax.eval_shape(lambda k: init_meta_params(pairs, False, k), jax.random.PRNGKey(0)))
  assert ww == {"what": 27_440, "where": 575, "which": 0, "total": 28_015}
  reg = jax.eval_shape(lambda k: matching.init_regressors(pairs, k), jax.random.PRNGKey(0))
  assert matching.count_params(reg) == sum(t * s + s for s in (16, 32, 64) for t in (64, 128, 256, 512, 512))


def test_loss_gradient_reaches_all_meta_nets():
  pairs, src, tgt, reg, resized, pooled, phi = _setup(which=True)
  net = MetaNetworks(pairs, which=True)
  g = jax.jit(jax.grad(lambda ph: _loss(pairs, reg, tgt, resized, net.apply({"params": ph}, pooled))))(phi)
  for name, sub in g.items():
    assert float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(sub))) > 0, name


def test_padding_mask_keeps_padded_samples_out_of_the_means():
  from tl_jax.kt.bilevel import softmax_ce
  pairs, src, tgt, reg, resized, pooled, phi = _setup(which=True)
  out = MetaNetworks(pairs, which=True).apply({"params": _perturb(phi, 3)}, pooled)
  gam = matching.full_gamma(pairs, out)
  mask = jnp.array([1.0, 1.0, 0.0])
  first2 = lambda t: jax.tree_util.tree_map(lambda a: a[:2], t)  # noqa: E731
  masked = matching.matching_loss(pairs, reg, tgt, resized, out, 0.5, gam, mask)
  ref = matching.matching_loss(pairs, reg, first2(tgt), first2(resized), first2(out), 0.5, first2(gam))
  chex.assert_trees_all_close(masked, ref, rtol=1e-6)
  logits = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)), jnp.float32)
  labels = jnp.array([0, 3, 99])  # padding may carry a garbage label
  chex.assert_trees_all_close(softmax_ce(logits, labels, mask), softmax_ce(logits[:2], labels[:2]), rtol=1e-6)
