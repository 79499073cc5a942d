"""Every shipped config, every compare method and sweep cell of it, passes the engine's
`check_honoured` (no field set that its method would silently ignore). No training."""

from __future__ import annotations

import importlib
import pathlib

import pytest

from tl_jax import experiment, validate
from tl_jax.sweep import grid

CONFIGS = [("quickstart", None), ("l2t_thesis", "cifar10"), ("l2t_thesis", "cifar100"),
           ("l2t_cpu_mini", None), ("l2t_cpu_mini", "n50"),
           ("seed000_catsdogs_five_scenarios", None), ("seed000_catsdogs_imagenet96", None),
           ("seed000_ham10000_five_scenarios", None), ("seed001_catsdogs_effnet", None),
           ("seed003_cifar100_regularization", None), ("seed004_catsdogs_vgglab", None),
           ("seed004_gtsrb_lenet", None)]


def _variants(config, tmp_path):
  if "compare" in config:
    base = grid.apply_overrides(config, {})
    with base.unlocked():
      del base["compare"]
    c = config.compare
    if c.get("source"):
      yield "source", grid.apply_overrides(base, c.source)
    for m in (tuple(c.get("order") or ()) or tuple(c.methods.keys())):
      cfg = grid.apply_overrides(base, c.methods[m])
      if cfg.transfer.strategy != "scratch" and not cfg.transfer.init_from:
        cfg.transfer.init_from = str(tmp_path)  # the comparison's source run
      yield m, cfg
  elif "sweep" in config:
    for cell in grid.expand_grid(config, tmp_path):
      yield cell.method, cell.config
  else:
    yield config.name, config


def test_every_shipped_config_is_honoured(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[1]
  assert sorted(p.stem for p in (root / "configs").glob("*.py") if p.stem != "__init__") == \
      sorted({name for name, _ in CONFIGS})
  checked = 0
  for name, arg in CONFIGS:
    mod = importlib.import_module(f"configs.{name}")
    config = mod.get_config(arg) if arg else mod.get_config()
    for label, cfg in _variants(config, tmp_path):
      try:
        validate.check_config(cfg)
        experiment.check_honoured(cfg)
      except Exception as e:  # noqa: BLE001 - reported with the config and variant
        pytest.fail(f"configs/{name}.py:{arg or ''} [{label}]: {e}")
      checked += 1
  assert checked > 30
