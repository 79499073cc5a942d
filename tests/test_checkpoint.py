"""Checkpoint round trips and bit-identical resume of an interrupted engine run on CPU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest

from tl_jax.train import checkpoint, jsonl, optim, steps
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


def _segments(model, params):
  """Two segments (as two-stage fine-tuning): conv bias frozen, then everything at a lower LR."""
  from tl_jax.engine import fit as engine
  from tl_jax.engine.learners import SupervisedLearner
  segs = []
  for name, lr, frozen in (("stage1", 0.1, ("conv/bias",)), ("stage2", 0.03, ())):
    ocfg = mc.ConfigDict(dict(name="sgd", lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-3,
                              schedule="cosine", schedule_unit="epoch", frozen=frozen))
    tx = optim.make_optimizer(ocfg, N_TRAIN // BATCH, NUM_EPOCHS, params)
    segs.append(engine.Segment(name, NUM_EPOCHS, SupervisedLearner(model, tx, _aug, None), lr))
  return segs


class Crash(Exception):
  pass


def _fit(workdir, crash_epoch=None):
  """A K = 2 engine run with reduce-LR and early stopping, checkpointed every epoch; with
  `crash_epoch` the process 'dies' in that (global) epoch's end-of-epoch hook, after its
  metrics were logged and before its checkpoint."""
  from tl_jax.engine import fit as engine
  model = TinyCNN()
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 3)))
  train, val = _ds(N_TRAIN, 0), _ds(8, 1)
  images = np.concatenate([train["image"], val["image"]])
  labels = np.concatenate([train["label"], val["label"]])
  data = engine.SeedData(images, labels, np.stack([np.arange(N_TRAIN)] * 2),
                         np.arange(N_TRAIN, N_TRAIN + 8), 3)
  cfg = engine.FitConfig(batch_size=BATCH, eval_batch_size=5, drop_last=True,
                         monitor="val_accuracy", patience=6, rl_patience=0, rl_factor=0.5,
                         checkpoint_every=1)
  variables = jax.tree.map(lambda x: np.stack([np.asarray(x)] * 2), dict(v))

  def hook(i, state, record):
    if crash_epoch is not None and record["epoch"] == crash_epoch:
      raise Crash()

  wds = [workdir / "s0", workdir / "s1"]
  return engine.fit(_segments(model, v["params"]), data, (0, 1), variables, cfg, wds,
                    checkpoint_dir=workdir / "ckpt", on_epoch_end=hook)


def _strip(hist):
  return [{k: v for k, v in h.items() if k != "time_s"} for h in hist]


def _assert_trees_equal(a, b):
  # Static fields (apply_fn, tx) are new objects per run; compare leaf paths and values.
  la, lb = jax.tree.flatten_with_path(a)[0], jax.tree.flatten_with_path(b)[0]
  assert [jax.tree_util.keystr(p) for p, _ in la] == [jax.tree_util.keystr(p) for p, _ in lb]
  for (_, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _fresh():
  """A freshly initialised state and a jitted train step (the step donates the state)."""
  model = TinyCNN()
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 3)))
  ocfg = mc.ConfigDict(dict(name="sgd", lr=0.1, momentum=0.9, schedule="constant"))
  tx = optim.make_optimizer(ocfg, N_TRAIN // BATCH, NUM_EPOCHS, v["params"])
  state = TrainState.create(model.apply, v["params"], v["batch_stats"], tx)
  return state, steps.make_train_step(model, _aug), None


@pytest.mark.parametrize("crash_epoch", [2, 5])  # in stage 1; in stage 2
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, crash_epoch):
  ref = _fit(tmp_path / "ref")
  with pytest.raises(Crash):
    _fit(tmp_path / "run", crash_epoch)
  logged = jsonl.read_jsonl(tmp_path / "run" / "s0" / "metrics.jsonl")
  assert len(logged) == crash_epoch + 1  # the crashed epoch was logged, not checkpointed
  got = _fit(tmp_path / "run")  # a new process: fresh objects, same config
  _assert_trees_equal(got.variables, ref.variables)
  for i in range(2):
    assert _strip(got.histories[i]) == _strip(ref.histories[i])
    assert _strip(jsonl.read_jsonl(tmp_path / "run" / f"s{i}" / "metrics.jsonl")) == \
        _strip(ref.histories[i])
  # The scenario exercises the restored callback state: the LR was reduced, two stages ran.
  assert len({h["lr_scale"] for h in ref.histories[0]}) > 1
  assert {h["stage"] for h in ref.histories[0]} == {"stage1", "stage2"}


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


def test_corrupt_newest_checkpoint_resumes_from_the_previous_one(tmp_path, caplog):
  """A truncated newest checkpoint (kill or full disk during its write) is reported and passed
  over: the run resumes from the one before and ends bit-identical to an uninterrupted run."""
  ref = _fit(tmp_path / "ref")
  with pytest.raises(Crash):
    _fit(tmp_path / "run", 4)
  ckpt = tmp_path / "run" / "ckpt"
  steps_on_disk = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  assert len(steps_on_disk) >= 2
  newest = ckpt / str(steps_on_disk[-1])
  for f in (newest / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])  # truncated mid-write
  with caplog.at_level("WARNING"):
    got = _fit(tmp_path / "run")
  assert any("unreadable" in r.getMessage() and str(steps_on_disk[-1]) in r.getMessage()
             for r in caplog.records)
  _assert_trees_equal(got.variables, ref.variables)
  assert _strip(got.histories[0]) == _strip(ref.histories[0])


def test_failed_run_leaves_no_partial_checkpoint_folders(tmp_path):
  """A save that never finished (full disk, kill) leaves orbax's temp folder; a run that fails
  removes such folders and keeps only complete checkpoints."""
  partial = tmp_path / "run" / "ckpt" / "3.orbax-checkpoint-tmp-1700000000"
  partial.mkdir(parents=True)
  (partial / "junk").write_bytes(b"x" * 10)
  with pytest.raises(Crash):
    _fit(tmp_path / "run", 2)
  left = sorted(p.name for p in (tmp_path / "run" / "ckpt").iterdir())
  assert not [n for n in left if "tmp" in n] and any(n.isdigit() for n in left)
