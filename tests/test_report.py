"""Report tables and figures checked against independent numpy/scipy computations."""

from __future__ import annotations

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats as sps  # noqa: E402

from tl_jax.analysis import plots, report  # noqa: E402
from tl_jax.errors import ConfigError  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = {"scratch": 0.30, "L2T-ww": 0.50, "L2T-www": 0.53}
NS = (5, 10, 30)
SEEDS = 6


def _fake_runs(root: pathlib.Path, seeds: int = SEEDS) -> dict:
  """Writes one summary.json per (method, N, seed); returns {(method, N): accuracies}."""
  rng = np.random.default_rng(0)
  truth = {}
  for m, base in METHODS.items():
    for n in NS:
      accs = np.clip(base + 0.002 * n + rng.normal(0, 0.02, size=seeds), 0, 1)
      truth[m, n] = accs
      for s, a in enumerate(accs):
        d = dict(method=m, n_per_class=n, seed=s, test_accuracy=float(a), val_accuracy=float(a),
                 dataset="stl10", model="vgg9",
                 confusion_matrix=np.eye(3, dtype=int).tolist() if n == 30 else None)
        report.write_summary(root / m / f"n{n}" / f"seed{s}", d)
  for m, base in (("L2T-www", 0.73), ("L2T-ww", 0.65)):
    accs = np.clip(base + rng.normal(0, 0.03, size=seeds), 0, 1)
    truth["minority", m] = accs
    for s, a in enumerate(accs):
      report.write_summary(root / "imb" / m / f"seed{s}", dict(
          method=m, n_per_class=100, seed=s, test_accuracy=0.6, minority_accuracy=float(a),
          dataset="stl10"))
  return truth


def _assert_png(path: pathlib.Path):
  assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
  img = plt.imread(path)
  assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_comparison_table_matches_independent_statistics(tmp_path):
  truth = _fake_runs(tmp_path)
  runs = report.load_runs(tmp_path)
  bal = runs[runs["experiment"] == "balanced"]
  table, tests_df = report.comparison_table(bal)
  assert list(table.index) == list(NS)
  assert list(table.columns[:3]) == ["scratch", "L2T-ww", "L2T-www"]
  ps = []
  for n in NS:
    for m in METHODS:
      v = 100 * truth[m, n]
      assert table.loc[n, m] == f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"
    a, b = 100 * truth["L2T-www", n], 100 * truth["L2T-ww", n]
    p = sps.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue
    ps.append(p)
    row = tests_df.set_index("n_per_class").loc[n]
    assert row["mw_method"] == "exact"  # 6 vs 6 without ties
    assert row["p"] == pytest.approx(p)
    assert row["diff"] == pytest.approx(a.mean() - b.mean())
    assert table.loc[n, "diff (L2T-www − L2T-ww)"] == f"{a.mean() - b.mean():+.2f}"
    assert table.loc[n, "n per cell"] == f"{SEEDS}/{SEEDS}/{SEEDS}"
  # Holm by hand over the 3 Ns
  order = np.argsort(ps)
  m = len(ps)
  expect = np.empty(m)
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * ps[i]))
    expect[i] = running
  np.testing.assert_allclose(tests_df["p_holm"].to_numpy(), expect)


def test_load_runs_rejects_bad_input(tmp_path):
  with pytest.raises(ConfigError):
    report.load_runs(tmp_path)  # empty
  with pytest.raises(ConfigError):
    report.write_summary(tmp_path / "a", dict(method="x", n_per_class=5, seed=0,
                                              test_accuracy=53.2))  # percent, not fraction
  with pytest.raises(ConfigError):
    report.write_summary(tmp_path / "a", dict(method="x", seed=0, test_accuracy=0.5))
  for d in ("a", "b"):
    report.write_summary(tmp_path / d, dict(method="x", n_per_class=5, seed=0, test_accuracy=0.5))
  with pytest.raises(ConfigError, match="share"):
    report.load_runs(tmp_path)


def test_build_report_writes_everything(tmp_path):
  truth = _fake_runs(tmp_path / "runs")
  out = tmp_path / "results" / "stl10"
  hist = [dict(epoch=e, train_loss=1.0 / (e + 1), val_accuracy=0.1 * e) for e in range(3)]
  (tmp_path / "runs/L2T-ww/n5/seed0/history.json").write_text(json.dumps(hist))
  (tmp_path / "runs/scratch/n5/seed0/metrics.jsonl").write_text(
      "\n".join(json.dumps(h) for h in hist))
  assert report.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--curves"]) == 0
  readme = (out / "README.md").read_text()
  assert "Mann-Whitney" in readme and "two-sided" in readme and "git commit" in readme
  assert "ddof=1" in readme and "Holm" in readme and "jax" in readme
  cells = pd.read_csv(out / "cells.csv")
  row = cells[(cells.method == "L2T-ww") & (cells.n_per_class == 10)
              & (cells.metric == "test_accuracy")].iloc[0]
  assert row["mean"] == pytest.approx(100 * truth["L2T-ww", 10].mean())
  assert row["n"] == SEEDS
  # Table 4: minority accuracy of the imbalanced experiment
  minority = pd.read_csv(out / "table_stl10_imbalanced_minority_accuracy.csv", index_col=0)
  v = 100 * truth["minority", "L2T-www"]
  assert minority.loc[100, "L2T-www"] == f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"
  assert "minority_accuracy" in readme
  figs = sorted((out / "figures").glob("*.png"))
  names = {f.name for f in figs}
  assert {"acc_vs_n_stl10_balanced_test_accuracy.png", "box_stl10_balanced_test_accuracy.png",
          "cm_stl10_balanced_L2T-www_30.png", "curves_stl10_balanced_L2T-ww_5.png",
          "curves_stl10_balanced_scratch_5.png"} <= names
  assert "curves_stl10_balanced_L2T-www_5.png" not in names  # that run has no curves file
  for f in figs:
    _assert_png(f)
  assert not list(out.rglob("*.tmp"))
  assert report.main(["--runs", str(tmp_path / "nope"), "--out", str(out)]) == 2


def test_accuracy_vs_n_and_box_strip_plot_the_input(tmp_path):
  cells = pd.DataFrame(dict(method=["a", "a", "b", "b"], n_per_class=[10, 5, 5, 10],
                            mean=[60.0, 50.0, 40.0, 45.0], std=[1.0, 2.0, 3.0, 4.0]))
  fig, ax = plt.subplots()
  plots.draw_accuracy_vs_n(ax, cells)
  conts = ax.containers
  assert len(conts) == 2
  x, y = conts[0].lines[0].get_data()
  np.testing.assert_array_equal(x, [5, 10])
  np.testing.assert_array_equal(y, [50.0, 60.0])
  seg = conts[1].lines[2][0].get_segments()  # error bar for b at N=5: 40 ± 3
  np.testing.assert_allclose(seg[0][:, 1], [37.0, 43.0])
  plt.close(fig)
  _assert_png(plots.plot_accuracy_vs_n(cells, tmp_path / "acc.png"))

  runs = pd.DataFrame(dict(method=["a"] * 3 + ["b"] * 3, n_per_class=[5] * 6,
                           test_accuracy=[1.0, 2.0, 3.0, 7.0, 8.0, 9.5]))
  fig, ax = plt.subplots()
  order = plots.draw_box_strip(ax, runs)
  assert order == [(5, "a"), (5, "b")]
  ys = [c.get_offsets()[:, 1] for c in ax.collections]
  np.testing.assert_array_equal(ys[0], [1.0, 2.0, 3.0])
  np.testing.assert_array_equal(ys[1], [7.0, 8.0, 9.5])
  plt.close(fig)
  _assert_png(plots.plot_box_strip(runs, tmp_path / "box.png"))


def test_confusion_gamma_and_trajectory_plots_hold_the_input(tmp_path):
  cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 6]])
  fig, ax = plt.subplots()
  plots.draw_confusion_matrix(ax, cm, ["x", "y", "z"], normalize=True)
  np.testing.assert_allclose(ax.images[0].get_array(), cm / cm.sum(1, keepdims=True))
  plt.close(fig)
  _assert_png(plots.plot_confusion_matrix(cm, tmp_path / "cm.png", ["x", "y", "z"]))
  with pytest.raises(ConfigError):
    plots.plot_confusion_matrix(np.ones((2, 3)), tmp_path / "bad.png")

  gammas = np.random.default_rng(1).uniform(size=(5, 4, 6))
  fig = plt.figure()
  axes = plots.draw_gamma_grid(fig, gammas, epochs=[0, 10, 20, 30, 40], ncols=3)
  assert len(axes) == 5
  for k, a in enumerate(axes):
    np.testing.assert_array_equal(a.images[0].get_array(), gammas[k])
    assert a.images[0].get_clim() == (gammas.min(), gammas.max())
  plt.close(fig)
  _assert_png(plots.plot_gamma_grid(gammas, tmp_path / "gamma.png"))

  traj = {"scratch": np.linspace(0, 1, 7), "L2T-www": np.stack([np.arange(7.0), -np.arange(7.0)],
                                                                1)}
  with pytest.raises(ConfigError):
    plots.plot_weight_trajectories(traj, tmp_path / "t.png")  # shapes differ
  traj["scratch"] = np.stack([np.linspace(0, 1, 7), np.linspace(1, 0, 7)], 1)
  fig, ax = plt.subplots()
  plots.draw_weight_trajectories(ax, traj, steps=np.arange(7) * 25)
  assert len(ax.lines) == 4
  np.testing.assert_array_equal(ax.lines[1].get_ydata(), traj["scratch"][:, 1])
  np.testing.assert_array_equal(ax.lines[2].get_xdata(), np.arange(7) * 25)
  np.testing.assert_array_equal(ax.lines[3].get_ydata(), -np.arange(7.0))
  plt.close(fig)
  _assert_png(plots.plot_weight_trajectories(traj, tmp_path / "traj.png"))


def test_training_curves_from_metrics_jsonl(tmp_path):
  recs = [dict(epoch=e, train_loss=1.0 / (e + 1), **{"train/accuracy": 0.1 * e}) for e in range(4)]
  recs += [dict(epoch=e, val_loss=2.0 / (e + 1), val_accuracy=0.05 * e) for e in (1, 3)]
  path = tmp_path / "metrics.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in recs) + "\n{\"epoch\": 4, \"tra")  # torn line
  records = plots.read_metrics_jsonl(path)
  assert len(records) == 6
  fig, (a1, a2) = plt.subplots(1, 2)
  series = plots.draw_training_curves(a1, a2, records)
  assert set(series) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
  lines = {ln.get_label(): ln for ln in a1.lines + a2.lines}
  np.testing.assert_array_equal(lines["val_loss"].get_xdata(), [1, 3])
  np.testing.assert_allclose(lines["val_loss"].get_ydata(), [1.0, 0.5])
  np.testing.assert_allclose(lines["train_accuracy"].get_ydata(), [0.0, 0.1, 0.2, 0.3])
  plt.close(fig)
  _assert_png(plots.plot_training_curves(path, tmp_path / "curves.png"))


def test_project_summary_format_and_cli_options(tmp_path):
  """Summaries as tl_jax.experiment writes them (extra keys, lower-case method names)."""
  rng = np.random.default_rng(3)
  vals = {}
  for m in ("scratch", "l2t_ww", "l2t_www"):
    vals[m] = rng.uniform(0.4, 0.6, size=9)
    for s, a in enumerate(vals[m]):
      report.write_summary(tmp_path / "runs" / m / f"s{s}", dict(
          method=m, n_per_class=10, seed=s, test_accuracy=float(a), val_accuracy=None,
          dataset="shared://data/cifar10/train.npz", best_epoch=None, backend="cpu",
          devices=["TFRT_CPU_0"], test_per_class_accuracy=[0.1, 0.2],
          confusion_matrix=[[3, 1], [0, 4]]))
  runs = report.load_runs(tmp_path / "runs")
  table, tests_df = report.comparison_table(runs, decimal_sep=",")
  assert list(tests_df[["a", "b"]].iloc[0]) == ["l2t_www", "l2t_ww"]  # default pair
  a, b = 100 * vals["l2t_www"], 100 * vals["l2t_ww"]
  p = sps.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue
  assert tests_df["mw_method"].iloc[0] == "asymptotic"  # 9 seeds each
  assert tests_df["p"].iloc[0] == pytest.approx(p)
  assert table.loc[10, "l2t_ww"] == f"{b.mean():.2f} ± {b.std(ddof=1):.2f}".replace(".", ",")
  out = tmp_path / "out"
  assert report.main(["--runs", str(tmp_path / "runs"), "--out", str(out),
                      "--compare", "l2t_www,scratch", "--compare", "l2t_ww,scratch"]) == 0
  tests_csv = pd.read_csv(out / "tests.csv")
  assert len(tests_csv) == 2
  ps = tests_csv["p"].to_numpy()
  np.testing.assert_allclose(tests_csv["p_holm"], np.minimum(1, np.maximum.accumulate(
      np.sort(ps) * [2, 1]))[np.argsort(np.argsort(ps))])
  assert "cpu ['TFRT_CPU_0']" in (out / "README.md").read_text()
  assert report.main(["--runs", str(tmp_path / "runs"), "--out", str(out),
                      "--compare", "l2t_www"]) == 2
