"""Checkpoint round trips and bit-identical resume of an interrupted fit on CPU."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from tl_jax.train import checkpoint, jsonl, loop, optim, steps
from tl_jax.train.state import TrainState


class TinyCNN(nn.Module):
  """conv + BN + Dense test model returning (logits, features)."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    f = nn.Conv(4, (3, 3), name="conv")(x)
    f = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(f)
    f = nn.Dropout(0.3, deterministic=not train)(nn.relu(f))
    pooled = f.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(pooled), {"conv": f}


def _ds(n, seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n).astype(np.int32)
  images = rng.integers(0, 80, (n, 6, 6, 3)).astype(np.uint8)
  images[..., 0] += (labels * 80).astype(np.uint8)[:, None, None]
  return {"image": images, "label": labels, "num_classes": 3}


def _aug(key, images):
  x = images.astype(jnp.float32) / 255.0
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1], x)


NUM_EPOCHS, BATCH, N_TRAIN = 4, 8, 20  # 2 steps per epoch (drop_last)


@functools.lru_cache(maxsize=None)
def _compiled():
  """Model, optimiser and jitted steps shared by every run (one compilation for the file)."""
  model = TinyCNN()
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 3)))
  ocfg = mc.ConfigDict(dict(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
                            schedule="cosine", schedule_unit="epoch", frozen=("conv/bias",)))
  tx = optim.make_optimizer(ocfg, N_TRAIN // BATCH, NUM_EPOCHS, v["params"])
  return model, v, tx, steps.make_train_step(model, _aug), steps.make_eval_step(model)


def _fresh():
  """A freshly initialised state (new buffers: the train step donates them)."""
  model, v, tx, train_step, eval_step = _compiled()
  v = jax.tree.map(jnp.copy, v)
  state = TrainState.create(model.apply, v["params"], v["batch_stats"], tx)
  return state, train_step, eval_step


def _cfg():
  return mc.ConfigDict(dict(num_epochs=NUM_EPOCHS, batch_size=BATCH, monitor="val_loss",
                            progress=False, checkpoint_every=2,
                            early_stopping=dict(patience=10, min_delta=0.04),
                            reduce_lr=dict(patience=1, factor=0.5, min_delta=0.1)))


class Crash(RuntimeError):
  pass


def _crashing(train_step, at_call):
  calls = [0]

  def step(state, batch, key):
    if calls[0] == at_call:
      raise Crash(f"simulated preemption at call {at_call}")
    calls[0] += 1
    return train_step(state, batch, key)

  return step


def _strip(hist):
  return [{k: v for k, v in h.items() if k != "time_s"} for h in hist]


def _assert_trees_equal(a, b):
  # Static fields (apply_fn, tx) are new objects per run; compare leaf paths and values.
  la, lb = jax.tree.flatten_with_path(a)[0], jax.tree.flatten_with_path(b)[0]
  assert [jax.tree_util.keystr(p) for p, _ in la] == [jax.tree_util.keystr(p) for p, _ in lb]
  for (_, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("crash_call", [5, 7])  # mid epoch 2; mid epoch 3 (after its log line)
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, crash_call):
  train, val, rng = _ds(N_TRAIN, 0), _ds(8, 1), jax.random.PRNGKey(5)
  state, train_step, eval_step = _fresh()
  ref_best, ref_hist = loop.fit(state, train_step, eval_step, train, val, _cfg(),
                                str(tmp_path / "ref"), rng)
  ref_final = checkpoint.Checkpointer(tmp_path / "ref" / "checkpoints").restore_latest(
      checkpoint.abstract_like(ref_best))[0]

  work = str(tmp_path / "run")
  state, train_step, eval_step = _fresh()
  with pytest.raises(Crash):
    loop.fit(state, _crashing(train_step, crash_call), eval_step, train, val, _cfg(), work, rng)
  logged = jsonl.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  assert len(logged) == crash_call // 2  # epochs finished before the crash
  state, train_step, eval_step = _fresh()  # new process: fresh objects, same config
  best, hist = loop.fit(state, train_step, eval_step, train, val, _cfg(), work, rng)
  final = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints").restore_latest(
      checkpoint.abstract_like(best))[0]

  _assert_trees_equal(final, ref_final)
  _assert_trees_equal(best, ref_best)
  assert _strip(hist) == _strip(ref_hist)
  assert _strip(jsonl.read_jsonl(tmp_path / "run" / "metrics.jsonl")) == \
      _strip(jsonl.to_jsonable(ref_hist))
  assert int(final.step) == NUM_EPOCHS * (N_TRAIN // BATCH)
  # The scenario exercises the restored callback state: the LR was reduced and best != final.
  assert len({h["lr_scale"] for h in ref_hist}) > 1
  assert int(ref_best.step) < int(ref_final.step)


def test_checkpointer_roundtrip_restores_types_and_values(tmp_path):
  state, train_step, _ = _fresh()
  state, _ = train_step(state, {"image": jnp.zeros((BATCH, 6, 6, 3), jnp.uint8),
                                "label": jnp.zeros((BATCH,), jnp.int32)}, jax.random.PRNGKey(0))
  state = state.replace(opt_state=optim.set_lr_scale(state.opt_state, 0.25))
  meta = {"epoch": 3, "history": [{"val_loss": 0.5}], "rng": [0, 5]}
  ck = checkpoint.Checkpointer(tmp_path / "ck")
  ck.save(3, state, meta)
  ck.save(3, state, meta)  # re-saving an existing step replaces it
  ck.close()
  ck = checkpoint.Checkpointer(tmp_path / "ck")
  restored, rmeta, best = ck.restore_latest(checkpoint.abstract_like(state))
  ck.close()
  assert isinstance(restored, TrainState) and best is None and rmeta == meta
  assert optim.get_lr_scale(restored.opt_state) == 0.25
  _assert_trees_equal(restored, state)
  assert checkpoint.Checkpointer(tmp_path / "empty").restore_latest(
      checkpoint.abstract_like(state)) is None
