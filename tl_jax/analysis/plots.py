"""Figures for sweep reports (matplotlib, Agg backend, no display needed).

Each `draw_*` draws on a given Axes (tests inspect its artists); each `plot_*` makes a figure,
calls the matching `draw_*`, writes a PNG atomically (temp file + rename, so an interrupted report
never leaves a half-written image) and returns the saved path.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tl_jax.errors import ConfigError  # noqa: E402
from tl_jax.train import jsonl  # noqa: E402

PathLike = str | os.PathLike


def save_figure(fig: plt.Figure, out_path: PathLike, dpi: int = 120) -> pathlib.Path:
  """Writes `fig` as PNG via a temp file in the same directory + os.replace; closes it."""
  out = pathlib.Path(out_path)
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    os.replace(tmp, out)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  finally:
    plt.close(fig)
  return out


# ---------------------------------------------------------------- accuracy vs N (thesis Fig. 34)

def draw_accuracy_vs_n(ax: plt.Axes, cells: pd.DataFrame, methods: Sequence[str] | None = None,
                       ylabel: str = "test accuracy (%)") -> None:
  """`cells`: one row per (method, n_per_class) with columns mean, std. Error bars = ±1 std."""
  _require_columns(cells, ("method", "n_per_class", "mean", "std"), "cells")
  methods = list(methods) if methods is not None else list(dict.fromkeys(cells["method"]))
  for m in methods:
    sub = cells[cells["method"] == m].sort_values("n_per_class")
    ax.errorbar(sub["n_per_class"].to_numpy(float), sub["mean"].to_numpy(float),
                yerr=sub["std"].to_numpy(float), marker="o", capsize=3, label=str(m))
  ax.set_xlabel("samples per class")
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  ax.legend()


def plot_accuracy_vs_n(cells: pd.DataFrame, out_path: PathLike,
                       methods: Sequence[str] | None = None, title: str = "", ylabel: str = "test accuracy (%)") -> pathlib.Path:
  fig, ax = plt.subplots(figsize=(6, 4))
  draw_accuracy_vs_n(ax, cells, methods, ylabel)
  ax.set_title(title)
  return save_figure(fig, out_path)


# ---------------------------------------------------------------- box + strip of the n seeds

def draw_box_strip(ax: plt.Axes, runs: pd.DataFrame, value: str = "test_accuracy",
                   ylabel: str | None = None,
                   methods: Sequence[str] | None = None, seed: int = 0) -> list[tuple]:
  """Box per (N, method) with every seed's value as a jittered dot on top.

  Returns the (n_per_class, method) order of the boxes (and of the scatter collections).
  """
  _require_columns(runs, ("method", "n_per_class", value), "runs")
  methods = list(methods) if methods is not None else list(dict.fromkeys(runs["method"]))
  ns = sorted(runs["n_per_class"].unique())
  width = 0.8 / max(len(methods), 1)
  rng = np.random.default_rng(seed)
  order, data, positions = [], [], []
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, n in enumerate(ns):
    for j, m in enumerate(methods):
      vals = runs[(runs["n_per_class"] == n) & (runs["method"] == m)][value].to_numpy(float)
      if vals.size == 0:
        continue
      pos = i + (j - (len(methods) - 1) / 2) * width
      order.append((n, m))
      data.append(vals)
      positions.append(pos)
      jitter = rng.uniform(-width * 0.25, width * 0.25, size=vals.size)
      ax.scatter(pos + jitter, vals, s=8, color=colors[j % len(colors)], alpha=0.7, zorder=3,
                 label=str(m) if i == 0 else None)
  if data:
    ax.boxplot(data, positions=positions, widths=width * 0.8, showfliers=False,
               manage_ticks=False)
  ax.set_xticks(range(len(ns)), [str(n) for n in ns])
  ax.set_xlabel("samples per class")
  ax.set_ylabel(ylabel or value)
  ax.legend()
  return order


def plot_box_strip(runs: pd.DataFrame, out_path: PathLike, value: str = "test_accuracy",
                   methods: Sequence[str] | None = None, title: str = "",
                   ylabel: str | None = None) -> pathlib.Path:
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * runs["n_per_class"].nunique() + 2), 4))
  draw_box_strip(ax, runs, value, ylabel=ylabel, methods=methods)
  ax.set_title(title)
  return save_figure(fig, out_path)


# ---------------------------------------------------------------- confusion matrix

def draw_confusion_matrix(ax: plt.Axes, cm: np.ndarray, class_names: Sequence[str] | None = None,
                          normalize: bool = False) -> np.ndarray:
  """Heatmap of cm[true, pred]; with normalize=True each row is divided by its sum (recall)."""
  cm = np.asarray(cm, dtype=np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ConfigError("confusion_matrix", cm.shape, "a square [C, C] array")
  if normalize:
    rows = cm.sum(axis=1, keepdims=True)
    cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
  ax.figure.colorbar(im, ax=ax, fraction=0.046)
  c = cm.shape[0]
  names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
  if len(names) != c:
    raise ConfigError("class_names", len(names), f"{c} names")
  ax.set_xticks(range(c), names, rotation=45, ha="right")
  ax.set_yticks(range(c), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if c <= 20:
    fmt = "{:.2f}" if normalize else "{:.0f}"
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(c):
      for j in range(c):
        ax.text(j, i, fmt.format(cm[i, j]), ha="center", va="center", fontsize=7,
                color="white" if cm[i, j] > thresh else "black")
  return cm


def plot_confusion_matrix(cm: np.ndarray, out_path: PathLike,
                          class_names: Sequence[str] | None = None, normalize: bool = False,
                          title: str = "") -> pathlib.Path:
  c = np.asarray(cm).shape[0] if np.asarray(cm).ndim else 1
  fig, ax = plt.subplots(figsize=(max(4, 0.5 * c + 2), max(4, 0.5 * c + 1.5)))
  draw_confusion_matrix(ax, cm, class_names, normalize)
  ax.set_title(title)
  return save_figure(fig, out_path)


# ---------------------------------------------------------------- training curves

def read_metrics_jsonl(path: PathLike) -> list[dict]:
  """Records of a metrics.jsonl (tl_jax.train.jsonl.read_jsonl: a torn last line is skipped);
  a missing or corrupt file is a ConfigError naming `metrics_path`."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise ConfigError("metrics_path", str(p), hint="file not found")
  try:
    return jsonl.read_jsonl(p)
  except ValueError as e:
    raise ConfigError("metrics_path", str(p), hint=str(e)) from e


def curve_series(records: Iterable[Mapping], x_key: str = "epoch") -> dict[str, tuple]:
  """{'train_loss': (xs, ys), ...} from records; keys like 'train/loss' normalise to 'train_loss'.

  Only numeric train_*/val_* keys are taken; each record may carry a subset of them.
  """
  series: dict[str, tuple[list, list]] = {}
  for rec in records:
    if x_key not in rec:
      continue
    for k, v in rec.items():
      name = k.replace("/", "_")
      if not (name.startswith("train_") or name.startswith("val_")):
        continue
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        xs, ys = series.setdefault(name, ([], []))
        xs.append(float(rec[x_key]))
        ys.append(float(v))
  return {k: (np.asarray(x), np.asarray(y)) for k, (x, y) in series.items()}


def draw_training_curves(ax_loss: plt.Axes, ax_acc: plt.Axes, records: Sequence[Mapping],
                         x_key: str = "epoch") -> dict[str, tuple]:
  """Loss keys (name contains 'loss') on ax_loss, accuracy keys on ax_acc."""
  series = curve_series(records, x_key)
  if not series:
    raise ConfigError("metrics", f"{len(records)} records", "train_*/val_* numeric keys with "
                      f"an '{x_key}' field")
  for name, (x, y) in sorted(series.items()):
    if "loss" in name:
      ax_loss.plot(x, y, label=name)
    elif "acc" in name:
      ax_acc.plot(x, y, label=name)
  for ax, yl in ((ax_loss, "loss"), (ax_acc, "accuracy")):
    ax.set_xlabel(x_key)
    ax.set_ylabel(yl)
    ax.grid(True, alpha=0.3)
    if ax.lines:
      ax.legend()
  return series


def plot_training_curves(metrics: PathLike | Sequence[Mapping], out_path: PathLike,
                         x_key: str = "epoch", title: str = "") -> pathlib.Path:
  records = read_metrics_jsonl(metrics) if isinstance(metrics, (str, os.PathLike)) else metrics
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
  draw_training_curves(a1, a2, records, x_key)
  fig.suptitle(title)
  return save_figure(fig, out_path)


# ---------------------------------------------------------------- L2T-www gamma maps (Fig. 35)

def draw_gamma_grid(fig: plt.Figure, gammas: np.ndarray, epochs: Sequence[int] | None = None,
                    ncols: int = 6) -> list[plt.Axes]:
  """One small heatmap per epoch of the per-pixel weights gamma [E, H, W], shared colour scale."""
  g = np.asarray(gammas, dtype=np.float64)
  if g.ndim != 3:
    raise ConfigError("gammas", g.shape, "an array [epochs, H, W]")
  e = g.shape[0]
  labels = list(epochs) if epochs is not None else list(range(e))
  if len(labels) != e:
    raise ConfigError("epochs", len(labels), f"{e} labels")
  ncols = max(1, min(ncols, e))
  nrows = -(-e // ncols)
  vmin, vmax = float(g.min()), float(g.max())
  axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
  im = None
  for k, ax in enumerate(axes):
    ax.set_xticks([])
    ax.set_yticks([])
    if k >= e:
      ax.set_visible(False)
      continue
    im = ax.imshow(g[k], vmin=vmin, vmax=vmax, cmap="viridis", interpolation="nearest")
    ax.set_title(f"epoch {labels[k]}", fontsize=8)
  if im is not None:
    fig.colorbar(im, ax=list(axes[:e]), shrink=0.8, label="γ")
  return list(axes[:e])


def plot_gamma_grid(gammas: np.ndarray, out_path: PathLike, epochs: Sequence[int] | None = None,
                    ncols: int = 6, title: str = "") -> pathlib.Path:
  e = np.asarray(gammas).shape[0] if np.asarray(gammas).ndim == 3 else 1
  nc = max(1, min(ncols, e))
  fig = plt.figure(figsize=(1.8 * nc + 1, 1.8 * -(-e // nc) + 0.6))
  draw_gamma_grid(fig, gammas, epochs, ncols)
  fig.suptitle(title)
  return save_figure(fig, out_path)


# ---------------------------------------------------------------- weight trajectories (Fig. 36)

def draw_weight_trajectories(ax: plt.Axes, trajectories: Mapping[str, np.ndarray],
                             steps: Sequence[float] | None = None,
                             weight_names: Sequence[str] | None = None) -> None:
  """Lines of chosen weights over steps, one colour per method, one line style per weight.

  trajectories[method]: [T] or [T, K] (K chosen weights); all methods share T (same init, same
  seed, as in the thesis' ablation).
  """
  if not trajectories:
    raise ConfigError("trajectories", {}, "a non-empty {method: [T] or [T, K]} mapping")
  arrs = {m: np.asarray(v, dtype=np.float64) for m, v in trajectories.items()}
  arrs = {m: (a[:, None] if a.ndim == 1 else a) for m, a in arrs.items()}
  shapes = {a.shape for a in arrs.values()}
  if len(shapes) != 1 or next(iter(shapes)).__len__() != 2:
    raise ConfigError("trajectories", {m: a.shape for m, a in arrs.items()},
                      "equal shapes [T] or [T, K]")
  t, k = next(iter(shapes))
  x = np.asarray(steps, dtype=np.float64) if steps is not None else np.arange(t, dtype=np.float64)
  if x.shape != (t,):
    raise ConfigError("steps", x.shape, f"({t},)")
  names = list(weight_names) if weight_names is not None else [f"w{j}" for j in range(k)]
  styles = ["-", "--", ":", "-."]
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (m, a) in enumerate(arrs.items()):
    for j in range(k):
      ax.plot(x, a[:, j], linestyle=styles[j % len(styles)], color=colors[i % len(colors)],
              label=f"{m} {names[j]}" if k > 1 else str(m))
  ax.set_xlabel("step")
  ax.set_ylabel("weight value")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)


def plot_weight_trajectories(trajectories: Mapping[str, np.ndarray], out_path: PathLike,
                             steps: Sequence[float] | None = None,
                             weight_names: Sequence[str] | None = None,
                             title: str = "") -> pathlib.Path:
  fig, ax = plt.subplots(figsize=(7, 4))
  draw_weight_trajectories(ax, trajectories, steps, weight_names)
  ax.set_title(title)
  return save_figure(fig, out_path)


def _require_columns(df: pd.DataFrame, cols: Sequence[str], field: str) -> None:
  missing = [c for c in cols if c not in df.columns]
  if missing:
    raise ConfigError(field, list(df.columns), f"columns {list(cols)}", hint=f"missing {missing}")
