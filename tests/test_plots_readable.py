"""Figures a first-time reader can read: titles, the best epoch and stage switches marked, each
series once, class names on confusion ticks, a single-N accuracy figure and a trajectory legend
that does not bury the lines. Checked on matplotlib artists, never on pixels."""

from __future__ import annotations

import collections
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from tl_jax.analysis import plots, traces  # noqa: E402

DIGITS = ["zero", "one", "two", "three", "four"]
METHODS = ["scratch", "ufm", "l2t_ww", "l2t_www"]


def _fine_tune_history() -> list[dict]:
  """5 warmup_head + 10 fine_tune epochs as tl_jax.engine.fit records them: both stages flag
  their own best (epochs 3 and 9); the run reports the last one."""
  recs = []
  for e in range(15):
    stage = "warmup_head" if e < 5 else "fine_tune"
    loss = 2.0 / (e + 1)
    recs.append({"epoch": e, "stage": stage, "stage_epoch": e if e < 5 else e - 5,
                 "train_loss": loss, "train_ce_loss": loss, "train_accuracy": 0.05 * e,
                 "train_grad_norm": 1.0, "val_loss": 2.5 / (e + 1), "val_accuracy": 0.04 * e,
                 "is_best": e in (3, 9)})
  return recs


def _gid_xs(ax: plt.Axes, gid: str) -> list[float]:
  return sorted(float(ln.get_xdata()[0]) for ln in ax.lines if ln.get_gid() == gid)


def test_run_title_names_dataset_method_and_seed():
  t = plots.run_title("ft", "shared://data/mnist/train.npz", "fine_tune", 10, 3)
  assert t == "ft · mnist · fine_tune · N=10/class · seed 3"
  assert plots.run_title("l2t_cifar10", "shared://data/cifar10/train.npz", "l2t_ww", 0, 0) == \
      "l2t_cifar10 · l2t_ww · seed 0"  # data set already in the name, N=0 is the full set


def test_training_curves_mark_best_epoch_and_stage_switch_and_plot_each_series_once():
  recs = _fine_tune_history()
  fig = plt.figure()
  a1, a2 = fig.subplots(1, 2)
  series = plots.draw_training_curves(a1, a2, recs)
  assert "train_ce_loss" in series  # found, but equal to train_loss: not drawn a second time
  labels = [ln.get_label() for ln in a1.lines + a2.lines if not ln.get_label().startswith("_")
            and ln.get_gid() is None]
  counts = collections.Counter(labels)
  assert counts == {"train_loss": 1, "val_loss": 1, "train_accuracy": 1, "val_accuracy": 1}
  for ax in (a1, a2):
    assert _gid_xs(ax, "best_epoch") == [9.0]  # the last is_best record, not the warmup's
    assert _gid_xs(ax, "stage_switch") == [4.5]  # between epoch 4 (warmup) and 5 (fine_tune)
    names = [t.get_text() for ax2 in ax.child_axes for t in ax2.get_xticklabels()]
    assert names == ["warmup_head", "fine_tune"]
  legend = [t.get_text() for t in a2.get_legend().get_texts()]
  assert any("best epoch 9" in t for t in legend)
  plt.close(fig)


def test_training_curves_single_stage_has_no_switch_and_distinct_ce_is_kept():
  recs = [{"epoch": e, "stage": "train", "train_loss": 40.0 - e, "train_ce": 2.0 - 0.1 * e,
           "val_loss": 2.1, "val_accuracy": 0.1, "is_best": e == 2} for e in range(4)]
  # a record with both spellings of one key, and epoch 3 re-recorded after a resume
  recs[1]["train/loss"] = 99.0
  recs.append(dict(recs[3], train_loss=36.5))
  fig = plt.figure()
  a1, a2 = fig.subplots(1, 2)
  series = plots.draw_training_curves(a1, a2, recs)
  np.testing.assert_array_equal(series["train_loss"][0], [0, 1, 2, 3])
  np.testing.assert_array_equal(series["train_loss"][1], [40.0, 39.0, 38.0, 36.5])
  labels = collections.Counter(ln.get_label() for ln in a1.lines if ln.get_gid() is None)
  assert labels == {"train_loss": 1, "train_ce": 1, "val_loss": 1}
  assert _gid_xs(a1, "stage_switch") == [] and _gid_xs(a1, "best_epoch") == [2.0]
  assert not a1.child_axes
  plt.close(fig)


def test_plot_training_curves_writes_the_title(tmp_path, monkeypatch):
  seen = {}
  real = plots.save_figure

  def spy(fig, out, dpi=120):
    seen["suptitle"] = fig._suptitle.get_text()
    return real(fig, out, dpi)

  monkeypatch.setattr(plots, "save_figure", spy)
  title = plots.run_title("ft", "mnist", "fine_tune", 10, 3)
  out = plots.plot_training_curves(_fine_tune_history(), tmp_path / "c.png", title=title)
  assert out.stat().st_size > 0
  assert "fine_tune" in seen["suptitle"] and "seed 3" in seen["suptitle"]


def test_confusion_matrix_ticks_are_class_names_and_title_has_accuracy():
  cm = np.diag([9, 8, 7, 6, 5]) + 1  # 35 + 25 = 60 counts, 40 on the diagonal
  fig, ax = plt.subplots()
  plots.draw_confusion_matrix(ax, cm, DIGITS, title="mnist · fine_tune · seed 0")
  assert [t.get_text() for t in ax.get_xticklabels()] == DIGITS
  assert [t.get_text() for t in ax.get_yticklabels()] == DIGITS
  title = ax.get_title()
  assert "fine_tune" in title and "seed 0" in title
  assert "accuracy 66.7% (40/60)" in title
  plt.close(fig)
  fig, ax = plt.subplots()
  plots.draw_confusion_matrix(ax, cm, DIGITS)  # no title asked: none set (old behaviour)
  assert ax.get_title() == ""
  plt.close(fig)


def test_single_n_accuracy_has_one_errorbar_per_method_on_a_method_axis(tmp_path):
  cells = pd.DataFrame(dict(method=METHODS, n_per_class=[10] * 4, mean=[25.0, 27.0, 28.0, 29.0],
                            std=[1.0, 0.5, 1.5, np.nan]))
  fig, ax = plt.subplots()
  plots.draw_accuracy_vs_n(ax, cells, METHODS)
  assert len(ax.containers) == len(METHODS)
  for i, (c, m) in enumerate(zip(ax.containers, METHODS)):
    x, y = c.lines[0].get_data()
    np.testing.assert_array_equal(x, [i])
    assert len(y) == 1 and y[0] == cells["mean"][i]
  assert [t.get_text() for t in ax.get_xticklabels()] == METHODS
  assert "N = 10" in ax.get_xlabel()
  plt.close(fig)
  assert plots.plot_accuracy_vs_n(cells, tmp_path / "one.png", title="x").stat().st_size > 0

  three = pd.DataFrame([dict(method=m, n_per_class=n, mean=float(n), std=1.0)
                        for m in METHODS[:2] for n in (5, 10, 30)])
  fig, ax = plt.subplots()
  plots.draw_accuracy_vs_n(ax, three)
  assert len(ax.containers) == 2  # the line plot over N stays for several N
  np.testing.assert_array_equal(ax.containers[0].lines[0].get_xdata(), [5, 10, 30])
  plt.close(fig)


def test_weight_trajectory_grid_has_one_legend_entry_per_method():
  rng = np.random.default_rng(0)
  traj = {m: rng.normal(size=(6, 8)) for m in METHODS}
  fig = plt.figure()
  axes = plots.draw_weight_trajectory_grid(fig, traj, steps=np.arange(6) * 2,
                                           weight_names=[f"w{j}" for j in range(8)])
  assert len(axes) == 8
  for j, ax in enumerate(axes):
    assert [ln.get_label() for ln in ax.lines] == METHODS
    np.testing.assert_array_equal(ax.lines[2].get_ydata(), traj["l2t_ww"][:, j])
    assert ax.get_legend() is None
  assert len(fig.legends) == 1
  assert [t.get_text() for t in fig.legends[0].get_texts()] == METHODS
  plt.close(fig)

  fig, ax = plt.subplots()  # the single-axes variant: methods only, legend outside the axes
  plots.draw_weight_trajectories(ax, traj)
  assert len(ax.lines) == 32
  assert len(ax.get_legend().get_texts()) <= len(METHODS)
  plt.close(fig)


def test_plot_traces_titles_with_config_and_uses_epochs(tmp_path, monkeypatch):
  root = tmp_path / "sweep"
  for m in METHODS[:2]:
    wd = root / m / "n10" / "seed0"
    wd.mkdir(parents=True)
    (wd / "trace.jsonl").write_text("".join(
        json.dumps({"epoch": e, "weight_name": "conv0/kernel", "weights": [0.1 * e] * 8}) + "\n"
        for e in range(3)))
    (wd / "summary.json").write_text(json.dumps({"name": "l2t_cifar10",
                                                 "dataset": "shared://data/cifar10/train.npz"}))
  seen = {}

  def spy(traj, out, steps=None, weight_names=None, title="", xlabel="step", ncols=4):
    seen.update(steps=list(steps), names=list(weight_names), title=title, xlabel=xlabel)
    return pathlib.Path(out)

  monkeypatch.setattr(plots, "plot_weight_trajectories", spy)
  traces.plot_traces(root, tmp_path / "fig")
  assert seen["steps"] == [0, 1, 2] and seen["xlabel"] == "epoch"
  assert seen["names"][0] == "conv0/kernel #0"
  assert seen["title"].startswith("l2t_cifar10 · ") and "seed0" in seen["title"]


@pytest.mark.parametrize("name", ["summary", "model_json"])
def test_report_confusion_uses_class_names(tmp_path, name):
  from tl_jax.analysis import report
  rows = []
  for seed in (0, 1):
    rd = tmp_path / f"s{seed}"
    rd.mkdir()
    row = {"run_dir": str(rd)}
    if name == "summary":
      row["class_names"] = DIGITS
    else:
      (rd / "model.json").write_text(json.dumps({"class_names": DIGITS}))
    rows.append(row)
  assert report._class_names(pd.DataFrame(rows), 5) == DIGITS
  assert report._class_names(pd.DataFrame(rows), 4) is None  # does not fit the matrix
