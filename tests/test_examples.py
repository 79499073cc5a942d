"""The examples/ scripts run as a user would run them (tiny settings)."""

import importlib.util
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod  # Flax modules are dataclasses: their module must be importable
  spec.loader.exec_module(mod)
  return mod


def test_custom_model_and_data_example(tmp_path):
  mod = _load("custom_model_and_data")
  s = mod.main(["--workdir", str(tmp_path), "--epochs", "3", "--per_class", "40"])
  assert s["model"] == "band_net" and 0.0 <= s["test_accuracy"] <= 1.0
  assert json.loads((tmp_path / "config.json").read_text())["data"]["source"] == "bands"
  assert (tmp_path / "val_accuracy.png").stat().st_size > 1000
  import tl_jax
  from tl_jax import models
  from tl_jax.data import sources
  assert "band_net" in models.model_names() and "bands" in sources.source_names()
  # the registered model is a first-class model: its variables graft into a new run
  cfg = tl_jax.base_config()
  cfg.data.source, cfg.data.train, cfg.data.test = "bands", "", ""
  cfg.data.val_per_class, cfg.data.test_per_class = 5, 5
  cfg.model.name, cfg.input.augment, cfg.input.normalize = "band_net", "none", "zero_one"
  cfg.transfer.strategy, cfg.transfer.init_from = "frozen_backbone", str(tmp_path)
  cfg.train.num_epochs, cfg.train.batch_size, cfg.train.progress = 1, 16, False
  out = tl_jax.train_and_evaluate(cfg, tmp_path / "ft")
  assert out["num_copied_from_source"] > 0
