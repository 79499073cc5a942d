"""The one training engine: K seeds == one seed at a time for every method (vmap and map, 1 and 4
devices), Keras-equal early stopping / reduce-LR inside the compiled epoch, padding that changes
nothing, bit-identical resume of a killed K-seed L2T-www run."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config, write_tiny_npz
from tl_jax import experiment
from tl_jax.engine import fit as engine
from tl_jax.errors import ConfigError, NonFiniteLossError
from tl_jax.train import callbacks, jsonl
from tl_jax.transfer import init as tinit

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("scratch", "frozen_backbone", "fine_tune", "full_fine_tune", "feature_extraction",
           "ufm", "l2t_ww", "l2t_www")
# one method per step family: the supervised step in the two-segment engine (warm-up, then all
# layers) and the KT step with meta-parameters; the 4-device test and the 'vmap' seed loop run
# these (every method's own K = 3 numerics are checked under the 'map' loop)
DEVICE_METHODS = ("fine_tune", "l2t_www")
# per-epoch metrics compared between runs (time_s is wall clock)
SKIP = ("time_s",)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  data = write_tiny_npz(tmp_path_factory.mktemp("data"), n_per_class=13)
  src = tmp_path_factory.mktemp("source")
  experiment.train_and_evaluate(tiny_config(data, **{"data.val_per_class": 3}), src)
  return data, src


def method_config(data, src, method, **kw):
  # 7 per class = 21 images, batch 8: a padded last batch of 5 real rows
  over = {"data.n_per_class": 7, "train.num_epochs": 3, "train.drop_last": False}
  if method in ("ufm", "l2t_ww", "l2t_www"):
    over.update({"kt.method": method, "kt.source_model": "tiny_cnn", "kt.source_num_classes": 3,
                 "kt.source_kind": "tl_jax", "kt.source_weights": str(src),
                 "kt.source_kwargs.width": 4, "kt.pairs": "0-0,1-1,1-0"})
  else:
    over["transfer.strategy"] = method
    if method != "scratch":
      over["transfer.init_from"] = str(src)
    if method == "fine_tune":
      over["transfer.warmup_epochs"] = 2
    if method == "feature_extraction":
      over["model.head"] = "dense256"
  over.update(kw)
  return tiny_config(data, **over)


def _run(cfg, seeds, root):
  wds = [root / f"seed{s}" for s in seeds]
  experiment.run_seeds(cfg, seeds, wds)
  return {s: _outputs(w) for s, w in zip(seeds, wds)}


def _outputs(wd):
  summary = jsonl.read_json(wd / "summary.json")
  hist = [{k: v for k, v in r.items() if k not in SKIP} for r in jsonl.read_jsonl(
      wd / "metrics.jsonl")]
  return {"variables": tinit.load_variables(wd), "summary": summary, "history": hist}


def _assert_same_run(a, b, atol=1e-5):
  chex.assert_trees_all_close(a["variables"], b["variables"], atol=atol, rtol=atol)
  assert a["summary"]["best_epoch"] == b["summary"]["best_epoch"]
  assert len(a["history"]) == len(b["history"])
  for ra, rb in zip(a["history"], b["history"]):
    assert ra.keys() == rb.keys()
    for k in ra:
      if isinstance(ra[k], float):
        assert ra[k] == pytest.approx(rb[k], abs=atol, rel=atol), (k, ra, rb)
      else:
        assert ra[k] == rb[k], k
  for k in ("test_accuracy", "val_loss", "train_loss", "test_loss"):
    assert a["summary"][k] == pytest.approx(b["summary"][k], abs=atol)


@pytest.fixture(scope="module")
def k1_run(setup, tmp_path_factory):
  """The K = 1, one-device run of seed 1 per method (computed once, shared by the tests)."""
  cache = {}

  def get(method):
    if method not in cache:
      data, src = setup
      cache[method] = _run(method_config(data, src, method), [1],
                           tmp_path_factory.mktemp(f"k1_{method}"))[1]
    return cache[method]
  return get


@pytest.mark.parametrize("method", METHODS)
def test_seed_of_a_k3_run_equals_the_k1_run(setup, k1_run, tmp_path, method):
  data, src = setup
  one = k1_run(method)
  assert one["history"] and one["summary"]["method"] == method
  # 'map' (the CPU default) for every method; 'vmap' (the GPU/TPU default) per step family
  for loop in ("vmap", "map") if method in DEVICE_METHODS else ("map",):
    many = _run(method_config(data, src, method, **{"train.seed_loop": loop}), [0, 1, 2],
                tmp_path / f"k3_{loop}")
    _assert_same_run(many[1], one)
    # the seeds really differ (own draw, own init, own batches)
    assert not np.allclose(many[0]["history"][-1]["train_loss"],
                           many[2]["history"][-1]["train_loss"])
  if method == "fine_tune":  # two segments of the engine: the warm-up, then all layers
    assert [r["stage"] for r in one["history"]] == ["warmup_head"] * 2 + ["fine_tune"] * 3
  if method in ("l2t_ww", "l2t_www"):  # meta-parameters moved, identically
    assert one["history"][0]["train_meta_grad_norm"] > 0


def test_frozen_backbone_params_bit_identical(setup, tmp_path):
  data, src = setup
  out = _run(method_config(data, src, "frozen_backbone", **{"transfer.bn": "frozen"}), [0],
             tmp_path)[0]["variables"]
  source = tinit.load_variables(src)
  flat = jax.tree_util.tree_flatten_with_path(out)[0]
  src_flat = dict(jax.tree_util.tree_flatten_with_path(source)[0])
  checked = 0
  for path, leaf in flat:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if "head" in name or path not in src_flat:
      continue
    np.testing.assert_array_equal(leaf, src_flat[path], err_msg=name)
    checked += 1
  assert checked >= 4


def test_early_stopping_and_reduce_lr_match_the_keras_callbacks(setup, tmp_path):
  """The compiled [K]-vector callbacks take the decisions tl_jax.train.callbacks (tested against
  Keras' semantics in test_loop.py) takes on the same monitored values."""
  data, src = setup
  cfg = method_config(data, src, "scratch", **{
      "train.num_epochs": 12, "train.monitor": "val_loss", "optimizer.lr": 0.3,
      "train.early_stopping.patience": 2, "train.reduce_lr.patience": 1,
      "train.reduce_lr.factor": 0.5})
  runs = _run(cfg, [0, 1, 2], tmp_path)
  for s, run in runs.items():
    hist = run["history"]
    es = callbacks.EarlyStopping("val_loss", patience=2)
    rl = callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=1)
    lr, scales = cfg.optimizer.lr, []
    stop_at = None
    for r in hist:
      d = es.update(r["stage_epoch"], r["val_loss"])
      lr = rl.update(r["val_loss"], lr)
      scales.append(lr / cfg.optimizer.lr)
      if d["stop"]:
        stop_at = r["stage_epoch"]
        break
    if len(hist) < 12:  # the engine stopped this seed where the callback stops
      assert stop_at == hist[-1]["stage_epoch"], s
    else:
      assert stop_at is None, s
    assert run["summary"]["best_epoch"] == es.best_epoch
    # the engine records the scale in force during the epoch; the decision applies afterwards
    np.testing.assert_allclose([r["lr_scale"] for r in hist][1:], scales[:len(hist) - 1])
  assert any(len(r["history"]) < 12 for r in runs.values())  # early stopping did act


def test_nonfinite_loss_names_seed_epoch_and_batch(setup, tmp_path):
  data, src = setup
  cfg = method_config(data, src, "scratch", **{"optimizer.lr": 1e30})
  with pytest.raises(NonFiniteLossError, match=r"seed \d+ at epoch \d+, batch \d+"):
    experiment.run_seeds(cfg, [0, 1], [tmp_path / "a", tmp_path / "b"])


def test_unhonoured_fields_are_errors(setup, tmp_path):
  data, src = setup
  bad = [
      ({"transfer.unfreeze": ("conv1",)}, "scratch", "transfer.unfreeze"),
      ({"kt.beta": 2.0}, "scratch", "kt.beta"),
      ({"kt.meta_lr": 0.1}, "ufm", "kt.meta_lr"),
      ({"train.label_smoothing": 0.1}, "l2t_ww", "train.label_smoothing"),
      ({"input.augment": "crop_flip"}, "feature_extraction", "input.augment"),
      ({"transfer.bn": "live"}, "feature_extraction", "transfer.bn"),
      ({"transfer.init_from": "/somewhere"}, "scratch", "transfer.init_from"),
      ({"model.head_kwargs.width": 3}, "scratch", "model.head_kwargs"),
  ]
  for over, method, field in bad:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
      experiment.train_and_evaluate(method_config(data, src, method, **over), tmp_path)
  with pytest.raises(ConfigError, match="transfer.strategy"):
    experiment.train_and_evaluate(method_config(data, src, "l2t_ww", **{
        "transfer.strategy": "frozen_backbone", "transfer.init_from": str(src)}), tmp_path)


def test_padded_batch_equals_its_real_rows_plain_step():
  """44 real + 84 padded rows (copies of row 0, mask 0) == the 44 rows: loss, grads, BN stats."""
  from tl_jax.models import create_model
  from tl_jax.train import optim, steps
  from tl_jax.train.state import TrainState
  model = create_model("tiny_cnn", 3, width=4)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (44, 16, 16, 3)).astype(np.uint8)
  y = rng.integers(0, 3, 44).astype(np.int32)
  xp = np.concatenate([x, np.repeat(x[:1], 84, 0)])
  yp = np.concatenate([y, np.repeat(y[:1], 84, 0)])
  mask = np.concatenate([np.ones(44), np.zeros(84)]).astype(np.float32)
  v = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  tx = optim.make_optimizer({"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": "constant"},
                            1, 1, v["params"])
  step = steps.make_train_step(model, jit=True)
  s0 = lambda: TrainState.create(model.apply, *jax.tree.map(  # noqa: E731 - the step donates
      jnp.copy, (v["params"], v["batch_stats"])), tx)
  key = jax.random.key(1)
  a, ma = step(s0(), {"image": jnp.asarray(x), "label": jnp.asarray(y)}, key)
  b, mb = step(s0(), {"image": jnp.asarray(xp), "label": jnp.asarray(yp),
                      "mask": jnp.asarray(mask)}, key)
  assert float(mb["count"]) == 44
  np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-6)
  chex.assert_trees_all_close(a.params, b.params, atol=1e-6)
  chex.assert_trees_all_close(a.batch_stats, b.batch_stats, atol=1e-6)


def test_padded_batch_equals_its_real_rows_l2t_iteration():
  from tl_jax.kt import KTConfig, KnowledgeTransfer, pairs_for_models
  from tl_jax.models import create_model
  src, tgt = create_model("tiny_cnn", 3, width=4), create_model("tiny_cnn", 3, width=6)
  x0 = jnp.zeros((1, 16, 16, 3))
  sv, tv = src.init(jax.random.key(0), x0), tgt.init(jax.random.key(1), x0)
  pairs = pairs_for_models("0-0,1-1,1-0", src, sv, tgt, tv, (16, 16, 3))
  kt = KnowledgeTransfer(src, tgt, pairs, KTConfig(method="l2t_www"), lambda c: 0.1,
                         preprocess=lambda k, im: im.astype(jnp.float32) / 255.0)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (44, 16, 16, 3)).astype(np.uint8)
  y = rng.integers(0, 3, 44).astype(np.int32)
  pad = {"image": jnp.asarray(np.concatenate([x, np.repeat(x[:1], 84, 0)])),
         "label": jnp.asarray(np.concatenate([y, np.repeat(y[:1], 84, 0)])),
         "mask": jnp.asarray(np.r_[np.ones(44), np.zeros(84)].astype(np.float32))}
  key = jax.random.key(3)
  a, ma = jax.jit(kt.iteration)(kt.init(key, tv), {"image": jnp.asarray(x),
                                                   "label": jnp.asarray(y)}, key, sv)
  b, mb = jax.jit(kt.iteration)(kt.init(key, tv), pad, key, sv)
  for k in ("loss", "ce", "wfm", "meta_loss", "meta_grad_norm"):
    np.testing.assert_allclose(float(ma[k]), float(mb[k]), rtol=2e-5, err_msg=k)
  chex.assert_trees_all_close(a.params, b.params, atol=1e-5)
  chex.assert_trees_all_close(a.batch_stats, b.batch_stats, atol=1e-5)
  chex.assert_trees_all_close(a.meta_params, b.meta_params, atol=1e-6)


def test_killed_k3_l2t_www_run_resumes_bit_identically(setup, tmp_path, monkeypatch):
  from tl_jax.analysis import traces
  data, src = setup
  cfg = method_config(data, src, "l2t_www", **{"train.num_epochs": 4,
                                                "train.checkpoint_every": 1})
  ref = _run(cfg, [0, 1, 2], tmp_path / "ref")

  class Killed(Exception):
    pass

  orig = traces.TraceRecorder.__call__

  def crash(self, state, record):
    if record["epoch"] == 2:
      raise Killed()
    return orig(self, state, record)

  monkeypatch.setattr(traces.TraceRecorder, "__call__", crash)
  wds = [tmp_path / "cut" / f"seed{s}" for s in (0, 1, 2)]
  with pytest.raises(Killed):
    experiment.run_seeds(cfg, [0, 1, 2], wds)
  assert not (wds[0] / "summary.json").exists()
  monkeypatch.setattr(traces.TraceRecorder, "__call__", orig)
  experiment.run_seeds(cfg, [0, 1, 2], wds)
  for s, w in zip((0, 1, 2), wds):
    got = _outputs(w)
    chex.assert_trees_all_equal(got["variables"], ref[s]["variables"])
    assert got["history"] == ref[s]["history"]


_DEVICES_SCRIPT = textwrap.dedent("""
    import json, pathlib, sys
    sys.path.insert(0, {root!r})
    import jax
    assert len(jax.devices()) == 4, jax.devices()
    from tests.helpers import tiny_config
    from tests.test_engine import method_config, _run
    data, src, out = json.loads({args!r})
    from tests.test_engine import DEVICE_METHODS
    for method in DEVICE_METHODS:
      _run(method_config(data, src, method), [0, 1, 2, 3], pathlib.Path(out) / method / "k4")
      _run(method_config(data, src, method), [1], pathlib.Path(out) / method / "k1")
""")


def test_four_devices_equal_one_device(setup, k1_run, tmp_path):
  """For each step family, K = 4 (seed axis sharded over 4 fake CPU devices) and K = 1 (batch
  axis sharded) give the 1-device numbers (weights and metrics)."""
  data, src = setup
  out = tmp_path / "dev4"
  # 4 fake devices share 2 cores (and the other pytest worker): XLA:CPU aborts an all-reduce
  # whose participants do not all arrive within 40 s by default, which a loaded CI machine hit
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
             "--xla_force_host_platform_device_count=4 "
             "--xla_cpu_collective_call_terminate_timeout_seconds=900")
  script = _DEVICES_SCRIPT.format(root=str(ROOT), args=json.dumps([data, str(src), str(out)]))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                        timeout=1500, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for method in DEVICE_METHODS:
    ref = k1_run(method)
    for kind in ("k4", "k1"):
      got = _outputs(out / method / kind / "seed1")
      assert len(got["summary"]["devices"]) == 4
      _assert_same_run(got, ref, atol=2e-5)


def test_epoch_batches_pad_and_drop_last():
  order = jnp.arange(12, dtype=jnp.int32)
  pos, mask = engine.epoch_batches(order, 5, drop_last=False)
  assert pos.shape == (3, 5) and float(mask.sum()) == 12 and float(mask[-1].sum()) == 2
  pos, mask = engine.epoch_batches(order, 5, drop_last=True)
  assert pos.shape == (2, 5) and float(mask.sum()) == 10
  pos, mask = engine.epoch_batches(order[:3], 5, drop_last=True)  # the only batch is kept
  assert pos.shape == (1, 5) and float(mask.sum()) == 3
  assert engine.steps_per_epoch(12, 5, True) == 2 and engine.steps_per_epoch(12, 5, False) == 3


def test_macro_scores_match_sklearn():
  from sklearn import metrics as skm
  rng = np.random.default_rng(0)
  y, p = rng.integers(0, 4, 50), rng.integers(0, 3, 50)  # class 3 never predicted
  cm = engine.confusion(jnp.asarray(y), jnp.asarray(p), jnp.ones(50), 5)  # class 4 absent
  f1, rec = engine.macro_scores(cm)
  assert float(f1) == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))
  assert float(rec) == pytest.approx(skm.recall_score(y, p, average="macro", zero_division=0))


def test_seed_keys_depend_on_the_seed_alone():
  a = np.asarray(engine.seed_key(3, "shuffle"))
  np.testing.assert_array_equal(a, np.asarray(jax.random.fold_in(jax.random.PRNGKey(3), 1)))
  assert not np.array_equal(a, np.asarray(engine.seed_key(3, "step")))
  with pytest.raises(ConfigError, match="train.seed_loop"):
    engine.FitConfig(batch_size=4, seed_loop="pmap")
