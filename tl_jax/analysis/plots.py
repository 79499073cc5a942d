"""Figures for sweep reports (matplotlib, Agg backend, no display needed).

Each `draw_*` draws on a given Axes (tests inspect its artists); each `plot_*` makes a figure,
calls the matching `draw_*`, writes a PNG atomically (temp file + rename, so an interrupted report
never leaves a half-written image) and returns the saved path.
"""

from __future__ import annotations

import os
import pathlib
import re
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tl_jax.errors import ConfigError  # noqa: E402
from tl_jax.train import jsonl  # noqa: E402

PathLike = str | os.PathLike


def short_dataset(dataset: str) -> str:
  """'shared://data/cifar10/train.npz' -> 'cifar10': a title names the data set, not its file.

  A split file (train/test/val) names its folder; any other file its stem; a name is kept.
  """
  d = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", str(dataset or "")).rstrip("/")
  if not d:
    return ""
  p = pathlib.PurePosixPath(d)
  stem = p.stem if p.suffix else p.name
  if stem.lower() in ("train", "test", "val", "valid", "validation") and p.parent.name:
    return p.parent.name
  return stem


def run_title(name: str = "", dataset: str = "", method: str = "",
              n_per_class: int | None = None, seed: int | None = None) -> str:
  """'l2t_cifar10 · cifar10 · l2t_ww · N=10/class · seed 0' from what a run's summary knows.

  Every figure carries one so a PNG opened on its own says which run (or cell) it shows; empty
  fields are left out, and the data set is left out when the config name already contains it.
  """
  ds = short_dataset(dataset)
  parts = [str(name) if name else "", ds if ds and ds not in str(name) else "",
           str(method) if method and method != name else ""]
  if n_per_class:
    parts.append(f"N={int(n_per_class)}/class")
  if seed is not None and seed != "":
    parts.append(f"seed {seed}")
  return " · ".join(p for p in parts if p)


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
  """`cells`: one row per (method, n_per_class) with columns mean, std. Error bars = ±1 std.

  Several N: one line per method over N. A single N has no line to draw (each method would be a
  lone dot at one x, all stacked), so then the methods go on the x axis, one point with its
  error bar each, labelled with mean ± std.
  """
  _require_columns(cells, ("method", "n_per_class", "mean", "std"), "cells")
  methods = list(methods) if methods is not None else list(dict.fromkeys(cells["method"]))
  ns = sorted(cells["n_per_class"].unique())
  if len(ns) == 1:
    _draw_accuracy_one_n(ax, cells, methods, ns[0], ylabel)
    return
  for m in methods:
    sub = cells[cells["method"] == m].sort_values("n_per_class")
    ax.errorbar(sub["n_per_class"].to_numpy(float), sub["mean"].to_numpy(float),
                yerr=sub["std"].to_numpy(float), marker="o", capsize=3, label=str(m))
  ax.set_xticks([float(n) for n in ns], [str(n) for n in ns])
  ax.set_xlabel("samples per class (N)")
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  ax.legend()


def _draw_accuracy_one_n(ax: plt.Axes, cells: pd.DataFrame, methods: Sequence[str], n: Any,
                         ylabel: str) -> None:
  """Methods on the x axis at one N: one errorbar container per method, in `methods` order,
  each labelled mean ± std (and the seed count n where `cells` has it)."""
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  shown = [m for m in methods if (cells["method"] == m).any()]
  for i, m in enumerate(shown):
    row = cells[cells["method"] == m].iloc[0]
    mean, std = float(row["mean"]), float(row["std"])
    ax.errorbar([i], [mean], yerr=[std], marker="o", markersize=7, capsize=5, linestyle="none",
                color=colors[i % len(colors)], label=str(m))
    text = f"{mean:.1f}" if np.isnan(std) else f"{mean:.1f} ± {std:.1f}"
    if "n" in row.index and pd.notna(row["n"]):  # how many seeds the bar stands on
      text += f" (n={int(row['n'])})"
    ax.annotate(text, (i, mean), xytext=(10, 0), textcoords="offset points", va="center",
                fontsize=8)
  slanted = max((len(str(m)) for m in shown), default=0) > 10  # long names would collide
  ax.set_xticks(range(len(shown)), [str(m) for m in shown], rotation=30 if slanted else 0,
                ha="right" if slanted else "center")
  ax.set_xlim(-0.6, len(shown) - 0.4)
  ax.set_xlabel(f"method (N = {n} samples per class)")
  ax.set_ylabel(ylabel)
  ax.grid(True, axis="y", alpha=0.3)


def plot_accuracy_vs_n(cells: pd.DataFrame, out_path: PathLike,
                       methods: Sequence[str] | None = None, title: str = "",
                       ylabel: str = "test accuracy (%)") -> pathlib.Path:
  n_methods = len(methods) if methods is not None else cells["method"].nunique()
  width = max(6, 1.1 * n_methods + 2) if cells["n_per_class"].nunique() == 1 else 6
  fig, ax = plt.subplots(figsize=(width, 4), layout="constrained")
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
      ax.scatter(pos + jitter, vals, s=16, color=colors[j % len(colors)], alpha=0.8, zorder=3,
                 label=str(m) if i == 0 else None)
  if data:
    ax.boxplot(data, positions=positions, widths=width * 0.8, showfliers=False,
               manage_ticks=False)
  ax.set_ylabel(ylabel or value)
  ax.grid(True, axis="y", alpha=0.3)
  if len(ns) == 1:  # one N: the methods name the boxes themselves, no legend over the data
    ax.set_xticks(positions, [m for _, m in order], rotation=30, ha="right")
    ax.set_xlabel(f"method (N = {ns[0]} per class)")
    return order
  ax.set_xticks(range(len(ns)), [str(n) for n in ns])
  ax.set_xlabel("samples per class")
  ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
  return order


def plot_box_strip(runs: pd.DataFrame, out_path: PathLike, value: str = "test_accuracy",
                   methods: Sequence[str] | None = None, title: str = "",
                   ylabel: str | None = None) -> pathlib.Path:
  n_boxes = runs["n_per_class"].nunique() * max(len(methods or runs["method"].unique()), 1)
  fig, ax = plt.subplots(figsize=(min(max(6, 0.6 * n_boxes + 2), 16), 4.5))
  draw_box_strip(ax, runs, value, ylabel=ylabel, methods=methods)
  ax.set_title(title)
  return save_figure(fig, out_path)


# ---------------------------------------------------------------- confusion matrix

def confusion_title(cm: np.ndarray, title: str = "") -> str:
  """`title` with the accuracy the matrix implies (trace / total) on its own line, so the
  figure states the number a reader would otherwise have to add up from the cells."""
  cm = np.asarray(cm, dtype=np.float64)
  total = float(cm.sum())
  if total <= 0:
    acc = "accuracy n/a (empty matrix)"
  else:
    correct = float(np.trace(cm))
    counts = np.all(cm == np.round(cm))
    tail = f" ({correct:.0f}/{total:.0f})" if counts else ""
    acc = f"accuracy {100.0 * correct / total:.1f}%{tail}"
  return f"{title}\n{acc}" if title else acc


def draw_confusion_matrix(ax: plt.Axes, cm: np.ndarray, class_names: Sequence[str] | None = None,
                          normalize: bool = False, title: str | None = None) -> np.ndarray:
  """Heatmap of cm[true, pred]; with normalize=True each row is divided by its sum (recall).

  With `title` (even '') the axes title is `confusion_title`: the title plus the accuracy of
  the unnormalised matrix.
  """
  raw = np.asarray(cm, dtype=np.float64)
  cm = raw
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ConfigError("confusion_matrix", cm.shape, "a square [C, C] array")
  if normalize:
    rows = cm.sum(axis=1, keepdims=True)
    cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
  ax.figure.colorbar(im, ax=ax, fraction=0.046, label="recall" if normalize else "count")
  c = cm.shape[0]
  names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
  if len(names) != c:
    raise ConfigError("class_names", len(names), f"{c} names")
  tick_size = 9 if c <= 12 else max(4, int(120 / c))
  long_names = max((len(str(n)) for n in names), default=0) > 2
  ax.set_xticks(range(c), names, rotation=45 if long_names else 0,
                ha="right" if long_names else "center", rotation_mode="anchor", fontsize=tick_size)
  ax.set_yticks(range(c), names, fontsize=tick_size)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if c <= 20:
    fmt = "{:.2f}" if normalize else "{:.0f}"
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(c):
      for j in range(c):
        ax.text(j, i, fmt.format(cm[i, j]), ha="center", va="center", fontsize=7,
                color="white" if cm[i, j] > thresh else "black")
  if title is not None:
    ax.set_title(confusion_title(raw, title), fontsize=10)
  return cm


def plot_confusion_matrix(cm: np.ndarray, out_path: PathLike,
                          class_names: Sequence[str] | None = None, normalize: bool = False,
                          title: str = "") -> pathlib.Path:
  c = np.asarray(cm).shape[0] if np.asarray(cm).ndim else 1
  fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * c + 2.5), max(4, 0.5 * c + 2)),
                         layout="constrained")
  draw_confusion_matrix(ax, cm, class_names, normalize, title=title)
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

  Only numeric train_*/val_* keys are taken; each record may carry a subset of them. A record
  holding both spellings of one key ('train/loss' and 'train_loss') gives one point (the first),
  and a second record at the same x (an epoch re-recorded after a resume) replaces the first, so
  no series doubles back on itself.
  """
  series: dict[str, dict[float, float]] = {}
  for rec in records:
    if x_key not in rec:
      continue
    seen: set[str] = set()
    for k, v in rec.items():
      name = k.replace("/", "_")
      if not (name.startswith("train_") or name.startswith("val_")) or name in seen:
        continue
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        seen.add(name)
        series.setdefault(name, {})[float(rec[x_key])] = float(v)
  return {k: (np.asarray(list(d), dtype=np.float64), np.asarray(list(d.values()), np.float64))
          for k, d in series.items()}


def _is_loss(name: str) -> bool:
  return "loss" in name or name.endswith("_ce")


def _plotted_series(series: Mapping[str, tuple]) -> dict[str, tuple]:
  """The series to draw: `<split>_ce_loss` / `<split>_ce` left out where it equals
  `<split>_loss` (tl_jax.train.steps logs both; without a regulariser they are the same numbers,
  and two identical lines read as 'train_loss plotted twice')."""
  out = {}
  for name, (x, y) in sorted(series.items()):
    for suffix in ("_ce_loss", "_ce"):
      if name.endswith(suffix):
        base = series.get(name[:-len(suffix)] + "_loss")
        if base is not None and np.array_equal(base[0], x) and np.allclose(base[1], y,
                                                                           equal_nan=True):
          break
    else:
      out[name] = (x, y)
  return out


def best_record(records: Sequence[Mapping]) -> Mapping | None:
  """The record of the run's reported result: the last one flagged is_best (tl_jax.engine.fit
  flags each stage's best-validation epoch; the last stage's best is what the run restores)."""
  best = [r for r in records if r.get("is_best")]
  return best[-1] if best else None


def stage_switches(records: Sequence[Mapping], x_key: str = "epoch"
                   ) -> tuple[list[float], list[tuple[str, float, float]]]:
  """(x of each switch, [(stage, first x, last x), ...]) over records that carry 'stage'.

  A switch sits halfway between the last x of one stage and the first x of the next, so the
  line separates the two stages' points.
  """
  spans: list[list] = []
  for r in records:
    if x_key not in r or "stage" not in r:
      continue
    x = float(r[x_key])
    if spans and spans[-1][0] == r["stage"]:
      spans[-1][2] = x
    else:
      spans.append([str(r["stage"]), x, x])
  switches = [(a[2] + b[1]) / 2.0 for a, b in zip(spans, spans[1:])]
  return switches, [tuple(s) for s in spans]


def draw_training_curves(ax_loss: plt.Axes, ax_acc: plt.Axes, records: Sequence[Mapping],
                         x_key: str = "epoch", marks: bool = True) -> dict[str, tuple]:
  """Loss keys (name contains 'loss', or the CE '*_ce') on ax_loss, accuracy keys on ax_acc.

  Each quantity is drawn once (see `_plotted_series`). With `marks`, both axes get a dashed
  vertical line at the best epoch (gid 'best_epoch', the epoch whose weights the run reports)
  and a dotted one at every stage switch (gid 'stage_switch'), with the stage names along the
  top, so a two-stage fine-tune reads as two stages and the reported epoch is visible. Returns
  every series found (drawn or not).
  """
  series = curve_series(records, x_key)
  if not series:
    raise ConfigError("metrics", f"{len(records)} records", "train_*/val_* numeric keys with "
                      f"an '{x_key}' field")
  main = {"train_loss": "C0", "train_accuracy": "C0", "val_loss": "C1", "val_accuracy": "C1"}
  extra = iter(f"C{i}" for i in range(2, 10_000))  # other quantities: their own colour, dashed
  for name, (x, y) in _plotted_series(series).items():
    ax = ax_loss if _is_loss(name) else ax_acc if "acc" in name else None
    if ax is None:
      continue
    if name in main:
      ax.plot(x, y, label=name, color=main[name])
    else:
      ax.plot(x, y, label=name, color=next(extra), linestyle="--")
  ys = [ln.get_ydata() for ln in ax_loss.lines]
  if ys:
    allv = np.concatenate([np.asarray(v, np.float64) for v in ys])
    allv = allv[np.isfinite(allv)]
    if allv.size and allv.min() > 0 and allv.max() / allv.min() > 100:
      ax_loss.set_yscale("log")  # one spike or a large total loss would flatten the rest
  if marks:
    _mark_epochs(ax_loss, ax_acc, records, x_key)
  for ax, yl in ((ax_loss, "loss"), (ax_acc, "accuracy")):
    ax.set_xlabel(x_key)
    ax.set_ylabel(yl)
    ax.grid(True, alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
  return series


def _mark_epochs(ax_loss: plt.Axes, ax_acc: plt.Axes, records: Sequence[Mapping],
                 x_key: str) -> None:
  switches, spans = stage_switches(records, x_key)
  for ax in (ax_loss, ax_acc):
    for xs in switches:
      ax.axvline(xs, color="0.4", linestyle=":", linewidth=1.2, gid="stage_switch",
                 label="_stage_switch")
    if len(spans) > 1:  # stage names above the plot area, centred on each stage
      top = ax.secondary_xaxis("top")
      top.set_xticks([(a + b) / 2.0 for _, a, b in spans], [n for n, _, _ in spans], fontsize=8,
                     color="0.3")
      top.tick_params(length=0)
  best = best_record(records)
  if best is not None and x_key in best:
    xb = float(best[x_key])
    label = f"best {x_key} {xb:g}"
    if isinstance(best.get("val_accuracy"), (int, float)):
      label += f" (val_accuracy {best['val_accuracy']:.3g})"
    ax_loss.axvline(xb, color="k", linestyle="--", linewidth=1, alpha=0.7, gid="best_epoch",
                    label="_best_epoch")
    ax_acc.axvline(xb, color="k", linestyle="--", linewidth=1, alpha=0.7, gid="best_epoch",
                   label=label)
    if "val_accuracy" in best and isinstance(best["val_accuracy"], (int, float)):
      ax_acc.plot([xb], [float(best["val_accuracy"])], marker="*", markersize=11, color="k",
                  linestyle="none", gid="best_epoch_marker", label="_best_epoch_marker")


def plot_training_curves(metrics: PathLike | Sequence[Mapping], out_path: PathLike,
                         x_key: str = "epoch", title: str = "") -> pathlib.Path:
  records = read_metrics_jsonl(metrics) if isinstance(metrics, (str, os.PathLike)) else metrics
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
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

def _trajectory_arrays(trajectories: Mapping[str, np.ndarray], steps: Sequence[float] | None,
                       weight_names: Sequence[str] | None
                       ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
  """({method: [T, K]}, x [T], K names), checked: equal shapes, T steps, K names."""
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
  if len(names) != k:
    raise ConfigError("weight_names", len(names), f"{k} names")
  return arrs, x, names


def _method_handles(methods: Sequence[str]) -> list[Line2D]:
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return [Line2D([], [], color=colors[i % len(colors)], label=str(m))
          for i, m in enumerate(methods)]


def draw_weight_trajectories(ax: plt.Axes, trajectories: Mapping[str, np.ndarray],
                             steps: Sequence[float] | None = None,
                             weight_names: Sequence[str] | None = None,
                             xlabel: str = "step") -> None:
  """Lines of chosen weights over steps on one Axes, one colour per method, one line style per
  weight.

  trajectories[method]: [T] or [T, K] (K chosen weights); all methods share T (same init, same
  seed, as in the thesis' ablation). The legend names the methods only (one entry per colour)
  and sits outside the axes: one entry per (method, weight) buried the lines. For more than a
  few weights `draw_weight_trajectory_grid` (one panel per weight) reads better.
  """
  arrs, x, names = _trajectory_arrays(trajectories, steps, weight_names)
  k = len(names)
  styles = ["-", "--", ":", "-."]
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (m, a) in enumerate(arrs.items()):
    for j in range(k):
      ax.plot(x, a[:, j], linestyle=styles[j % len(styles)], color=colors[i % len(colors)],
              label=f"{m} {names[j]}" if k > 1 else str(m))
  ax.set_xlabel(xlabel)
  ax.set_ylabel("weight value")
  ax.grid(True, alpha=0.3)
  ax.legend(handles=_method_handles(list(arrs)), fontsize=8, loc="upper left",
            bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def draw_weight_trajectory_grid(fig: plt.Figure, trajectories: Mapping[str, np.ndarray],
                                steps: Sequence[float] | None = None,
                                weight_names: Sequence[str] | None = None,
                                xlabel: str = "step", ncols: int = 4,
                                max_panels: int = 12) -> list[plt.Axes]:
  """Small multiples: one panel per chosen weight (the first `max_panels`), the methods as
  colours in every panel, and a single figure legend with one entry per method below the
  panels, so no legend covers a line and each weight keeps its own y scale.

  Returns the panels' Axes; panel j holds one line per method (in `trajectories` order).
  """
  arrs, x, names = _trajectory_arrays(trajectories, steps, weight_names)
  k = min(len(names), max(1, int(max_panels)))
  ncols = max(1, min(int(ncols), k))
  nrows = -(-k // ncols)
  axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).reshape(-1)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for j, ax in enumerate(axes):
    if j >= k:
      ax.set_visible(False)
      continue
    for i, (m, a) in enumerate(arrs.items()):
      ax.plot(x, a[:, j], color=colors[i % len(colors)], linewidth=1.3, label=str(m))
    ax.set_title(names[j], fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    if j % ncols == 0:
      ax.set_ylabel("weight value", fontsize=9)
    if j >= k - ncols:  # bottom panel of its column
      ax.set_xlabel(xlabel, fontsize=9)
      ax.xaxis.set_tick_params(labelbottom=True)
  fig.legend(handles=_method_handles(list(arrs)), loc="outside lower center",
             ncol=min(len(arrs), 6), fontsize=9, frameon=False)
  return list(axes[:k])


def plot_weight_trajectories(trajectories: Mapping[str, np.ndarray], out_path: PathLike,
                             steps: Sequence[float] | None = None,
                             weight_names: Sequence[str] | None = None,
                             title: str = "", xlabel: str = "step",
                             ncols: int = 4) -> pathlib.Path:
  k = len(_trajectory_arrays(trajectories, steps, weight_names)[2])  # checked before a figure
  nc = max(1, min(ncols, k))
  nrows = -(-min(k, 12) // nc)
  fig = plt.figure(figsize=(2.9 * nc + 0.6, 2.3 * nrows + 1.1), layout="constrained")
  draw_weight_trajectory_grid(fig, trajectories, steps, weight_names, xlabel, ncols)
  fig.suptitle(title)
  return save_figure(fig, out_path)


def _require_columns(df: pd.DataFrame, cols: Sequence[str], field: str) -> None:
  missing = [c for c in cols if c not in df.columns]
  if missing:
    raise ConfigError(field, list(df.columns), f"columns {list(cols)}", hint=f"missing {missing}")
