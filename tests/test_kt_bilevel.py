"""The jitted KT iteration: exact meta-gradient, rollback, optimizer equivalence, method switch.

θ's optimiser is the optax transformation `kt.tx` (default `sgd_tx`); the frozen source is an
argument of every call, never part of the state; keys are used as given (no folding with the
step inside the iteration)."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

from tl_jax import paths
from tl_jax.errors import ConfigError
from tl_jax.kt import (KTConfig, KnowledgeTransfer, all_to_all, count_meta_params, cosine_per_epoch,
                       init_meta_params, momentum_of, pairs_for_models, parse_pairs, sgd_tx,
                       softmax_ce, with_momentum)
from tl_jax.kt import matching
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


def _cast(tree, dtype):
  return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _setup(method, dtype=jnp.float32, pairs="0-2,1-0", seed=0, **cfg):
  """Pairs: 8x8 -> 2x2 (downsample) and 4x4 -> 8x8 (upsample), both through the resize.
  Returns (kt, state, batch, source variables)."""
  kt = _build(method, dtype, pairs, tuple(sorted(cfg.items())))
  x0 = jnp.zeros((1, HW, HW, 3), dtype)
  sv = kt.source_model.init(jax.random.PRNGKey(seed), x0)
  tv = kt.target_model.init(jax.random.PRNGKey(seed + 1), x0)
  # a "pretrained" source: non-trivial BN running stats
  sv = {"params": sv["params"], "batch_stats": jax.tree_util.tree_map(lambda a: a + 0.1, sv["batch_stats"])}
  state = _cast(kt.init(jax.random.PRNGKey(seed + 2), tv), dtype)
  sv = _cast(sv, dtype)
  rng = np.random.default_rng(seed)
  batch = {"image": jnp.asarray(rng.standard_normal((B, HW, HW, 3)), dtype),
           "label": jnp.asarray(rng.integers(0, NC, B), jnp.int32)}
  return kt, state, batch, sv


def _lookahead_inputs(kt, state, batch, key, sv):
  """Meta-objective arguments taking θ_0 and its optimiser state straight from `state` (no real
  step to compile)."""
  ctx, _, k_meta = jax.jit(kt.prepare)(state, batch, key, sv)
  return state.theta, state.opt_state, state.batch_stats, ctx, k_meta


def _random_like(tree, seed, scale):
  leaves, tdef = jax.tree_util.tree_flatten(tree)
  ks = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
  return jax.tree_util.tree_unflatten(tdef, [scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, ks)])


def _add(a, b, s=1.0):
  return jax.tree_util.tree_map(lambda x, y: x + s * y, a, b)


def _with_random_momentum(state, seed, scale):
  """Mid-training-like optimiser state: a random momentum buffer (same tree as θ)."""
  v = _random_like(momentum_of(state.opt_state), seed, scale)
  return state.replace(opt_state=with_momentum(state.opt_state, v))


def _at_step(state, n):
  """`state` after n steps as far as the LR is concerned: step and every schedule count = n."""
  is_sched = lambda s: isinstance(s, optax.ScaleByScheduleState)  # noqa: E731
  opt = jax.tree_util.tree_map(
      lambda s: s._replace(count=jnp.asarray(n, s.count.dtype)) if is_sched(s) else s,
      state.opt_state, is_leaf=is_sched)
  return state.replace(step=jnp.asarray(n, state.step.dtype), opt_state=opt)


def _counts(opt_state):
  is_sched = lambda s: isinstance(s, optax.ScaleByScheduleState)  # noqa: E731
  return [int(s.count) for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_sched) if is_sched(s)]


def assert_meta_gradient_matches_fd(kt, phi, args, eps=1e-5, rtol=1e-5, n=3):
  """The meta-gradient at φ against central finite differences along n random directions
  (float64); returns the gradient."""
  vg = jax.jit(jax.value_and_grad(kt.meta_objective))
  _, g = vg(phi, *args)
  for i in range(n):
    u = _random_like(phi, 10 + i, 1.0)
    fd = float((vg(_add(phi, u, eps), *args)[0] - vg(_add(phi, u, -eps), *args)[0]) / (2 * eps))
    an = float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g),
                                                  jax.tree_util.tree_leaves(u))))
    assert abs(fd - an) <= rtol * max(abs(an), 1e-12), (i, fd, an)
  return g


@pytest.mark.parametrize("method", ["l2t_ww", "l2t_www"])
def test_meta_gradient_matches_central_finite_differences_float64(method):
  with jax.enable_x64(True):
    kt, state, batch, sv = _setup(method, dtype=jnp.float64)
    key = jax.random.PRNGKey(3)
    # mid-training-like: non-zero momentum, φ away from init (softmax / relu6 / softplus generic)
    state = _with_random_momentum(state, 1, 0.05)
    phi = _add(state.meta_params, _random_like(state.meta_params, 4, 0.2))
    args = _lookahead_inputs(kt, state, batch, key, sv)
    g = assert_meta_gradient_matches_fd(kt, phi, args)
    assert jax.tree_util.tree_leaves(g)[0].dtype == jnp.float64
    assert float(optax.tree.norm(g)) > 1e-8
    if method == "l2t_www":  # the 'which' nets get a non-zero meta-gradient of their own
      which = [v for k, v in g.items() if k.startswith("which_")]
      assert float(optax.tree.norm(which)) > 0


@pytest.mark.parametrize("step", [0, 4])
def test_meta_objective_equals_optax_unrolled_lookahead(step):
  """T steps of optax chain(add_decayed_weights, sgd(momentum)) on L_wfm only, one on CE only,
  continuing the real momentum buffer, all at the real step's LR; meta loss = CE afterwards
  (written independently). Step 4 is the last of epoch 0 (5 steps per epoch): the look-ahead's
  steps 5, 6 would fall into epoch 1 if the schedule count were not held."""
  kt, state, batch, sv = _setup("l2t_www")
  state = _with_random_momentum(_at_step(state, step), 2, 0.05)
  phi = _add(state.meta_params, _random_like(state.meta_params, 4, 0.2))
  args = _lookahead_inputs(kt, state, batch, jax.random.PRNGKey(6), sv)
  theta0, v0, bs0, ctx, k_meta = args
  x, y, pooled, resized, lr = ctx["x"], ctx["y"], ctx["pooled"], ctx["resized"], ctx["lr"]

  @jax.jit
  def manual(phi):
    out = kt.meta_net.apply({"params": phi}, pooled)
    gam = matching.full_gamma(kt.pairs, out)

    def fwd(th, bs):
      (logits, feats), upd = kt.target_model.apply({"params": th["target"], "batch_stats": bs}, x, train=True,
                                                   mutable=["batch_stats"])
      return logits, feats, upd["batch_stats"]

    def wfm(th, bs):
      _, feats, nbs = fwd(th, bs)
      return matching.matching_loss(kt.pairs, th["regressors"], feats, resized, out, 0.5, gam), nbs

    def ce(th, bs):
      logits, _, nbs = fwd(th, bs)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), nbs

    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(lr, momentum=0.9))
    os_ = tx.init(theta0)
    os_ = (os_[0], (os_[1][0]._replace(trace=momentum_of(v0)),) + tuple(os_[1][1:]))
    th, bs = theta0, bs0
    for loss in (wfm, wfm, ce):
      g, bs = jax.grad(loss, has_aux=True)(th, bs)
      upd, os_ = tx.update(g, os_, th)
      th = optax.apply_updates(th, upd)
    return ce(th, bs)[0]

  np.testing.assert_allclose(float(lr), float(kt.lr_schedule(step)), rtol=1e-6)
  ours = jax.jit(kt.meta_objective)(phi, *args)
  np.testing.assert_allclose(float(ours), float(manual(phi)), rtol=1e-5)
  # non-vacuous: the look-ahead moved the CE away from its value at θ_0
  ce0 = optax.softmax_cross_entropy_with_integer_labels(
      kt.target_model.apply({"params": theta0["target"], "batch_stats": bs0}, x, train=True,
                            mutable=["batch_stats"])[0][0], y).mean()
  assert abs(float(ours) - float(ce0)) > 1e-4


@pytest.mark.slow
def test_remat_gives_the_same_meta_gradient():
  kt, state, batch, sv = _setup("l2t_ww", pairs="0-2", inner_steps=1)
  kt_r, _, _, _ = _setup("l2t_ww", pairs="0-2", inner_steps=1, remat=True)
  args = _lookahead_inputs(kt, state, batch, jax.random.PRNGKey(1), sv)
  g = jax.jit(jax.grad(kt.meta_objective))(state.meta_params, *args)
  g_r = jax.jit(jax.grad(kt_r.meta_objective))(state.meta_params, *args)
  chex.assert_trees_all_close(g, g_r, rtol=1e-5, atol=1e-8)
  assert float(optax.tree.norm(g)) > 0


def test_first_order_meta_gradient_is_exactly_zero():
  """(The exact meta-gradient of the same setup is non-zero: checked in the FD test.)"""
  kt, state, batch, sv = _setup("l2t_www", pairs="0-2", first_order=True, inner_steps=1)
  args = _lookahead_inputs(kt, state, batch, jax.random.PRNGKey(1), sv)
  phi = _add(state.meta_params, _random_like(state.meta_params, 4, 0.2))
  loss, g1 = jax.jit(jax.value_and_grad(kt.meta_objective))(phi, *args)
  assert np.isfinite(float(loss)) and float(loss) > 0
  for leaf in jax.tree_util.tree_leaves(g1):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def _pytorch_sgd(theta, v, grads, lr, momentum, weight_decay):
  """torch.optim.SGD (no dampening / nesterov), written out: d = g + ωθ; v ← μv + d; θ ← θ − ηv."""
  d = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, grads, theta)
  v = jax.tree_util.tree_map(lambda d_, v_: momentum * v_ + d_, d, v)
  return jax.tree_util.tree_map(lambda p, v_: p - lr * v_, theta, v), v


def test_sgd_tx_equals_pytorch_sgd_formula():
  rng = np.random.default_rng(0)
  params = {"a": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), "b": jnp.asarray(rng.standard_normal(4), jnp.float32)}
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  lrs = [0.1, 0.05, 0.02, 0.07]
  for mu, wd in ((0.9, 1e-4), (0.9, 0.05), (0.0, 0.0)):
    tx = sgd_tx(lambda c: jnp.asarray(lrs)[c], mu, wd)
    opt_state = tx.init(params)
    if mu:
      chex.assert_trees_all_equal(momentum_of(opt_state), zeros)
    p_tx, p_own, v = params, params, zeros
    for lr in lrs:
      grads = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), params)
      upd, opt_state = tx.update(grads, opt_state, p_tx)
      p_tx = optax.apply_updates(p_tx, upd)
      p_own, v = _pytorch_sgd(p_own, v, grads, jnp.float32(lr), mu, wd)
      chex.assert_trees_all_close(p_tx, p_own, rtol=1e-6, atol=1e-7)
      if mu:
        chex.assert_trees_all_close(momentum_of(opt_state), v, rtol=1e-6, atol=1e-7)
  # with_momentum swaps the buffer (and only it): the next update continues from it
  tx = sgd_tx(lambda c: jnp.asarray(lrs)[c], 0.9, 1e-4)
  opt_state = tx.update(params, tx.init(params), params)[1]
  w = _random_like(params, 3, 0.1)
  swapped = with_momentum(opt_state, w)
  chex.assert_trees_all_equal(momentum_of(swapped), w)
  assert _counts(swapped) == _counts(opt_state) == [1]
  upd, _ = tx.update(params, swapped, params)
  chex.assert_trees_all_close(optax.apply_updates(params, upd),
                              _pytorch_sgd(params, w, params, lrs[1], 0.9, 1e-4)[0], rtol=1e-6, atol=1e-7)


def test_lookahead_runs_every_inner_step_at_the_real_steps_lr():
  """A schedule that halves the LR every step: the real step at step 3 uses lr(3), and the
  look-ahead (held counts) uses lr(3) for all T + 1 updates: meta loss and meta-gradient equal a
  look-ahead written by hand with the PyTorch SGD formula at that fixed LR, and differ from one
  whose LR follows the schedule (lr(3), lr(4), lr(5))."""
  src_m, tgt_m = TinySource(), TinyTarget()
  x0 = jnp.zeros((1, HW, HW, 3))
  sv0 = src_m.init(jax.random.PRNGKey(0), x0)
  tv0 = tgt_m.init(jax.random.PRNGKey(1), x0)
  pairs = parse_pairs("0-2", feature_shapes(src_m, sv0, (HW, HW, 3)), feature_shapes(tgt_m, tv0, (HW, HW, 3)))
  sched = lambda c: 0.4 * 0.5 ** jnp.asarray(c, jnp.float32)  # noqa: E731
  kt = KnowledgeTransfer(src_m, tgt_m, pairs, KTConfig(method="l2t_ww", inner_steps=2, weight_decay=0.05), sched)
  _, _, batch, sv = _setup("l2t_ww", pairs="0-2")  # the batch and the "pretrained" source
  state = _with_random_momentum(_at_step(kt.init(jax.random.PRNGKey(2), tv0), 3), 5, 0.05)
  assert _counts(state.opt_state) == [3]
  phi = _add(state.meta_params, _random_like(state.meta_params, 4, 0.2))
  key = jax.random.PRNGKey(7)
  mu, wd = kt.config.momentum, kt.config.weight_decay

  # real step at lr(3), then look-ahead from its θ_0 and optimiser state (as the iteration does)
  @jax.jit
  def real(state):
    ctx, k_drop, k_meta = kt.prepare(state, batch, key, sv)
    theta0, opt0, bs0, metrics = kt.real_step(state, ctx, k_drop)
    return theta0, opt0, bs0, metrics, ctx, k_meta

  theta0, opt0, bs0, metrics, ctx, k_meta = real(state)
  np.testing.assert_allclose(float(metrics["lr"]), 0.05, rtol=1e-6)
  assert _counts(opt0) == [4] and _counts(ctx["count_ref"]) == [3]
  x, y = ctx["x"], ctx["y"]
  drop = jax.random.PRNGKey(0)  # TinyTarget has no dropout

  def fwd(th, bs):
    return kt.target_forward(th["target"], bs, x, drop)

  def total(th):
    meta_out, gammas = kt.meta_forward(state.meta_params, ctx["pooled"], B)
    logits, feats, _ = fwd(th, state.batch_stats)
    return softmax_ce(logits, y) + kt.wfm(th["regressors"], feats, ctx, meta_out, gammas)

  want0, want_v0 = _pytorch_sgd(state.theta, momentum_of(state.opt_state), jax.grad(total)(state.theta), 0.05, mu, wd)
  chex.assert_trees_all_close(theta0, want0, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(momentum_of(opt0), want_v0, rtol=1e-5, atol=1e-6)

  def by_hand(phi, lrs):
    meta_out, gammas = kt.meta_forward(phi, ctx["pooled"], B)

    def wfm(th, bs):
      _, feats, nbs = fwd(th, bs)
      return kt.wfm(th["regressors"], feats, ctx, meta_out, gammas), nbs

    def ce(th, bs):
      logits, _, nbs = fwd(th, bs)
      return softmax_ce(logits, y), nbs

    th, v, bs = theta0, momentum_of(opt0), bs0
    for loss, lr in zip((wfm, wfm, ce), lrs):
      g, bs = jax.grad(loss, has_aux=True)(th, bs)
      th, v = _pytorch_sgd(th, v, g, lr, mu, wd)
    return ce(th, bs)[0]

  ours, g_ours = jax.jit(jax.value_and_grad(kt.meta_objective))(phi, theta0, opt0, bs0, ctx, k_meta)
  held, g_held = jax.jit(jax.value_and_grad(lambda p: by_hand(p, [0.05] * 3)))(phi)
  np.testing.assert_allclose(float(ours), float(held), rtol=1e-5)
  gmax = float(max(jnp.max(jnp.abs(a)) for a in jax.tree_util.tree_leaves(g_held)))
  assert gmax > 1e-6
  chex.assert_trees_all_close(g_ours, g_held, rtol=1e-4, atol=1e-4 * gmax)
  # non-vacuous: with the schedule running on (0.05, 0.025, 0.0125) the look-ahead differs
  running = float(jax.jit(lambda p: by_hand(p, [0.05, 0.025, 0.0125]))(phi))
  assert abs(running - float(ours)) > 100 * 1e-5 * abs(float(ours)), (running, float(ours))


@pytest.mark.parametrize("method", ["l2t_ww", "l2t_www"])
def test_iteration_keeps_real_step_theta_and_updates_phi(method):
  # bn_updates='single': BN statistics are the real step's too (the reference's second update
  # at θ_0 is tested in test_kt_fidelity.py)
  kt, state, batch, sv = _setup(method, bn_updates="single")
  key = jax.random.PRNGKey(5)
  sv_before = jax.tree_util.tree_map(np.array, sv)

  @jax.jit
  def real_and_iteration(state):
    ctx, k_drop, _ = kt.prepare(state, batch, key, sv)
    return kt.real_step(state, ctx, k_drop), kt.iteration(state, batch, key, sv)

  (theta0, v0, bs0, _), (same, _) = real_and_iteration(state)
  # bit-identical: the look-ahead is discarded, θ / optimiser state / BN stats are the real
  # step's. Compared within one program: XLA compiles the real step's gradient with ulp-level
  # differences depending on what else the program holds (observed: 3e-8 on a regressor bias
  # between a real-step-only jit and the full iteration), so across programs only allclose holds.
  chex.assert_trees_all_equal(same.theta, theta0)
  chex.assert_trees_all_equal(same.opt_state, v0)
  chex.assert_trees_all_equal(same.batch_stats, bs0)
  phi_before = state.meta_params
  new, metrics = kt.l2t_iteration(jax.tree_util.tree_map(jnp.copy, state), batch, key, sv)
  # the donated, separately jitted iteration: the same numbers to float32 rounding (a look-ahead
  # step at lr 0.1 would move θ by orders of magnitude more)
  for got, want in ((new.theta, theta0), (new.opt_state, v0), (new.batch_stats, bs0)):
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
  # the source is an argument, not state: not donated, not changed
  assert not hasattr(new, "source_variables")
  chex.assert_trees_all_equal(jax.tree_util.tree_map(np.asarray, sv), sv_before)
  assert int(new.step) == 1 and _counts(new.opt_state) == [1]
  assert float(metrics["nonfinite"]) == 0.0
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new.meta_params, phi_before)
  assert max(jax.tree_util.tree_leaves(diff)) > 0  # Adam moved φ
  assert max(jax.tree_util.tree_leaves(diff)) < 2e-4  # by about its LR, not more
  for k in ("loss", "ce", "wfm", "meta_loss", "accuracy", "lr", "lambda/a__t2"):
    assert np.isfinite(float(metrics[k])), k
  assert float(metrics["meta_loss"]) > 0
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics["ce"] + metrics["wfm"]), rtol=1e-6)


def test_nonfinite_loss_skips_the_whole_update():
  kt, state, batch, sv = _setup("l2t_ww")
  bad = {**batch, "image": batch["image"].at[0, 0, 0, 0].set(jnp.nan)}
  before = jax.tree_util.tree_map(np.array, state)
  new, metrics = kt.l2t_iteration(state, bad, jax.random.PRNGKey(5), sv)
  assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  chex.assert_trees_all_equal(jax.tree_util.tree_map(np.asarray, new), before)  # step too


def test_methods_share_signature_and_differ_as_expected():
  key = jax.random.PRNGKey(2)
  thetas = {}
  for method in ("scratch", "ufm", "l2t_ww", "l2t_www"):
    kt, state, batch, sv = _setup(method)
    s = state
    for i in range(2):  # the caller folds the key with the step (as the engine does)
      s, m = kt.l2t_iteration(s, batch, jax.random.fold_in(key, i), sv)
    assert int(s.step) == 2 and set(m) >= {"loss", "ce", "wfm", "meta_loss", "accuracy"}
    thetas[method] = s.params
    if method == "scratch":
      assert s.regressors == {} and s.meta_params == {} and float(m["wfm"]) == 0.0
    if method == "ufm":
      assert s.meta_params == {} and float(m["wfm"]) > 0 and float(m["lambda/a__t2"]) == 1.0
  # L2T-www at init (h ≡ 1) takes the same first real step as L2T-ww (same seeds / φ what-where).
  kt_a, sa, batch, sv_a = _setup("l2t_ww")
  kt_b, sb, _, sv_b = _setup("l2t_www")
  sb = sb.replace(meta_params={**sb.meta_params, **jax.tree_util.tree_map(jnp.copy, sa.meta_params)})
  sa1, ma = kt_a.l2t_iteration(sa, batch, key, sv_a)
  sb1, mb = kt_b.l2t_iteration(sb, batch, key, sv_b)
  chex.assert_trees_all_close(sa1.params, sb1.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(ma["meta_loss"]), float(mb["meta_loss"]), rtol=1e-5)
  # UFM and scratch take different steps (the matching term has a gradient)
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), thetas["ufm"], thetas["scratch"])
  assert max(jax.tree_util.tree_leaves(diff)) > 1e-5


def test_l2t_iterations_trace_the_target_for_second_order(monkeypatch):
  """The L2T iterations (and their meta-gradient alone) trace the target inside
  `layers.second_order` (VGG-9 picks its CPU convs by it); UFM and scratch do not."""
  from tl_jax.models import layers
  seen = []
  call = TinyTarget.__call__
  monkeypatch.setattr(TinyTarget, "__call__",
                      lambda self, *a, **k: seen.append(layers.is_second_order()) or call(self, *a, **k))
  key = jax.random.PRNGKey(0)
  for method, expected in (("scratch", False), ("ufm", False), ("l2t_ww", True), ("l2t_www", True)):
    kt, state, batch, sv = _setup(method)
    seen.clear()
    jax.make_jaxpr(lambda *a: kt.iteration(*a))(state, batch, key, sv)  # a fresh trace
    assert seen and set(seen) == {expected}, (method, seen)
  args = _lookahead_inputs(kt, state, batch, key, sv)
  seen.clear()
  jax.make_jaxpr(lambda *a: kt.meta_gradient(state.meta_params, *a))(*args)
  assert seen and set(seen) == {True}


def test_ufm_step_equals_l2t_ww_real_step_with_uniform_where_one():
  kt_u, su, batch, sv_u = _setup("ufm")
  kt_w, sw, _, sv_w = _setup("l2t_ww")
  phi = {k: ({"fc": {"kernel": jnp.zeros_like(v["fc"]["kernel"]), "bias": jnp.ones_like(v["fc"]["bias"])}}
             if k.startswith("where_") else v) for k, v in sw.meta_params.items()}
  sw = sw.replace(meta_params=phi)
  key = jax.random.PRNGKey(8)
  su1, mu = kt_u.l2t_iteration(su, batch, key, sv_u)
  sw1, mw = kt_w.l2t_iteration(sw, batch, key, sv_w)
  chex.assert_trees_all_close(su1.theta, sw1.theta, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(mu["wfm"]), float(mw["wfm"]), rtol=1e-6)


def test_meta_outputs_for_plots_and_config_errors():
  kt, state, batch, sv = _setup("l2t_www")
  out = kt.meta_outputs(state, batch["image"], sv)
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


def _real_models():
  models = pytest.importorskip("tl_jax.models")
  try:
    return models.create_model("resnet32", 200), models.create_model("vgg9", 10)
  except Exception as e:  # pragma: no cover - models package still in progress
    pytest.skip(f"tl_jax.models not usable: {e}")


def test_resnet32_to_vgg9_pairs_and_meta_param_counts():
  src, tgt = _real_models()
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  sv = jax.eval_shape(lambda k: src.init(k, jnp.zeros(x.shape)), jax.random.PRNGKey(0))
  tv = jax.eval_shape(lambda k: tgt.init(k, jnp.zeros(x.shape)), jax.random.PRNGKey(0))
  pairs = pairs_for_models(all_to_all([4, 9, 14], range(5)), src, sv, tgt, tv, (32, 32, 3))
  assert len(pairs) == 15
  first, last = pairs[4], pairs[10]
  assert (first.source_channels, first.source_hw, first.target_channels, first.target_hw) == (16, (32, 32), 512, (2, 2))
  assert (last.source_channels, last.source_hw, last.target_channels, last.target_hw) == (64, (8, 8), 64, (32, 32))
  counts = count_meta_params(jax.eval_shape(lambda k: init_meta_params(pairs, False, k), jax.random.PRNGKey(0)))
  assert (counts["what"], counts["where"]) == (27_440, 575)


@pytest.mark.slow
@pytest.mark.skipif(paths.shared_root() is not None,
                    reason="with ../shared, tests/test_thesis_gpu.py runs the real-size L2T "
                    "iteration end to end (L2T-www, which contains L2T-ww's)")
def test_resnet32_to_vgg9_l2t_ww_iteration_runs():
  """One real-size L2T-ww iteration at batch 2 (compiles the full second-order step: slow on CPU)."""
  src, tgt = _real_models()
  x0 = jnp.zeros((1, 32, 32, 3))
  sv, tv = src.init(jax.random.PRNGKey(0), x0), tgt.init(jax.random.PRNGKey(1), x0)
  pairs = pairs_for_models(all_to_all([4, 9, 14], range(5)), src, sv, tgt, tv, (32, 32, 3))
  kt = KnowledgeTransfer(src, tgt, pairs, KTConfig(method="l2t_ww"), cosine_per_epoch(0.1, 10, 200))
  state = kt.init(jax.random.PRNGKey(2), tv)
  batch = {"image": jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32),
           "label": jnp.array([1, 2], jnp.int32)}
  new, m = kt.l2t_iteration(state, batch, jax.random.PRNGKey(0), sv)
  assert int(new.step) == 1
  assert all(np.isfinite(float(v)) for v in m.values())
  assert float(m["meta_grad_norm"]) > 0
