"""End-to-end runs of train_and_evaluate / run_comparison on tiny data (seconds each)."""

import json

import chex
import flax
import jax
import numpy as np
import pytest

from tests.helpers import tiny_config, write_tiny_npz
from tl_jax import compare, experiment
from tl_jax.transfer import init as tinit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return write_tiny_npz(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def source_dir(data, tmp_path_factory):
  wd = tmp_path_factory.mktemp("source")
  experiment.train_and_evaluate(tiny_config(data, **{"train.num_epochs": 3}), wd)
  return wd


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def test_scratch_run_writes_summary_metrics_and_figures(data, source_dir):
  s = json.loads((source_dir / "summary.json").read_text())
  for k in ("test_accuracy", "val_accuracy", "train_accuracy", "test_macro_f1",
            "test_macro_recall", "test_loss", "test_confusion_matrix"):
    assert k in s
  assert np.asarray(s["test_confusion_matrix"]).sum() == 18  # 6 test images x 3 classes
  lines = (source_dir / "metrics.jsonl").read_text().strip().splitlines()
  assert len(lines) == 3 and all("val_accuracy" in json.loads(l) for l in lines)
  assert (source_dir / "curves.png").stat().st_size > 0
  assert (source_dir / "confusion_matrix.png").stat().st_size > 0
  assert s["test_accuracy"] > 1 / 3  # learnable toy data: above chance after 3 epochs
  # the run's full config is stored beside its numbers
  cfg = json.loads((source_dir / "config.json").read_text())
  assert cfg["train"]["num_epochs"] == 3 and cfg["data"]["train"] == data["train"]


def test_frozen_backbone_keeps_source_weights_bit_identical(data, source_dir, tmp_path):
  """The default transfer.bn ('frozen_layers'): params AND BatchNorm statistics of the frozen
  part stay bit-identical; with 'live' the frozen layers' statistics move."""
  cfg = tiny_config(data, **{"transfer.strategy": "frozen_backbone",
                             "transfer.init_from": str(source_dir), "train.num_epochs": 2})
  experiment.train_and_evaluate(cfg, tmp_path / "default")
  src = _flat(tinit.load_variables(source_dir))
  out = _flat(tinit.load_variables(tmp_path / "default"))
  backbone = [k for k in src if not k.startswith("params/head")]
  assert any(k.startswith("batch_stats/") for k in backbone)
  for k in backbone:
    np.testing.assert_array_equal(out[k], src[k], err_msg=k)
  # ... while the head moved.
  assert not np.array_equal(out["params/head/kernel"], src["params/head/kernel"])
  cfg.transfer.bn = "live"
  experiment.train_and_evaluate(cfg, tmp_path / "live")
  live = _flat(tinit.load_variables(tmp_path / "live"))
  np.testing.assert_array_equal(live["params/conv0/kernel"], src["params/conv0/kernel"])
  assert not np.array_equal(live["batch_stats/bn0/mean"], src["batch_stats/bn0/mean"])


def test_fine_tune_two_stages_and_full_fine_tune_move_backbone(data, source_dir, tmp_path):
  cfg = tiny_config(data, **{"transfer.strategy": "fine_tune", "transfer.init_from":
                             str(source_dir), "transfer.warmup_epochs": 1,
                             "transfer.unfreeze": ("conv1",)})
  s = experiment.train_and_evaluate(cfg, tmp_path)
  assert s["epochs_run"] == 3  # 1 warm-up + 2 fine-tune epochs
  src = _flat(tinit.load_variables(source_dir))
  out = _flat(tinit.load_variables(tmp_path))
  np.testing.assert_array_equal(out["params/conv0/kernel"], src["params/conv0/kernel"])
  assert not np.array_equal(out["params/conv1/kernel"], src["params/conv1/kernel"])
  # bn0 and bn1 are frozen in both stages (the regex unfreezes conv1 only): statistics kept
  for k in ("batch_stats/bn0/mean", "batch_stats/bn1/var"):
    np.testing.assert_array_equal(out[k], src[k], err_msg=k)
  cfg.transfer.unfreeze = ("conv1", "bn1")  # bn1 trains in stage 2: its statistics move
  experiment.train_and_evaluate(cfg, tmp_path / "bn1")
  bn1 = _flat(tinit.load_variables(tmp_path / "bn1"))
  np.testing.assert_array_equal(bn1["batch_stats/bn0/mean"], src["batch_stats/bn0/mean"])
  assert not np.array_equal(bn1["batch_stats/bn1/mean"], src["batch_stats/bn1/mean"])


def test_feature_extraction_equals_frozen_backbone_features(data, source_dir, tmp_path):
  cfg = tiny_config(data, **{"transfer.strategy": "feature_extraction",
                             "transfer.init_from": str(source_dir), "model.head": "dense256"})
  s = experiment.train_and_evaluate(cfg, tmp_path)
  assert 0.0 <= s["test_accuracy"] <= 1.0 and s["strategy"] == "feature_extraction"
  # What the head trains on equals the source network's pooled features computed directly.
  from tl_jax import models
  from tl_jax.data.sources import load_dataset
  from tl_jax.transfer import features
  splits = load_dataset(experiment.data_spec(cfg))
  model, _ = experiment.build_model(cfg, 3)
  grafted, _ = experiment.init_variables(cfg, model, (8, 8, 3), jax.random.key(0),
                                         experiment.load_source_variables(cfg, model))
  cached = features.extract(model, grafted, splits.train.images, lambda x: x / 255.0,
                            batch_size=7)  # a padded last chunk
  m = models.create_model("tiny_cnn", None, width=4)
  v = tinit.load_variables(source_dir)
  v = {c: {k: t for k, t in tree.items() if k != "head"} for c, tree in v.items()}
  pooled, _ = m.apply(v, splits.train.images.astype(np.float32) / 255.0, train=False)
  chex.assert_trees_all_close(cached, np.asarray(pooled), atol=1e-5)


def test_n_per_class_sampling_depends_on_seed(data):
  a = experiment.prepare_data(tiny_config(data, **{"data.n_per_class": 4, "seed": 0}))
  b = experiment.prepare_data(tiny_config(data, **{"data.n_per_class": 4, "seed": 1}))
  assert np.bincount(a.train.labels).tolist() == [4, 4, 4]
  assert not np.array_equal(a.train.images, b.train.images)
  # the validation carve is fixed (split_seed), whatever the run's seed
  np.testing.assert_array_equal(a.val.images, b.val.images)


def test_comparison_runs_methods_and_resumes(data, tmp_path, capsys):
  import ml_collections
  cfg = tiny_config(data, **{"train.num_epochs": 1})
  cfg.compare = ml_collections.ConfigDict({
      "source": {"train": {"num_epochs": 1}},
      "methods": {"scratch": {"transfer": {"strategy": "scratch"}},
                  "frozen": {"transfer": {"strategy": "frozen_backbone"}}},
      "order": ("scratch", "frozen"), "seeds": (0,), "reference": "scratch"})
  out = compare.run_comparison(cfg, tmp_path)
  assert [r["method"] for r in out["runs"]] == ["scratch", "frozen"]
  assert "| frozen | 1 |" in out["table"] and "| scratch | 1 |" in out["table"]
  results = (tmp_path / "results.md").read_text()
  assert results.startswith("Command: ") and "Config: " in results and "Commit: " in results
  assert results.endswith(out["table"]) and out["table"] in capsys.readouterr().out
  # the source run is marked, and a report over the whole workdir does not count it
  from tl_jax.analysis import report
  assert json.loads((tmp_path / "source/summary.json").read_text())["role"] == "source"
  assert sorted(report.load_runs(tmp_path)["method"]) == ["frozen", "scratch"]
  mtime = (tmp_path / "runs/scratch/n0/seed0/metrics.jsonl").stat().st_mtime
  compare.run_comparison(cfg, tmp_path)  # finished runs are skipped
  assert (tmp_path / "runs/scratch/n0/seed0/metrics.jsonl").stat().st_mtime == mtime


@pytest.mark.parametrize("head", ["default", "dense256"])
def test_feature_extraction_saves_the_whole_model(data, source_dir, tmp_path, head):
  """The saved variables are the whole model (backbone + trained head): evaluated as any run's
  model they give the run's own test accuracy, and they serve as `transfer.init_from`."""
  cfg = tiny_config(data, **{"transfer.strategy": "feature_extraction",
                             "transfer.init_from": str(source_dir), "model.head": head})
  s = experiment.train_and_evaluate(cfg, tmp_path / "fe")
  from tl_jax.data.sources import load_dataset
  splits = load_dataset(experiment.data_spec(cfg))
  model, _ = experiment.build_model(cfg, 3)
  v = tinit.load_variables(tmp_path / "fe")
  logits, _ = model.apply(v, splits.test.images.astype(np.float32) / 255.0, train=False)
  acc = float(np.mean(np.argmax(np.asarray(logits), -1) == splits.test.labels))
  assert acc == pytest.approx(s["test_accuracy"], abs=1e-9)
  from tl_jax.analysis import gradcam
  heat = gradcam.gradcam(model, v, splits.test.images[:2], "conv1",
                         preprocess=lambda b: b.astype(np.float32) / 255.0)
  assert heat.shape[0] == 2 and np.isfinite(heat).all()  # Grad-CAM works on an FE run
  src = _flat(tinit.load_variables(source_dir))
  np.testing.assert_array_equal(_flat(v)["params/conv0/kernel" if head == "default" else
                                          "params/backbone/conv0/kernel"],
                                src["params/conv0/kernel"])
  nxt = tiny_config(data, **{"transfer.strategy": "full_fine_tune",
                             "transfer.init_from": str(tmp_path / "fe"), "model.head": head,
                             "train.num_epochs": 1})
  assert experiment.train_and_evaluate(nxt, tmp_path / "ft")["num_copied_from_source"] > 0
