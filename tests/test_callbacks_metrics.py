"""Callbacks, metrics, JSONL, evaluation: Keras-equivalent callbacks, sklearn metrics, the engine's evaluate."""

from __future__ import annotations

import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from sklearn import metrics as skm

from tl_jax.errors import ConfigError
from tl_jax.train import callbacks, jsonl, optim, steps
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


# ------------------------------------------------------------------ evaluate
def test_evaluate_matches_manual_and_pads_last_batch():
  from tl_jax.engine import fit as engine
  from tl_jax.engine.learners import SupervisedLearner
  state, _, _ = _setup()
  ds = _ds(11, 1)
  learner = SupervisedLearner(TinyCNN(), state.tx, None, None)
  stacked = jax.tree.map(lambda x: x[None], learner.eval_variables(state))
  for loop in ("map", "vmap"):
    m = engine.evaluate(learner, stacked, ds["image"], ds["label"], np.arange(11), 3,
                        eval_batch_size=4, seed_loop=loop)[0]
    logits, _ = TinyCNN().apply(state.variables, jnp.asarray(ds["image"]) / 255.0)
    preds = np.asarray(jnp.argmax(logits, -1))
    ref = classification_metrics(ds["label"], preds, 3)
    assert m["count"] == 11 and m["accuracy"] == ref["accuracy"]
    assert m["confusion_matrix"] == ref["confusion_matrix"]
    ce = -jax.nn.log_softmax(logits)[np.arange(11), ds["label"]].mean()
    assert m["loss"] == pytest.approx(float(ce), rel=1e-5)
