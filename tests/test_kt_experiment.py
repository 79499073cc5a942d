"""UFM / L2T-ww / L2T-www through train_and_evaluate on tiny data and tiny models."""

import json
import pathlib

import numpy as np
import pytest

from tests.helpers import tiny_config, write_tiny_npz
from tl_jax import experiment
from tl_jax.errors import ConfigError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  data = write_tiny_npz(tmp_path_factory.mktemp("data"))
  src = tmp_path_factory.mktemp("source")
  experiment.train_and_evaluate(tiny_config(data, **{"model.kwargs.width": 8}), src)
  return data, src


def _kt_config(data, src, method, **kw):
  return tiny_config(data, **{"kt.method": method, "kt.source_model": "tiny_cnn",
                              "kt.source_num_classes": 3, "kt.source_kind": "tl_jax",
                              "kt.source_weights": str(src), "kt.pairs": "0-0,1-1,1-0",
                              "train.num_epochs": 1, **kw})


@pytest.mark.parametrize("method", ["ufm", "l2t_ww", "l2t_www"])
def test_kt_methods_run_end_to_end(setup, tmp_path, method):
  data, src = setup
  s = experiment.train_and_evaluate(_kt_config(data, src, method), tmp_path)
  assert s["method"] == method
  assert 0.0 <= s["test_accuracy"] <= 1.0
  rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
  assert np.isfinite(rec["train_wfm"]) and rec["train_wfm"] > 0  # the matching term is on
  if method != "ufm":
    assert rec["train_meta_grad_norm"] > 0


def test_kt_bad_pair_and_any_optax_optimizer(setup, tmp_path):
  data, src = setup
  with pytest.raises(ConfigError, match="kt.pairs.target"):
    experiment.train_and_evaluate(_kt_config(data, src, "l2t_ww", **{"kt.pairs": "0-7"}), tmp_path)
  # the look-ahead differentiates through the same optax transformation as the real step, so
  # any optimiser of tl_jax.train.optim works, with the freeze / LR-multiplier rules
  s = experiment.train_and_evaluate(_kt_config(data, src, "l2t_ww", **{
      "optimizer.name": "adam", "optimizer.lr": 1e-3, "optimizer.frozen": ("^conv0/",)}),
      tmp_path / "adam")
  assert s["method"] == "l2t_ww" and np.isfinite(s["test_loss"])
  from tl_jax.engine.fit import seed_key
  from tl_jax.transfer import init as tinit
  cfg = _kt_config(data, src, "l2t_ww")
  init, _ = experiment.init_variables(cfg, experiment.build_model(cfg, 3)[0], (8, 8, 3),
                                      seed_key(0, "init"))
  out = tinit.load_variables(tmp_path / "adam")
  np.testing.assert_array_equal(out["params"]["conv0"]["kernel"],
                                np.asarray(init["params"]["conv0"]["kernel"]))
  assert not np.array_equal(out["params"]["conv1"]["kernel"],
                            np.asarray(init["params"]["conv1"]["kernel"]))


def test_traces_record_gamma_and_plot(setup, tmp_path):
  from tl_jax.analysis import traces
  data, src = setup
  root = tmp_path / "sweep"
  experiment.train_and_evaluate(_kt_config(data, src, "l2t_www", **{"train.num_epochs": 2}),
                                root / "l2t_www" / "n0" / "seed0")
  experiment.train_and_evaluate(tiny_config(data, **{"model.kwargs.width": 4}),
                                root / "scratch" / "n0" / "seed0")
  rows = traces.read_trace(root / "l2t_www" / "n0" / "seed0")
  assert [r["epoch"] for r in rows] == [0, 1]
  g = np.asarray(rows[0]["gamma"]["conv0__conv0"])
  assert g.shape == (8, 8) and np.all(g > 0)   # softplus weights at the target map size
  out = traces.plot_traces(root, tmp_path / "fig")
  assert len(out) == 2 and all(pathlib.Path(p).stat().st_size > 0 for p in out)
