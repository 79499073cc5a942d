"""Seed-document scenarios: configs load, scenario glue is numerically right, one tiny real run."""

import pathlib
import runpy

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tl_jax import experiment, models
from tl_jax.compare import run_comparison
from tl_jax.sweep.grid import apply_overrides
from tl_jax.data import preprocess
from tl_jax.models.efficientnet import EfficientNetLite0
from tl_jax.scenarios import gtsrb, tables
from tl_jax.models.cnn import Seed003CNN

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for pat in ("seed000_*.py", "seed001_*.py", "seed003_*.py", "seed004_*.py")
                 for p in (ROOT / "configs").glob(pat))
SMALL = ((3, 1, 1, 8, 8), (3, 2, 2, 8, 16), (3, 1, 2, 16, 16))  # a 3-block EfficientNet


def _load(path):
  return runpy.run_path(str(path))["get_config"]()


def test_there_are_scenario_configs():
  names = {p.name.split("_")[0] for p in CONFIGS}
  assert names == {"seed000", "seed001", "seed003", "seed004"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_every_method_builds(path):
  c = _load(path)
  variants = [c]
  if "compare" in c:
    base = ml_collections.ConfigDict(c.to_dict())
    del base["compare"]
    if c.compare.source:
      variants.append(apply_overrides(base, c.compare.source))
    variants += [apply_overrides(base, c.compare.methods[m]) for m in c.compare.order]
  for v in variants:
    model, head_rx = experiment.build_model(v, 3)
    assert isinstance(head_rx, str) and head_rx.startswith("^")
    assert v.transfer.strategy in ("scratch", "frozen_backbone", "fine_tune", "full_fine_tune",
                                   "feature_extraction")


def test_cut_model_same_params_and_eval_outputs_as_efficientnet():
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  ref = EfficientNetLite0(num_classes=5, blocks=SMALL, stem_features=8, head_features=16)
  cut = EfficientNetLite0(num_classes=5, blocks=SMALL, stem_features=8, head_features=16,
                          frozen_blocks=2)
  v = ref.init(jax.random.key(1), x)
  v2 = cut.init(jax.random.key(1), x)
  chex.assert_trees_all_equal_shapes(v, v2)
  chex.assert_trees_all_close(ref.apply(v, x)[0], cut.apply(v, x)[0], atol=1e-6)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_cut_model_stops_gradients_and_bn_updates_below_the_cut(k):
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  m = EfficientNetLite0(num_classes=3, blocks=SMALL, stem_features=8, head_features=16,
                        frozen_blocks=k)
  v = m.init(jax.random.key(1), x)

  def loss(p):
    (logits, _), upd = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                               mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    return jnp.sum(logits ** 2), upd

  g, upd = jax.grad(loss, has_aux=True)(v["params"])
  # part index: stem -1, blocks 0..2, conv_head 3; frozen iff k > 0 and index < k
  parts = {"conv_stem": -1, "blocks_0": 0, "blocks_1": 1, "blocks_2": 2, "conv_head": 3}
  for name, i in parts.items():
    gn = float(sum(jnp.abs(l).sum() for l in jax.tree.leaves(g[name])))
    frozen = k > 0 and i < k
    assert (gn == 0.0) == frozen, (name, k, gn)
  assert float(jnp.abs(g["fc"]["kernel"]).sum()) > 0
  # BatchNorm statistics below the cut are not updated (Keras trainable=False)
  bs_old, bs_new = v["batch_stats"], upd["batch_stats"]
  chex.assert_trees_all_equal(bs_old["bn0"], bs_new["bn0"]) if k > 0 else None
  stem_changed = not np.allclose(bs_old["bn0"]["mean"], bs_new["bn0"]["mean"])
  assert stem_changed == (k == 0)


def test_seed003_cnn_param_count_and_variants():
  x = jnp.zeros((2, 32, 32, 3))
  m = models.create_model("seed003_cnn", 100)
  p = m.init(jax.random.key(0), x)["params"]
  assert models.count_params(p) == 896 + 9248 + 18496 + 36928 + 2097664 + 513 * 100
  mb = Seed003CNN(num_classes=10, dropout=0.25, batch_norm=True, width=8, fc=32)
  v = mb.init(jax.random.key(0), x)
  assert "batch_stats" in v and "conv1_1_bn" in v["batch_stats"]
  a = mb.apply(v, x + 1.0, train=True, rngs={"dropout": jax.random.key(1)},
               mutable=["batch_stats"])[0][0]
  b = mb.apply(v, x + 1.0, train=True, rngs={"dropout": jax.random.key(2)},
               mutable=["batch_stats"])[0][0]
  assert not np.allclose(a, b)  # dropout active in train mode
  chex.assert_trees_all_close(mb.apply(v, x)[0], mb.apply(v, x)[0])


def test_gtsrb_preprocessing_order_and_equalisation():
  rng = np.random.default_rng(0)
  img = (rng.random((3, 32, 32, 3)) * 120 + 40).astype(np.uint8)
  out = gtsrb.preprocess_images(img)
  assert out.shape == (3, 32, 32, 1) and out.dtype == np.uint8
  manual = preprocess.equalize_hist(preprocess.gaussian_blur(preprocess.to_grey(img), 0.8))
  np.testing.assert_array_equal(out, manual)
  assert out.min() == 0 and out.max() == 255  # equalised: the full range is used


@pytest.mark.shared
def test_seed004_gtsrb_runs_one_epoch_and_tables(tmp_path, monkeypatch):
  monkeypatch.setenv("TL_JAX_SCENARIO_CACHE", str(tmp_path / "cache"))
  c = _load(ROOT / "configs" / "seed004_gtsrb_lenet.py")
  assert pathlib.Path(c.data.train).is_file()
  z = np.load(c.data.train)
  assert z["image"].shape == (1720, 32, 32, 1)
  c.data.n_per_class = 2
  c.data.val_per_class = 2
  c.train.num_epochs = 1
  c.train.batch_size = 8
  c.compare.seeds = (0,)
  c.compare.order = ("lenet5_20ep",)
  out = run_comparison(c, tmp_path / "wd")
  s = out["runs"][0]
  assert s["train_size"] == 2 * 43 and s["epochs_run"] == 1
  assert 0.0 <= s["test_accuracy"] <= 1.0 and np.isfinite(s["test_loss"])
  text = tables.write(tmp_path / "wd", tmp_path / "res")
  assert f"{s['test_accuracy']:.4f}" in text and f"{s['val_macro_f1']:.4f}" in text
  assert (tmp_path / "res" / "tables.md").is_file()
  assert (tmp_path / "res" / "lenet5_20ep_seed0_confusion_matrix.png").is_file()


def test_tables_write_keeps_the_source_out_of_the_method_comparison(tmp_path):
  """A compare workdir (source/ + runs/<method>/n*/seed*): Table 7 has the methods only, every
  run (the source too) gets its own train/val/test table, seed-0 figures are copied."""
  import json
  wd = tmp_path / "wd"
  def put(rel, **kw):
    d = wd / rel
    d.mkdir(parents=True)
    s = dict(test_accuracy=0.5, val_accuracy=0.4, train_accuracy=0.9, epochs_run=2,
             best_epoch=1, wall_s=3.0, **kw)
    (d / "summary.json").write_text(json.dumps(s))
    (d / "curves.png").write_bytes(b"png")
    return s
  put("source", test_macro_f1=0.777)
  a = put("runs/scratch/n5/seed0", test_macro_f1=0.1111)
  put("runs/frozen/n5/seed1", test_macro_f1=0.2222)
  text = tables.write(wd, tmp_path / "res")
  table7 = text.split("## source")[0]
  assert "| metric | frozen (seed1) | scratch (seed0) |" in table7  # runs/ sorted by path
  assert "| macro-F1 | 0.2222 | 0.1111 |" in table7 and "0.7770" not in table7
  assert "## source" in text and "| accuracy | 0.9000 | 0.4000 | 0.5000 |" in text
  assert f"{a['test_macro_f1']:.4f}" in text.split("## scratch (seed0)")[1]
  assert (tmp_path / "res" / "tables.md").read_text() == text
  assert sorted(p.name for p in (tmp_path / "res").glob("*.png")) == [
      "scratch_seed0_curves.png", "source_curves.png"]


def test_cut_model_bn_momentum_sets_running_average_rate():
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3)) + 2.0
  m = EfficientNetLite0(num_classes=3, blocks=SMALL, stem_features=8, head_features=16,
                        bn_momentum=0.9)
  v = m.init(jax.random.key(1), x)
  _, upd = m.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
  stem = m.apply(v, x, capture_intermediates=lambda mdl, _: mdl.name == "conv_stem",
                 mutable=["intermediates"])[1]["intermediates"]["conv_stem"]["__call__"][0]
  expected = 0.9 * v["batch_stats"]["bn0"]["mean"] + 0.1 * stem.mean(axis=(0, 1, 2))
  chex.assert_trees_all_close(upd["batch_stats"]["bn0"]["mean"], expected, rtol=1e-5, atol=1e-6)
  # the same path in a block and in the head conv
  assert not np.allclose(upd["batch_stats"]["blocks_1"]["bn0"]["mean"],
                         v["batch_stats"]["blocks_1"]["bn0"]["mean"])
