"""Optimiser, schedule and mask numerics: exact freezing, decay and multiplier formulas."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import optax
import pytest

from tl_jax.errors import ConfigError
from tl_jax.train import masks, optim


def _params():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  return {"backbone": {"conv": {"kernel": jax.random.normal(k1, (3, 3, 2, 4)),
                                "bias": jax.random.normal(k2, (4,))},
                       "bn": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))}},
          "head": {"kernel": jax.random.normal(k3, (4, 3)), "bias": jnp.zeros((3,))}}


def _grads(params, i):
  key = jax.random.fold_in(jax.random.PRNGKey(42), i)
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tdef, [jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def _run(tx, params, n):
  state = tx.init(params)
  for i in range(n):
    updates, state = tx.update(_grads(params, i), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _cfg(**kw):
  base = dict(name="sgd", lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
              decay_type="coupled", schedule="constant", schedule_unit="step", frozen=(),
              lr_mults=())
  base.update(kw)
  return mc.ConfigDict(base)


def test_label_params_first_match_and_names():
  p = _params()
  labels = masks.label_params(p, [("head/", "h"), ("kernel", "k")], "d")
  assert labels["head"]["kernel"] == "h"
  assert labels["backbone"]["conv"]["kernel"] == "k"
  assert labels["backbone"]["bn"]["scale"] == "d"
  assert "backbone/conv/kernel" in masks.param_names(p)
  t = masks.trainable_names(p, ("backbone/",))
  assert t["trainable"] == ["head/bias", "head/kernel"]
  assert t["num_trainable_params"] == 15 and t["num_frozen_params"] == 72 + 4 + 8
  assert masks.describe_trainable(p, ("backbone/",)).startswith("trainable: 2 tensors, 15 params")


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_frozen_params_bit_identical(name):
  p = _params()
  cfg = _cfg(name=name, momentum=0.9, weight_decay=0.1,
             decay_type="decoupled" if name == "adamw" else "coupled",
             frozen=("backbone/conv",), lr_mults=(("bn/", 0.0),))
  tx = optim.make_optimizer(cfg, 5, 2, p)
  new, _ = _run(tx, p, 4)
  for a, b in zip(jax.tree.leaves(new["backbone"]), jax.tree.leaves(p["backbone"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(new["head"]["kernel"], p["head"]["kernel"])


def test_coupled_decay_matches_pytorch_sgd_formula():
  p = _params()
  lr, mu, wd = 0.05, 0.9, 0.01
  tx = optim.make_optimizer(_cfg(lr=lr, momentum=mu, nesterov=True, weight_decay=wd), 10, 1, p)
  new, _ = _run(tx, p, 3)
  # PyTorch SGD: d = g + wd*p; buf = mu*buf + d; d = d + mu*buf (nesterov); p -= lr*d
  ref = jax.tree.map(np.asarray, p)
  buf = jax.tree.map(np.zeros_like, ref)
  for i in range(3):
    g = jax.tree.map(np.asarray, _grads(p, i))
    d = jax.tree.map(lambda gg, pp: gg + wd * pp, g, ref)
    buf = jax.tree.map(lambda b, dd: mu * b + dd, buf, d)
    d = jax.tree.map(lambda dd, b: dd + mu * b, d, buf)
    ref = jax.tree.map(lambda pp, dd: pp - lr * dd, ref, d)
  chex.assert_trees_all_close(new, ref, rtol=1e-6, atol=1e-6)


def test_decoupled_adamw_matches_optax_adamw():
  p = _params()
  cfg = _cfg(name="adamw", lr=1e-3, weight_decay=0.05, decay_type="decoupled")
  new, _ = _run(optim.make_optimizer(cfg, 10, 1, p), p, 3)
  ref, _ = _run(optax.adamw(1e-3, weight_decay=0.05), p, 3)
  chex.assert_trees_all_close(new, ref, rtol=1e-6, atol=1e-7)


def test_lr_multiplier_scales_update_exactly():
  p = _params()
  g = _grads(p, 0)
  tx_b = optim.make_optimizer(_cfg(name="adam", lr=1e-2, momentum=0.9), 10, 1, p)
  tx_m = optim.make_optimizer(_cfg(name="adam", lr=1e-2, lr_mults=(("backbone", 0.1),)), 10, 1, p)
  (u_b, s_b), (u_m, s_m) = tx_b.update(g, tx_b.init(p), p), tx_m.update(g, tx_m.init(p), p)
  u_b, _ = tx_b.update(g, s_b, p)
  u_m, _ = tx_m.update(g, s_m, p)
  chex.assert_trees_all_close(u_m["backbone"], jax.tree.map(lambda x: 0.1 * x, u_b["backbone"]),
                              rtol=1e-6)
  chex.assert_trees_all_equal(u_m["head"], u_b["head"])


def test_cosine_per_epoch_matches_pytorch_cosine_annealing():
  cfg = _cfg(lr=0.1, schedule="cosine", schedule_unit="epoch")
  spe, epochs = 4, 6
  sched = optim.make_schedule(cfg, spe, epochs)
  for step in range(spe * epochs):
    e = step // spe
    want = 0.1 * (1 + math.cos(math.pi * e / epochs)) / 2
    assert abs(float(sched(step)) - want) < 1e-7, step
  per_step = optim.make_schedule(_cfg(lr=0.1, schedule="cosine"), spe, epochs)
  assert float(per_step(1)) < 0.1 and float(sched(1)) == pytest.approx(0.1)


def test_step_and_warmup_schedules():
  s = optim.make_schedule(_cfg(schedule="step", schedule_unit="epoch", boundaries=(2, 4),
                               decay_factor=0.1), 3, 6)
  got = [float(s(i)) for i in range(0, 18, 3)]
  np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  w = optim.make_schedule(_cfg(schedule="warmup_cosine", warmup_epochs=1), 10, 5)
  assert float(w(0)) == 0.0 and float(w(10)) == pytest.approx(0.1)
  assert float(w(5)) == pytest.approx(0.05)


def test_lr_scale_hook_scales_updates_without_new_structure():
  p = _params()
  tx = optim.make_optimizer(_cfg(momentum=0.9), 10, 1, p)
  s = tx.init(p)
  s_half = optim.set_lr_scale(s, 0.5)
  assert optim.get_lr_scale(s_half) == 0.5
  chex.assert_trees_all_equal_structs(s, s_half)
  g = _grads(p, 0)
  u1, _ = tx.update(g, s, p)
  u2, _ = tx.update(g, s_half, p)
  chex.assert_trees_all_close(u2, jax.tree.map(lambda x: 0.5 * x, u1), rtol=1e-6)


@pytest.mark.parametrize("field,kw", [("optimizer.name", dict(name="lamb")),
                                      ("optimizer.schedule", dict(schedule="poly")),
                                      ("optimizer.schedule_unit", dict(schedule_unit="batch")),
                                      ("optimizer.decay_type", dict(weight_decay=0.1,
                                                                    decay_type="l2")),
                                      ("optimizer.frozen", dict(frozen=("nosuchlayer",)))])
def test_bad_config_raises_config_error(field, kw):
  with pytest.raises(ConfigError) as e:
    optim.make_optimizer(_cfg(**kw), 10, 2, _params())
  assert e.value.field == field
