"""Train/eval step numerics: hand-written optax step, masking, one trace, finite differences."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import optax
import pytest

from tl_jax.train import optim, steps
from tl_jax.train.state import TrainState


class TinyCNN(nn.Module):
  """conv + BN + Dense test model returning (logits, features)."""
  num_classes: int = 3
  use_bn: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    f1 = nn.Conv(4, (3, 3), dtype=self.dtype, param_dtype=self.dtype, name="conv")(x)
    if self.use_bn:
      f1 = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                        param_dtype=self.dtype, name="bn")(f1)
    h = nn.relu(f1)
    pooled = h.mean(axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype,
                      name="head")(pooled)
    return logits, {"conv": f1, "pooled": pooled}


def _batch(n=6, hw=6, seed=0, classes=3):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)),
          "label": jnp.asarray(rng.integers(0, classes, (n,), dtype=np.int32))}


def _noise_aug(key, images):
  x = images.astype(jnp.float32) / 255.0
  return x + 0.1 * jax.random.normal(key, x.shape, x.dtype)


def _state(model, tx_cfg=None, dtype=jnp.float32, hw=6):
  variables = model.init(jax.random.PRNGKey(1), jnp.zeros((1, hw, hw, 3), dtype))
  cfg = mc.ConfigDict(tx_cfg or dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3))
  tx = optim.make_optimizer(cfg, 10, 1, variables["params"])
  return TrainState.create(model.apply, variables["params"], variables.get("batch_stats"), tx)


def test_train_step_equals_hand_written_optax_step():
  model = TinyCNN()
  state = _state(model)
  batch = _batch()
  key = jax.random.PRNGKey(7)
  p0, bs0, os0 = state.params, state.batch_stats, state.opt_state
  # Hand-written reference (computed before the donating call).
  k = key  # the step uses its key as given (the engine folds it with the step)
  aug_key, _ = jax.random.split(k)
  x = _noise_aug(aug_key, batch["image"])

  def loss(p):
    (logits, _), mut = model.apply({"params": p, "batch_stats": bs0}, x, train=True,
                                   mutable=["batch_stats"])
    onehot = jax.nn.one_hot(batch["label"], 3)
    return optax.softmax_cross_entropy(logits, onehot).mean(), mut["batch_stats"]

  (ref_loss, ref_bs), g = jax.value_and_grad(loss, has_aux=True)(p0)
  ref_tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))
  upd, _ = ref_tx.update(g, ref_tx.init(p0), p0)
  ref_params = optax.apply_updates(p0, upd)
  del os0

  train_step = steps.make_train_step(model, _noise_aug)
  new_state, metrics = train_step(state, batch, key)
  chex.assert_trees_all_close(new_state.params, ref_params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(new_state.batch_stats, ref_bs, rtol=1e-5, atol=1e-6)
  assert int(new_state.step) == 1
  assert float(metrics["loss"]) == pytest.approx(float(ref_loss), rel=1e-5)
  assert float(metrics["nonfinite"]) == 0.0


def test_jit_traces_once_across_epochs():
  calls = []

  def counting_aug(key, images):
    calls.append(1)
    return _noise_aug(key, images)

  model = TinyCNN()
  state = _state(model)
  train_step = steps.make_train_step(model, counting_aug)
  key = jax.random.PRNGKey(0)
  for epoch in range(3):
    for i in range(2):
      state, m = train_step(state, _batch(seed=epoch * 10 + i), key)
  assert len(calls) == 1
  assert int(state.step) == 6


def test_eval_masking_counts_only_real_examples():
  model = TinyCNN()
  state = _state(model)
  eval_step = steps.make_eval_step(model)
  full = _batch(n=4)
  out_full = eval_step(state, full)
  padded = {"image": jnp.concatenate([full["image"], full["image"][:2] * 0 + 255]),
            "label": jnp.concatenate([full["label"], jnp.array([2, 2], jnp.int32)]),
            "mask": jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)}
  out_pad = eval_step(state, padded)
  assert float(out_pad["count"]) == 4.0
  assert float(out_pad["correct"]) == float(out_full["correct"])
  assert float(out_pad["loss_sum"]) == pytest.approx(float(out_full["loss_sum"]), rel=1e-6)
  np.testing.assert_array_equal(np.asarray(out_pad["pred"][:4]), np.asarray(out_full["pred"]))
  # correct equals argmax agreement computed by hand
  logits, _ = model.apply(state.variables, full["image"].astype(jnp.float32) / 255.0)
  assert float(out_full["correct"]) == float((jnp.argmax(logits, -1) == full["label"]).sum())


def test_gradient_matches_finite_differences_float64():
  with jax.enable_x64(True):
    model = TinyCNN(dtype=jnp.float64)
    cfg = dict(name="sgd", lr=1.0)  # new params = params - grad
    state = _state(model, cfg, dtype=jnp.float64)
    batch = _batch(n=4)
    key = jax.random.PRNGKey(3)
    pre = lambda k, im: im.astype(jnp.float64) / 255.0
    step = steps.make_train_step(model, pre, label_smoothing=0.1, jit=False)
    p0 = state.params
    new_state, _ = step(state, batch, key)
    grad = jax.tree.map(lambda a, b: a - b, p0, new_state.params)

    def loss_at(p):
      s = state.replace(params=p)
      return float(step(s, batch, key)[1]["loss"])

    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), p0)
    h = 1e-5
    plus = jax.tree.map(lambda p, d: p + h * d, p0, v)
    minus = jax.tree.map(lambda p, d: p - h * d, p0, v)
    fd = (loss_at(plus) - loss_at(minus)) / (2 * h)
    analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(v)))
    assert fd == pytest.approx(analytic, rel=1e-6, abs=1e-9)


def test_label_smoothing_loss_matches_formula():
  model = TinyCNN(use_bn=False)
  state = _state(model)
  batch = _batch()
  logits, _ = model.apply({"params": state.params}, batch["image"].astype(jnp.float32) / 255.0)
  eps = 0.2
  t = jax.nn.one_hot(batch["label"], 3) * (1 - eps) + eps / 3
  want = float(-(t * jax.nn.log_softmax(logits)).sum(-1).mean())
  step = steps.make_train_step(model, None, label_smoothing=eps)
  _, m = step(state, batch, jax.random.PRNGKey(0))
  assert float(m["loss"]) == pytest.approx(want, rel=1e-5)


def test_bn_frozen_keeps_running_stats_and_no_bn_model_works():
  model = TinyCNN()
  state = _state(model)
  bs0 = jax.tree.map(np.asarray, state.batch_stats)
  step = steps.make_train_step(model, None, bn_frozen=True)
  new, _ = step(state, _batch(), jax.random.PRNGKey(0))
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, new.batch_stats), bs0)
  step_bn = steps.make_train_step(model, None)
  new2, _ = step_bn(_state(model), _batch(), jax.random.PRNGKey(0))
  assert not np.allclose(new2.batch_stats["bn"]["mean"], bs0["bn"]["mean"])
  plain = TinyCNN(use_bn=False)
  s = _state(plain)
  assert s.batch_stats == {}
  s, m = steps.make_train_step(plain, None)(s, _batch(), jax.random.PRNGKey(0))
  assert np.isfinite(float(m["loss"])) and int(s.step) == 1


def test_nonfinite_loss_flagged_and_update_skipped():
  model = TinyCNN()
  state = _state(model)
  p0 = jax.tree.map(np.asarray, state.params)
  step = steps.make_train_step(model, None, extra_loss=lambda p, aux: jnp.float32(jnp.nan))
  new, m = step(state, _batch(), jax.random.PRNGKey(0))
  assert float(m["nonfinite"]) == 1.0
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, new.params), p0)


def test_trainable_mask_drops_frozen_backward_and_keeps_updates():
  """Zeroed frozen gradients give the same update as the optimiser's own freezing, and XLA no
  longer computes the frozen part of the backward pass (fewer convolutions in the program)."""
  from tl_jax import models
  from tl_jax.train import masks, optim
  from tl_jax.models import layers
  from tl_jax.train.state import TrainState
  model = models.create_model("tiny_cnn", 3, width=4)
  x = jnp.zeros((4, 8, 8, 3))
  v = model.init(jax.random.key(0), x)
  cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": "constant",
         "frozen": (r"^(?!head/)",)}
  tx = optim.make_optimizer(cfg, 1, 1, v["params"])
  trainable = jax.tree.map(lambda f: not f, masks.frozen_mask(v["params"], cfg["frozen"]))
  batch = {"image": (jax.random.uniform(jax.random.key(1), (4, 8, 8, 3)) * 255).astype(jnp.uint8),
           "label": jnp.array([0, 1, 2, 0])}
  outs, n_convs = [], []
  for t in (None, trainable):
    state = TrainState.create(model.apply, v["params"], v["batch_stats"], tx)
    step = steps.make_train_step(model, trainable=t, jit=False)
    # XLA's convs (on CPU these few-channel convs would be banded matmuls), so they can be counted
    with layers.conv_strategy(dense="lax_loopsafe"):
      hlo = jax.jit(step).lower(state, batch, jax.random.key(2)).as_text()
      outs.append(jax.jit(step)(state, batch, jax.random.key(2))[0].params)
    n_convs.append(hlo.count("convolution("))
  chex.assert_trees_all_close(outs[0], outs[1])
  assert n_convs[1] < n_convs[0]


def test_bn_frozen_keeps_dropout_on_for_tl_jax_models():
  """transfer.bn='frozen' with tl_jax's BatchNorm: statistics used and kept (as train=False) but
  dropout stays active (it did not before: the whole model ran with train=False)."""
  from tl_jax.models.cnn import Seed003CNN
  batch = _batch(n=6, hw=8)

  def run(model, key, bn_frozen=True):
    v = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 3)))
    tx = optim.make_optimizer(mc.ConfigDict({"name": "sgd", "lr": 0.1, "schedule": "constant"}),
                              1, 1, v["params"])
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (the step donates its state)
    state = TrainState.create(model.apply, copy(v["params"]), copy(v["batch_stats"]), tx)
    new, m = steps.make_train_step(model, None, bn_frozen=bn_frozen)(state, batch, key)
    return v, new, m

  drop = Seed003CNN(num_classes=3, dropout=0.3, batch_norm=True, width=4, fc=8)
  v, new, m1 = run(drop, jax.random.PRNGKey(0))
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, new.batch_stats),
                              jax.tree.map(np.asarray, v["batch_stats"]))
  _, _, m2 = run(drop, jax.random.PRNGKey(7))
  assert float(m1["loss"]) != float(m2["loss"])  # different dropout masks -> different losses
  # Without dropout, the frozen-BN training loss is exactly the inference-mode loss.
  nodrop = Seed003CNN(num_classes=3, dropout=0.0, batch_norm=True, width=4, fc=8)
  v, _, m = run(nodrop, jax.random.PRNGKey(0))
  logits, _ = nodrop.apply(v, batch["image"].astype(jnp.float32) / 255.0, train=False)
  want = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  assert float(m["loss"]) == pytest.approx(float(want), rel=1e-6)
  _, _, m_live = run(nodrop, jax.random.PRNGKey(0), bn_frozen=False)  # batch statistics differ
  assert float(m_live["loss"]) != pytest.approx(float(want), rel=1e-3)
