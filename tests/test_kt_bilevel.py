"""The jitted KT iteration: exact meta-gradient, rollback, optimizer equivalence, method switch."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

from tl_jax.errors import ConfigError
from tl_jax.kt import KTConfig, KnowledgeTransfer, cosine_per_epoch, parse_pairs, sgd_momentum_step
from tl_jax.kt.pairs import feature_shapes

HW, B, NC = 8, 2, 3


class TinySource(nn.Module):
  """Frozen 'source': two conv maps, BN (eval mode is what the KT code must use)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    b = nn.relu(nn.Conv(6, (3, 3), strides=2)(a))
    return nn.Dense(5)(jnp.mean(b, (1, 2))), {"a": a, "b": b}


class TinyTarget(nn.Module):
  """Target with BN (train-mode statistics in the look-ahead) and smooth activations (finite
  differences stay away from kinks). Feature maps at 8x8, 4x4 and 2x2."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    t0 = nn.swish(nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Conv(3, (3, 3))(x)))
    t1 = nn.swish(nn.Conv(5, (3, 3))(nn.avg_pool(t0, (2, 2), (2, 2))))
    t2 = nn.avg_pool(t1, (2, 2), (2, 2))
    return nn.Dense(NC)(jnp.mean(t2, (1, 2))), {"t0": t0, "t1": t1, "t2": t2}


@functools.lru_cache(maxsize=None)
def _build(method, dtype, pairs, cfg_items):
  """One KnowledgeTransfer per config, shared by the tests so each jit compiles once."""
  src_m, tgt_m = TinySource(), TinyTarget()
  x0 = jnp.zeros((1, HW, HW, 3), dtype)
  sv = src_m.init(jax.random.PRNGKey(0), x0)
  tv = tgt_m.init(jax.random.PRNGKey(1), x0)
  pairs = parse_pairs(pairs, feature_shapes(src_m, sv, (HW, HW, 3)), feature_shapes(tgt_m, tv, (HW, HW, 3)))
  return KnowledgeTransfer(src_m, tgt_m, pairs, KTConfig(method=method, **dict(cfg_items)),
                           lr_schedule=cosine_per_epoch(0.1, 5, 10))


def _setup(method, dtype=jnp.float32, pairs="0-2,1-0", seed=0, **cfg):
  """Pairs: 8x8 -> 2x2 (downsample) and 4x4 -> 8x8 (upsample), both through the resize."""
  kt = _build(method, dtype, pairs, tuple(sorted(cfg.items())))
  x0 = jnp.zeros((1, HW, HW, 3), dtype)
  sv = kt.source_model.init(jax.random.PRNGKey(seed), x0)
  tv = kt.target_model.init(jax.random.PRNGKey(seed + 1), x0)
  # a "pretrained" source: non-trivial BN running stats
  sv = {"params": sv["params"], "batch_stats": jax.tree_util.tree_map(lambda a: a + 0.1, sv["batch_stats"])}
  state = kt.init(jax.random.PRNGKey(seed + 2), tv, sv)
  state = jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
  rng = np.random.default_rng(seed)
  batch = {"image": jnp.asarray(rng.standard_normal((B, HW, HW, 3)), dtype),
           "label": jnp.asarray(rng.integers(0, NC, B), jnp.int32)}
  return kt, state, batch


def _lookahead_inputs(kt, state, batch, key):
  """Meta-objective arguments taking θ_0, v_0 straight from `state` (no real step to compile)."""
  x, y, pooled, resized, lr, _, k_meta = jax.jit(kt.prepare)(state, batch, key)
  return state.theta, state.opt_state, state.batch_stats, x, y, pooled, resized, lr, k_meta


def _random_like(tree, seed, scale):
  leaves, tdef = jax.tree_util.tree_flatten(tree)
  ks = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
  return jax.tree_util.tree_unflatten(tdef, [scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, ks)])


def _add(a, b, s=1.0):
  return jax.tree_util.tree_map(lambda x, y: x + s * y, a, b)


@pytest.mark.parametrize("method", ["l2t_ww", "l2t_www"])
def test_meta_gradient_matches_central_finite_differences_float64(method):
  with jax.enable_x64(True):
    kt, state, batch = _setup(method, dtype=jnp.float64)
    key = jax.random.PRNGKey(3)
    # mid-training-like: non-zero momentum, φ away from init (softmax / relu6 / softplus generic)
    state = state.replace(opt_state=_random_like(state.opt_state, 1, 0.05))
    phi = _add(state.meta_params, _random_like(state.meta_params, 4, 0.2))
    args = _lookahead_inputs(kt, state, batch, key)
    vg = jax.jit(jax.value_and_grad(kt.meta_objective))
    _, g = vg(phi, *args)
    assert jax.tree_util.tree_leaves(g)[0].dtype == jnp.float64
    assert float(optax.tree.norm(g)) > 1e-8
    eps = 1e-5
    for i in range(3):
      u = _random_like(phi, 10 + i, 1.0)
      fd = float((vg(_add(phi, u, eps), *args)[0] - vg(_add(phi, u, -eps), *args)[0]) / (2 * eps))
      an = float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(u))))
      assert abs(fd - an) <= 1e-5 * max(abs(an), 1e-12), (i, fd, an)
    if method == "l2t_www":  # the 'which' nets get a non-zero meta-gradient of their own
      which = [v for k, v in g.items() if k.startswith("which_")]
      assert float(optax.tree.norm(which)) > 0


def test_first_order_meta_gradient_is_exactly_zero():
  """(The exact meta-gradient of the same setup is non-zero: checked in the FD test.)"""
  kt, state, batch = _setup("l2t_www", pairs="0-2", first_order=True, inner_steps=1)
  args = _lookahead_inputs(kt, state, batch, jax.random.PRNGKey(1))
  phi = _add(state.meta_params, _random_like(state.meta_params, 4, 0.2))
  loss, g1 = jax.jit(jax.value_and_grad(kt.meta_objective))(phi, *args)
  assert np.isfinite(float(loss)) and float(loss) > 0
  for leaf in jax.tree_util.tree_leaves(g1):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_sgd_momentum_step_equals_optax_chain():
  rng = np.random.default_rng(0)
  params = {"a": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), "b": jnp.asarray(rng.standard_normal(4), jnp.float32)}
  lrs = [0.1, 0.05, 0.02, 0.07]
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(lambda c: jnp.asarray(lrs)[c], momentum=0.9))
  opt_state = tx.init(params)
  p_ref, p_own, v = params, params, jax.tree_util.tree_map(jnp.zeros_like, params)
  for t, lr in enumerate(lrs):
    grads = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), params)
    upd, opt_state = tx.update(grads, opt_state, p_ref)
    p_ref = optax.apply_updates(p_ref, upd)
    p_own, v = sgd_momentum_step(p_own, v, grads, jnp.float32(lr), 0.9, 1e-4)
    chex.assert_trees_all_close(p_own, p_ref, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(v, opt_state[1][0].trace, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["l2t_ww", "l2t_www"])
def test_iteration_keeps_real_step_theta_and_updates_phi(method):
  kt, state, batch = _setup(method)
  key = jax.random.PRNGKey(5)

  @jax.jit
  def real_only(state):
    x, y, pooled, resized, lr, k_drop, _ = kt.prepare(state, batch, key)
    return kt.real_step(state, x, y, pooled, resized, lr, k_drop)

  theta0, v0, bs0, _ = real_only(state)
  phi_before = state.meta_params
  new, metrics = kt.l2t_iteration(jax.tree_util.tree_map(jnp.copy, state), batch, key)
  # bit-identical: the look-ahead is discarded, θ / v / BN stats are the real step's
  chex.assert_trees_all_equal(new.theta, theta0)
  chex.assert_trees_all_equal(new.opt_state, v0)
  chex.assert_trees_all_equal(new.batch_stats, bs0)
  chex.assert_trees_all_equal(new.source_variables, state.source_variables)
  assert int(new.step) == 1
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new.meta_params, phi_before)
  assert max(jax.tree_util.tree_leaves(diff)) > 0  # Adam moved φ
  assert max(jax.tree_util.tree_leaves(diff)) < 2e-4  # by about its LR, not more
  for k in ("loss", "ce", "wfm", "meta_loss", "accuracy", "lr", "lambda/a__t2"):
    assert np.isfinite(float(metrics[k])), k
  assert float(metrics["meta_loss"]) > 0
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics["ce"] + metrics["wfm"]), rtol=1e-6)


def test_methods_share_signature_and_differ_as_expected():
  key = jax.random.PRNGKey(2)
  thetas = {}
  for method in ("scratch", "ufm", "l2t_ww", "l2t_www"):
    kt, state, batch = _setup(method)
    s = state
    for _ in range(2):
      s, m = kt.l2t_iteration(s, batch, key)
    assert int(s.step) == 2 and set(m) >= {"loss", "ce", "wfm", "meta_loss", "accuracy"}
    thetas[method] = s.params
    if method == "scratch":
      assert s.regressors == {} and s.meta_params == {} and float(m["wfm"]) == 0.0
    if method == "ufm":
      assert s.meta_params == {} and float(m["wfm"]) > 0 and float(m["lambda/a__t2"]) == 1.0
  # L2T-www at init (h ≡ 1) takes the same first real step as L2T-ww (same seeds / φ what-where).
  kt_a, sa, batch = _setup("l2t_ww")
  kt_b, sb, _ = _setup("l2t_www")
  sb = sb.replace(meta_params={**sb.meta_params, **jax.tree_util.tree_map(jnp.copy, sa.meta_params)})
  sa1, ma = kt_a.l2t_iteration(sa, batch, key)
  sb1, mb = kt_b.l2t_iteration(sb, batch, key)
  chex.assert_trees_all_close(sa1.params, sb1.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(ma["meta_loss"]), float(mb["meta_loss"]), rtol=1e-5)
  # UFM and scratch take different steps (the matching term has a gradient)
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), thetas["ufm"], thetas["scratch"])
  assert max(jax.tree_util.tree_leaves(diff)) > 1e-5


def test_ufm_step_equals_l2t_ww_real_step_with_uniform_where_one():
  kt_u, su, batch = _setup("ufm")
  kt_w, sw, _ = _setup("l2t_ww")
  phi = {k: ({"fc": {"kernel": jnp.zeros_like(v["fc"]["kernel"]), "bias": jnp.ones_like(v["fc"]["bias"])}}
             if k.startswith("where_") else v) for k, v in sw.meta_params.items()}
  sw = sw.replace(meta_params=phi)
  key = jax.random.PRNGKey(8)
  su1, mu = kt_u.l2t_iteration(su, batch, key)
  sw1, mw = kt_w.l2t_iteration(sw, batch, key)
  chex.assert_trees_all_close(su1.theta, sw1.theta, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(mu["wfm"]), float(mw["wfm"]), rtol=1e-6)


def test_meta_outputs_for_plots_and_config_errors():
  kt, state, batch = _setup("l2t_www")
  out = kt.meta_outputs(state, batch["image"])
  assert set(out) == {p.key for p in kt.pairs}
  o = out["a__t2"]
  assert o["w"].shape == (B, 4) and o["lam"].shape == (B,) and o["gamma"].shape == (B, 2, 2, 4)
  chex.assert_trees_all_close(out["b__t0"]["gamma"], jnp.ones((B, 8, 8, 6)), rtol=1e-6)
  chex.assert_trees_all_close(jnp.sum(o["w"], -1), jnp.ones(B), rtol=1e-6)
  with pytest.raises(ConfigError):
    _setup("l2t_wwww")
  with pytest.raises(ConfigError):
    KnowledgeTransfer(TinySource(), TinyTarget(), (), KTConfig(method="ufm"), cosine_per_epoch(0.1, 1, 1))


def test_cosine_per_epoch_constant_within_epoch():
  f = cosine_per_epoch(0.1, 10, 200)
  np.testing.assert_allclose([float(f(0)), float(f(9)), float(f(10)), float(f(1999))],
                             [0.1, 0.1, 0.05 * (1 + np.cos(np.pi / 200)), 0.05 * (1 + np.cos(np.pi * 199 / 200))],
                             rtol=1e-5, atol=1e-8)
