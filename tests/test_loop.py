"""Loop, callbacks, metrics, JSONL: Keras-equivalent callbacks, sklearn metrics, fit."""

from __future__ import annotations

import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import optax
import pytest
from sklearn import metrics as skm

from tl_jax.errors import ConfigError, NonFiniteLossError
from tl_jax.train import callbacks, jsonl, loop, optim, steps
from tl_jax.train.metrics import classification_metrics
from tl_jax.train.state import TrainState


class TinyCNN(nn.Module):
  """conv + BN + Dense test model returning (logits, features)."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    f = nn.Conv(4, (3, 3), name="conv")(x)
    f = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(f)
    pooled = nn.relu(f).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(pooled), {"conv": f}


def _ds(n, seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n).astype(np.int32)
  images = rng.integers(0, 80, (n, 6, 6, 3)).astype(np.uint8)
  images[..., 0] += (labels * 80).astype(np.uint8)[:, None, None]  # learnable signal
  return {"image": images, "label": labels, "num_classes": 3}


def _setup(lr=0.05, extra_loss=None, bn_frozen=False):
  model = TinyCNN()
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 3)))
  tx = optim.make_optimizer(mc.ConfigDict(dict(name="sgd", lr=lr, momentum=0.9)), 4, 3,
                            v["params"])
  state = TrainState.create(model.apply, v["params"], v["batch_stats"], tx)
  return state, steps.make_train_step(model, None, extra_loss=extra_loss,
                                                  bn_frozen=bn_frozen), \
      steps.make_eval_step(model)


# ------------------------------------------------------------------ callbacks vs Keras
def _keras():
  os.environ.setdefault("KERAS_BACKEND", "jax")
  return pytest.importorskip("keras")


@pytest.mark.parametrize("seed", range(4))
def test_early_stopping_matches_keras(seed):
  keras = _keras()
  rng = np.random.default_rng(seed)
  values = list(np.round(rng.uniform(0, 1, 15), 2))
  mode, monitor = ("max", "val_accuracy") if seed % 2 else ("min", "val_loss")
  kw = dict(monitor=monitor, mode=mode, patience=int(seed % 3 + 1), min_delta=0.05)
  model = types.SimpleNamespace(stop_training=False)
  ref = keras.callbacks.EarlyStopping(**kw)
  ref.set_model(model)
  ref.on_train_begin()
  ours = callbacks.EarlyStopping(**kw)
  for e, v in enumerate(values):
    ref.on_epoch_end(e, {monitor: float(v)})
    d = ours.update(e, float(v))
    assert d["stop"] == model.stop_training, (e, values)
    assert ours.best == pytest.approx(ref.best) and ours.wait == ref.wait
    if d["stop"]:
      break


@pytest.mark.parametrize("seed", range(4))
def test_reduce_lr_on_plateau_matches_keras(seed):
  keras = _keras()
  rng = np.random.default_rng(100 + seed)
  values = list(np.round(np.cumsum(rng.uniform(-0.1, 0.12, 25)) + 2, 3))
  kw = dict(monitor="val_loss", mode="min", factor=0.5, patience=int(seed % 3 + 1),
            min_delta=0.01, cooldown=int(seed % 2) * 2, min_lr=0.01)
  model = types.SimpleNamespace(stop_training=False,
                                optimizer=types.SimpleNamespace(learning_rate=0.1))
  ref = keras.callbacks.ReduceLROnPlateau(**kw)
  ref.set_model(model)
  ref.on_train_begin()
  ours = callbacks.ReduceLROnPlateau(**kw)
  lr = 0.1
  lrs = []
  for e, v in enumerate(values):
    ref.on_epoch_end(e, {"val_loss": float(v)})
    lr = ours.update(float(v), lr)
    assert lr == pytest.approx(float(model.optimizer.learning_rate), rel=1e-6), (e, values)
    lrs.append(lr)
  assert min(lrs) < 0.1  # the sequence exercises at least one reduction
  restored = callbacks.ReduceLROnPlateau(**kw)
  restored.load_state_dict(jsonl.to_jsonable(ours.state_dict()))
  assert restored.state_dict() == ours.state_dict()


def test_callback_config_errors():
  with pytest.raises(ConfigError):
    callbacks.ReduceLROnPlateau(factor=1.5)
  with pytest.raises(ConfigError):
    callbacks.EarlyStopping(mode="up")
  assert callbacks.EarlyStopping("val_macro_f1").mode == "max"
  assert callbacks.EarlyStopping("val_loss").mode == "min"


# ------------------------------------------------------------------ metrics, jsonl
def test_classification_metrics_against_sklearn():
  labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
  preds = np.array([0, 1, 1, 1, 0, 2, 1, 0, 1, 0])
  m = classification_metrics(labels, preds, num_classes=4, loss=0.7)
  assert m["accuracy"] == pytest.approx(0.6)
  assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
  assert m["macro_recall"] == pytest.approx(skm.recall_score(labels, preds, average="macro"))
  cm = np.array(m["confusion_matrix"])
  np.testing.assert_array_equal(cm[:3, :3], skm.confusion_matrix(labels, preds))
  assert cm.shape == (4, 4) and cm[3].sum() == 0
  np.testing.assert_allclose(m["per_class_accuracy"][:3], [2 / 3, 3 / 4, 1 / 3])
  assert np.isnan(m["per_class_accuracy"][3]) and m["loss"] == 0.7


def test_jsonl_atomic_and_truncated_tail(tmp_path):
  p = tmp_path / "m.jsonl"
  jsonl.append_jsonl(p, {"a": np.float32(1.5), "b": np.arange(2), "c": float("nan")})
  jsonl.append_jsonl(p, {"a": 2})
  with open(p, "a") as f:
    f.write('{"a": 3')  # crash mid-append
  assert jsonl.read_jsonl(p) == [{"a": 1.5, "b": [0, 1], "c": None}, {"a": 2}]
  jsonl.write_json_atomic(tmp_path / "x.json", {"k": np.int64(3)})
  assert jsonl.read_json(tmp_path / "x.json") == {"k": 3}
  assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


# ------------------------------------------------------------------ fit / evaluate
def test_evaluate_matches_manual_and_pads_last_batch():
  state, _, eval_step = _setup()
  ds = _ds(11, 1)
  m = loop.evaluate(state, eval_step, ds, batch_size=4)
  logits, _ = TinyCNN().apply(state.variables, jnp.asarray(ds["image"]) / 255.0)
  preds = np.asarray(jnp.argmax(logits, -1))
  ref = classification_metrics(ds["label"], preds, 3)
  assert m["count"] == 11 and m["accuracy"] == ref["accuracy"]
  assert m["confusion_matrix"] == ref["confusion_matrix"]
  ce = -jax.nn.log_softmax(logits)[np.arange(11), ds["label"]].mean()
  assert m["loss"] == pytest.approx(float(ce), rel=1e-5)


def test_fit_learns_logs_and_returns_best_on_validation(tmp_path):
  state, train_step, eval_step = _setup()
  cfg = mc.ConfigDict(dict(num_epochs=3, batch_size=8, monitor="val_accuracy", progress=False))
  best, hist = loop.fit(state, train_step, eval_step, _ds(32, 0), _ds(12, 1), cfg,
                        str(tmp_path), jax.random.PRNGKey(0))
  assert [h["epoch"] for h in hist] == [0, 1, 2]
  assert jsonl.read_jsonl(tmp_path / "metrics.jsonl") == jsonl.to_jsonable(hist)
  best_epoch = max(range(3), key=lambda e: (hist[e]["val_accuracy"], -e))
  assert hist[best_epoch]["is_best"]
  assert int(best.step) == 4 * (best_epoch + 1)
  m = loop.evaluate(best, eval_step, _ds(12, 1), batch_size=8)
  assert m["accuracy"] == pytest.approx(hist[best_epoch]["val_accuracy"])
  assert all(np.isfinite(h["train_loss"]) for h in hist)


def test_early_stopping_stops_and_restores_best(tmp_path):
  # lr 0 and frozen BN: the val metric never improves after epoch 0
  state, train_step, eval_step = _setup(lr=0.0, bn_frozen=True)
  cfg = mc.ConfigDict(dict(num_epochs=10, batch_size=8, monitor="val_loss", progress=False,
                           early_stopping=dict(patience=2, min_delta=0.0)))
  best, hist = loop.fit(state, train_step, eval_step, _ds(16, 0), _ds(8, 1), cfg, None,
                        jax.random.PRNGKey(0))
  assert len(hist) == 3 and hist[0]["is_best"]
  assert int(best.step) == 2  # state after epoch 0


def test_reduce_lr_lowers_scale_in_state(tmp_path):
  state, train_step, eval_step = _setup(lr=0.0, bn_frozen=True)
  cfg = mc.ConfigDict(dict(num_epochs=4, batch_size=8, monitor="val_loss", progress=False,
                           reduce_lr=dict(patience=1, factor=0.5, min_delta=0.0)))
  _, hist = loop.fit(state, train_step, eval_step, _ds(16, 0), _ds(8, 1), cfg, None,
                     jax.random.PRNGKey(0))
  assert [h["lr_scale"] for h in hist] == [1.0, 1.0, 0.5, 0.25]


def test_nonfinite_loss_raises_with_epoch_and_step():
  bomb = lambda p, aux: jnp.where(aux["labels"].sum() >= 0, jnp.nan, 0.0)
  state, train_step, eval_step = _setup(extra_loss=bomb)
  cfg = mc.ConfigDict(dict(num_epochs=2, batch_size=8, progress=False))
  with pytest.raises(NonFiniteLossError, match=r"epoch 0, step 0"):
    loop.fit(state, train_step, eval_step, _ds(16, 0), _ds(8, 1), cfg, None,
             jax.random.PRNGKey(0))


def test_device_batches_cover_permutation_and_pad():
  ds = _ds(10, 3)
  data = loop.DeviceData(ds, 4)
  order = np.random.default_rng(0).permutation(10)
  got = list(data.batches(order, drop_last=False))
  assert len(got) == 3 and all(b["image"].shape == (4, 6, 6, 3) for b in got)
  mask = np.concatenate([np.asarray(b["mask"]) for b in got])
  labels = np.concatenate([np.asarray(b["label"]) for b in got])[mask > 0]
  np.testing.assert_array_equal(labels, ds["label"][order])
  np.testing.assert_array_equal(np.asarray(got[0]["image"]), ds["image"][order[:4]])
  assert len(list(data.batches(order, drop_last=True))) == 2


def test_fit_without_validation_typed_key_and_padded_last_batch():
  state, train_step, eval_step = _setup()
  cfg = mc.ConfigDict(dict(num_epochs=2, batch_size=8, drop_last=False, progress=False,
                           monitor="train_loss"))
  final, hist = loop.fit(state, train_step, eval_step, _ds(13, 0), None, cfg, None,
                         jax.random.key(3))
  assert int(final.step) == 4 and len(hist) == 2 and "val_loss" not in hist[0]
  assert all(np.isfinite(h["train_loss"]) for h in hist)
  small = mc.ConfigDict(dict(num_epochs=1, batch_size=8, progress=False))  # 4 < batch, drop_last
  with pytest.raises(ConfigError, match="batch_size"):
    loop.fit(final, train_step, eval_step, _ds(4, 0), None, small, None, jax.random.key(3))


def test_reduce_lr_without_scale_state_is_a_config_error():
  model = TinyCNN()
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 3)))
  state = TrainState.create(model.apply, v["params"], v["batch_stats"], optax.sgd(0.1))
  cfg = mc.ConfigDict(dict(num_epochs=1, batch_size=8, progress=False, monitor="val_loss",
                           reduce_lr=dict(patience=1)))
  with pytest.raises(ConfigError, match="reduce_lr"):
    loop.fit(state, steps.make_train_step(model), steps.make_eval_step(model), _ds(8, 0),
             _ds(8, 1), cfg, None, jax.random.PRNGKey(0))
