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


def _summary(method, seed, acc, n=10, **kw):
  return dict(method=method, n_per_class=n, seed=seed, test_accuracy=float(acc),
              test_macro_f1=float(acc) - 0.01, **kw)


def test_summary_table_matches_scipy_with_per_method_references():
  """compare's layout: method rows, p vs each method's own reference, source never a row."""
  rng = np.random.default_rng(5)
  vals = {m: rng.uniform(0.4, 0.9, size=5) for m in ("scratch", "frozen", "scratch_sgd", "l2t_ww")}
  summaries = [_summary(m, s, a) for m, v in vals.items() for s, a in enumerate(v)]
  summaries.append(_summary("scratch", 0, 0.99, role="source"))  # would collide with seed 0
  table = report.summary_table(summaries, "scratch", {"l2t_ww": "scratch_sgd"},
                               methods=list(vals))
  assert list(table.index) == list(vals) and table.index.name == "method"
  assert list(table.columns) == ["seeds", "test accuracy (%)", "test macro-F1 (%)",
                                 "Mann-Whitney p (vs)", "suspect runs"]
  for m, v in vals.items():
    assert table.loc[m, "seeds"] == 5
    assert table.loc[m, "test accuracy (%)"] == f"{100 * v.mean():.2f} ± {100 * v.std(ddof=1):.2f}"
    f1 = 100 * (v - 0.01)
    assert table.loc[m, "test macro-F1 (%)"] == f"{f1.mean():.2f} ± {f1.std(ddof=1):.2f}"
  assert table.loc["scratch", "Mann-Whitney p (vs)"] == "—"
  for m, ref in (("frozen", "scratch"), ("scratch_sgd", "scratch"), ("l2t_ww", "scratch_sgd")):
    p = sps.mannwhitneyu(vals[m], vals[ref], alternative="two-sided", method="exact").pvalue
    assert table.loc[m, "Mann-Whitney p (vs)"] == f"{p:.3f} ({ref})"
  md = report.to_markdown(table)
  assert md.splitlines()[0] == ("| method | seeds | test accuracy (%) | test macro-F1 (%) | "
                                "Mann-Whitney p (vs) | suspect runs |")
  assert f"| frozen | 5 | {table.loc['frozen', 'test accuracy (%)']} |" in md

  # several N: one row per (method, N), tested against the reference at the same N
  n20 = {"scratch": vals["scratch"], "frozen": 0.8 * vals["frozen"]}
  more = summaries + [_summary(m, s, a, n=20) for m, v in n20.items() for s, a in enumerate(v)]
  table = report.summary_table(more, "scratch")  # default order: thesis methods, then sorted
  assert table.index.names == ["method", "N per class"]
  assert list(table.index) == [("scratch", 10), ("scratch", 20), ("l2t_ww", 10), ("frozen", 10),
                               ("frozen", 20), ("scratch_sgd", 10)]
  p = sps.mannwhitneyu(n20["frozen"], n20["scratch"], method="exact").pvalue
  assert table.loc[("frozen", 20), "Mann-Whitney p (vs)"] == f"{p:.3f} (scratch)"
  assert "| frozen | 20 | 5 |" in report.to_markdown(table)
  # one seed per side: no test (U of one value vs one always gives p = 1); std undefined
  one = report.summary_table([_summary("a", 0, 0.5), _summary("b", 0, 0.6)], "a")
  assert one.loc["b", "Mann-Whitney p (vs)"] == "—" and one.loc["b", "seeds"] == 1
  assert one.loc["b", "test accuracy (%)"] == "60.00 ± n/a"


def test_load_runs_never_counts_a_source_run(tmp_path):
  """compare's layout: `source/` beside `runs/`; the source has the target runs' method/seed."""
  wd = tmp_path / "source" / "wd"  # a root that itself sits under some 'source' folder is fine
  report.write_summary(wd / "source", _summary("scratch", 0, 0.9))
  report.write_summary(wd / "runs/scratch/n10/seed0", _summary("scratch", 0, 0.5))
  report.write_summary(wd / "runs/frozen/n10/seed0", _summary("frozen", 0, 0.6))
  report.write_summary(wd / "copied_source", _summary("scratch", 1, 0.9, role="source"))
  runs = report.load_runs(wd)
  assert sorted(runs["method"]) == ["frozen", "scratch"]
  assert runs.set_index("method").loc["scratch", "test_accuracy"] == 0.5
  assert report.is_source_run({}, "source") and report.is_source_run({"role": "source"})
  assert not report.is_source_run({}, "runs/scratch") and not report.is_source_run({}, ".")
  with pytest.raises(ConfigError, match="non-source"):
    report.load_runs(wd / "copied_source")
  with pytest.raises(ConfigError, match="non-source"):
    report.runs_frame([_summary("scratch", 0, 0.9, role="source")])


def test_split_tables_hold_each_runs_values():
  s = dict(train_accuracy=0.98765, val_accuracy=0.5, test_accuracy=0.25, test_macro_f1=0.125,
           train_loss=0.1, val_loss=0.2, test_loss=0.3, epochs_run=7, best_epoch=4, wall_s=12.4)
  t = report.split_table(s)
  assert list(t.columns) == ["train", "val", "test"] and t.index.name == "metric"
  assert list(t.index) == ["accuracy", "macro-F1", "loss", "macro recall"]
  assert list(t.loc["accuracy"]) == ["0.9877", "0.5000", "0.2500"]
  assert list(t.loc["macro-F1"]) == ["—", "—", "0.1250"]
  assert report.to_markdown(t).splitlines()[:3] == [
      "| metric | train | val | test |", "|---|---|---|---|",
      "| accuracy | 0.9877 | 0.5000 | 0.2500 |"]
  other = dict(s, test_accuracy=0.75, epochs_run=3, best_epoch=None)
  c = report.split_comparison_table([("a (seed0)", s), ("source", dict(s, role="source")),
                                     ("b (seed0)", other)])
  assert list(c.columns) == ["a (seed0)", "b (seed0)"]
  assert list(c.loc["accuracy"]) == ["0.2500", "0.7500"]
  assert list(c.loc["epochs run (best)"]) == ["7 (4)", "3 (None)"]
  assert list(c.loc["wall time (s)"]) == ["12", "12"]
  assert report.split_comparison_table([("a", s)], split="val").loc["loss", "a"] == "0.2000"


def test_provenance_names_config_seeds_commit_and_hardware():
  text = report.provenance("quickstart", (0, 1, 2), 171.4, command=["python", "-m", "x"])
  assert text.startswith("Command: `python -m x`  \nConfig: quickstart; seeds (0, 1, 2)  \n")
  assert f"Commit: {report.git_commit()}" in text and "Wall time: 171 s" in text
  assert "Hardware: " in text and "jax" in text and text.endswith("\n\n")
