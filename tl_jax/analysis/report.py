"""Thesis-style tables, tests and figures from a directory of finished runs.

    python -m tl_jax.analysis.report --runs DIR --out results/<experiment> \
        [--compare L2T-www,L2T-ww] [--methods a,b,c] [--decimal-sep ,] [--curves]

Input: every `summary.json` under DIR (any depth; one per run, written by the training entry point
with `write_summary`). Schema (accuracies are FRACTIONS in [0, 1]; tables show percent):

    method           str    required  e.g. 'scratch', 'UFM', 'L2T-ww', 'L2T-www'
    n_per_class      int    required  training samples per class (majority count if imbalanced)
    seed             int    required  repetition seed
    test_accuracy    float  required  top-1 accuracy on the test split
    val_accuracy     float  optional  accuracy on the validation split (best epoch)
    minority_accuracy float optional  accuracy on the minority class (imbalanced experiment)
    dataset          str    optional  default 'unknown'
    model            str    optional
    experiment       str    optional  default: 'imbalanced' if minority_accuracy is set,
                                      else 'balanced'
    confusion_matrix list   optional  [C][C] counts, cm[true][pred] (figure per method at max N)
    hardware, git_commit, wall_time_s, best_epoch, ... optional, kept as extra columns

Output in OUT: README.md (tables, test/alternative/method, n per cell, Holm family, git commit,
date, hardware), one CSV per table, cells.csv (numeric mean/std/n), tests.csv (U, p, Holm p,
rank-biserial), figures/*.png. Every file is written atomically (temp + rename).

Holm family: all Mann-Whitney tests of one table (one dataset/experiment/metric, every N and
every compared pair).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from tl_jax.analysis import stats
from tl_jax.errors import ConfigError, check_choice

SUMMARY_NAME = "summary.json"
REQUIRED = ("method", "n_per_class", "seed", "test_accuracy")
ACCURACY_KEYS = ("test_accuracy", "val_accuracy", "minority_accuracy")
METHOD_ORDER = ("scratch", "from_scratch", "ufm", "UFM", "l2t_ww", "L2T-ww", "l2t_www", "L2T-www")
# The thesis comparison (proposed vs previous), in the project's and the thesis' spelling.
DEFAULT_PAIRS = (("l2t_www", "l2t_ww"), ("L2T-www", "L2T-ww"))
ALPHA = 0.05


# ---------------------------------------------------------------- atomic I/O

def write_text_atomic(path: str | os.PathLike, text: str) -> pathlib.Path:
  """Write via a temp file in the same directory + os.replace (readers never see half a file)."""
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, out)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return out


def write_summary(workdir: str | os.PathLike, summary: Mapping[str, Any]) -> pathlib.Path:
  """Validates and writes `workdir/summary.json` atomically (the sweep skips cells that have it)."""
  d = validate_summary(dict(summary), str(workdir))
  return write_text_atomic(pathlib.Path(workdir) / SUMMARY_NAME,
                           json.dumps(d, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o)}")


# ---------------------------------------------------------------- loading

def validate_summary(d: dict, where: str) -> dict:
  """Checks required fields and accuracy ranges; fills `dataset` and `experiment` defaults."""
  missing = [k for k in REQUIRED if k not in d or d[k] is None]
  if missing:
    raise ConfigError(f"{where}:summary", sorted(d), f"fields {list(REQUIRED)}",
                      hint=f"missing {missing}")
  for k in ACCURACY_KEYS:
    v = d.get(k)
    if v is None:
      continue
    if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
      raise ConfigError(f"{where}:{k}", v, "a fraction in [0, 1]",
                        hint="accuracies are stored as fractions, not percent")
  for k in ("n_per_class", "seed"):
    if isinstance(d[k], bool) or not isinstance(d[k], (int, np.integer)):
      raise ConfigError(f"{where}:{k}", d[k], "an integer")
  d.setdefault("dataset", "unknown")
  if not d.get("experiment"):
    d["experiment"] = "imbalanced" if d.get("minority_accuracy") is not None else "balanced"
  return d


def load_runs(runs_dir: str | os.PathLike) -> pd.DataFrame:
  """One row per summary.json under `runs_dir`; a `run_dir` column says where it came from."""
  root = pathlib.Path(runs_dir)
  if not root.is_dir():
    raise ConfigError("--runs", str(root), hint="directory not found")
  rows = []
  for p in sorted(root.rglob(SUMMARY_NAME)):
    try:
      d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
      raise ConfigError("summary.json", str(p), hint=f"not valid JSON ({e})") from e
    d = validate_summary(d, str(p))
    d["run_dir"] = str(p.parent)
    rows.append(d)
  if not rows:
    raise ConfigError("--runs", str(root), hint=f"no {SUMMARY_NAME} found under it")
  df = pd.DataFrame(rows)
  key = ["dataset", "experiment", "method", "n_per_class", "seed"]
  dup = df[df.duplicated(key, keep=False)]
  if len(dup):
    raise ConfigError("runs", dup["run_dir"].tolist()[:4], hint="several runs share "
                      "(dataset, experiment, method, n_per_class, seed)")
  return df


def order_methods(methods: Sequence[str], preferred: Sequence[str] | None = None) -> list[str]:
  """Given order first, then the thesis order (scratch, UFM, L2T-ww, L2T-www), then the rest."""
  present = list(dict.fromkeys(methods))
  first = [m for m in (preferred or METHOD_ORDER) if m in present]
  return first + sorted(m for m in present if m not in first)


# ---------------------------------------------------------------- tables

def cell_stats(runs: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
  """Numeric mean/std (ddof=1)/n in percent per (dataset, experiment, method, n_per_class)."""
  sub = runs[runs[metric].notna()] if metric in runs.columns else runs.iloc[:0]
  rows = []
  for key, g in sub.groupby(["dataset", "experiment", "method", "n_per_class"], sort=True):
    ms = stats.mean_std(100.0 * g[metric].to_numpy(float))
    rows.append(dict(zip(["dataset", "experiment", "method", "n_per_class"], key),
                     metric=metric, mean=ms.mean, std=ms.std, n=ms.n, ddof=ms.ddof))
  return pd.DataFrame(rows, columns=["dataset", "experiment", "method", "n_per_class", "metric",
                                     "mean", "std", "n", "ddof"])


def comparison_table(runs: pd.DataFrame, metric: str = "test_accuracy",
                     methods: Sequence[str] | None = None,
                     pairs: Sequence[tuple[str, str]] | None = None,
                     alternative: str = "two-sided", decimals: int = 2,
                     decimal_sep: str = ".") -> tuple[pd.DataFrame, pd.DataFrame]:
  """Rows = N per class; columns = methods ('mean ± std' %), then per pair A,B: difference of
  means A - B (percentage points), Mann-Whitney p, Holm-adjusted p; last column n per cell.

  `runs` must hold one dataset/experiment. Returns (display table of strings, tests DataFrame).
  """
  sub = runs[runs[metric].notna()] if metric in runs.columns else runs.iloc[:0]
  if sub.empty:
    raise ConfigError("metric", metric, hint="no run has this value")
  methods = order_methods(sub["method"].unique(), methods) if methods is None else list(methods)
  unknown = [m for m in methods if m not in set(sub["method"])]
  if unknown:
    raise ConfigError("methods", unknown, sorted(set(sub["method"])))
  if pairs is None:
    pairs = [p for p in DEFAULT_PAIRS if set(p) <= set(methods)][:1]
  for a, b in pairs:
    for m in (a, b):
      if m not in set(sub["method"]):
        raise ConfigError("compare", f"{a},{b}", sorted(set(sub["method"])))
  ns = sorted(sub["n_per_class"].unique())
  vals = {(m, n): 100.0 * sub[(sub["method"] == m) & (sub["n_per_class"] == n)][metric]
          .to_numpy(float) for m in set(methods) | {x for p in pairs for x in p} for n in ns}
  fmt = lambda x: f"{x:+.{decimals}f}".replace(".", decimal_sep)  # noqa: E731
  table = pd.DataFrame(index=pd.Index(ns, name="N per class"))
  for m in methods:
    table[m] = [stats.mean_std(vals[m, n]).format(decimals, decimal_sep) if vals[m, n].size
                else "—" for n in ns]
  tests = []
  for a, b in pairs:
    for n in ns:
      x, y = vals[a, n], vals[b, n]
      row = dict(n_per_class=n, a=a, b=b, n_a=x.size, n_b=y.size, metric=metric)
      if x.size and y.size:
        r = stats.mann_whitney(x, y, alternative=alternative)
        row.update(diff=float(x.mean() - y.mean()), U=r.statistic, p=r.pvalue, mw_method=r.method,
                   alternative=r.alternative, rank_biserial=r.rank_biserial)
      else:
        row.update(diff=np.nan, U=np.nan, p=np.nan, mw_method="", alternative=alternative,
                   rank_biserial=np.nan)
      tests.append(row)
  tests_df = pd.DataFrame(tests, columns=["metric", "n_per_class", "a", "b", "n_a", "n_b", "diff",
                                          "U", "p", "mw_method", "alternative", "rank_biserial"])
  tests_df["p_holm"] = stats.holm(tests_df["p"].to_numpy(float)) if len(tests_df) else []
  for a, b in pairs:
    t = tests_df[(tests_df["a"] == a) & (tests_df["b"] == b)].set_index("n_per_class")
    table[f"diff ({a} − {b})"] = [fmt(t.loc[n, "diff"]) if not math.isnan(t.loc[n, "diff"])
                                  else "—" for n in ns]
    table[f"p MW ({a} vs {b})"] = [stats.format_p(t.loc[n, "p"]) for n in ns]
    table[f"p Holm ({a} vs {b})"] = [stats.format_p(t.loc[n, "p_holm"]) for n in ns]
  table["n per cell"] = ["/".join(str(vals[m, n].size) for m in methods) for n in ns]
  return table, tests_df


def to_markdown(df: pd.DataFrame) -> str:
  """A GitHub Markdown table (index as first column); no extra dependency."""
  head = [str(df.index.name or "")] + [str(c) for c in df.columns]
  esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
  lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
  for idx, row in df.iterrows():
    lines.append("| " + " | ".join(map(esc, [idx, *row.tolist()])) + " |")
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- provenance

def git_commit(root: str | os.PathLike | None = None) -> str:
  root = root or pathlib.Path(__file__).resolve().parents[2]
  try:
    r = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root,
                       capture_output=True, text=True, timeout=10)
    sha = r.stdout.strip() if r.returncode == 0 else ""
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return (sha or "unknown (no commit)") + (" (dirty)" if sha and dirty else "")


def hardware_description() -> str:
  try:
    import jax  # lazy: the report itself needs no accelerator
    devs = ", ".join(sorted({f"{d.platform}:{d.device_kind}" for d in jax.devices()}))
    jax_s = f"jax {jax.__version__}, {len(jax.devices())} device(s) [{devs}]"
  except Exception as e:  # noqa: BLE001 - a report must still be written
    jax_s = f"jax unavailable ({type(e).__name__})"
  return (f"{platform.platform()}; CPU {platform.processor() or platform.machine()} "
          f"x{os.cpu_count()}; Python {platform.python_version()}; {jax_s}")


# ---------------------------------------------------------------- the whole report

def _slug(*parts: Any) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(str(p) for p in parts if p != "")).strip("_")


def build_report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 pairs: Sequence[tuple[str, str]] | None = None,
                 methods: Sequence[str] | None = None, alternative: str = "two-sided",
                 decimals: int = 2, decimal_sep: str = ".", curves: bool = False) -> pathlib.Path:
  """Writes README.md, CSVs and figures for every (dataset, experiment) in `runs_dir`."""
  from tl_jax.analysis import plots  # lazy: matplotlib import is slow
  check_choice("alternative", alternative, stats.ALTERNATIVES)
  runs = load_runs(runs_dir)
  out = pathlib.Path(out_dir)
  fig_dir = out / "figures"
  now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  md = [f"# Results: {out.name}\n", f"- generated: {now}", f"- git commit: `{git_commit()}`",
        f"- report hardware: {hardware_description()}", f"- runs: {len(runs)} summary.json under "
        f"`{runs_dir}`"]
  hw_cols = [c for c in ("hardware", "backend", "devices") if c in runs.columns]
  if hw_cols:
    hw = sorted({" ".join(str(r[c]) for c in hw_cols) for _, r in runs[hw_cols].iterrows()})
    md.append(f"- training hardware (from summary.json): {'; '.join(hw)}")
  md += ["", "Conventions: values are accuracy in percent, mean ± sample std (ddof=1) over the "
         "seeds of each cell. Tests: Mann-Whitney U (scipy.stats.mannwhitneyu), alternative "
         f"'{alternative}', method 'exact' when a sample has <= {stats.EXACT_MAX_N} values and no "
         "ties, else 'asymptotic' (normal approximation, tie-corrected, continuity correction); "
         "the method used per test is in tests.csv. Holm-adjusted p: family = all tests in the "
         f"same table. Difference = mean(A) − mean(B) in percentage points. alpha = {ALPHA}.", ""]
  all_cells, all_tests = [], []
  for (ds, exp), g in runs.groupby(["dataset", "experiment"], sort=True):
    metrics = ["test_accuracy"]
    if "minority_accuracy" in g.columns and g["minority_accuracy"].notna().any():
      metrics.append("minority_accuracy")
    md.append(f"## {ds} — {exp}\n")
    for metric in metrics:
      slug = _slug(ds, exp, metric)
      table, tests_df = comparison_table(g, metric, methods, pairs, alternative, decimals,
                                         decimal_sep)
      cells = cell_stats(g, metric)
      tests_df.insert(0, "experiment", exp)
      tests_df.insert(0, "dataset", ds)
      all_cells.append(cells)
      all_tests.append(tests_df)
      write_text_atomic(out / f"table_{slug}.csv", table.to_csv())
      shown = table
      if metric == "minority_accuracy":  # thesis Table 4 layout: one row per method
        shown = table.T.rename(columns=lambda n: f"N per class = {n}")
        shown.index.name = "method"
      md += [f"### {metric} (%)\n", to_markdown(shown),
             f"CSV: `table_{slug}.csv`. n per cell lists seeds per method in column order.\n"]
      ms = order_methods(g["method"].unique(), methods)
      p1 = plots.plot_accuracy_vs_n(cells, fig_dir / f"acc_vs_n_{slug}.png", ms,
                                    title=f"{ds} {exp}", ylabel=f"{metric} (%)")
      g100 = g.assign(**{metric: 100.0 * g[metric]})
      p2 = plots.plot_box_strip(g100[g100[metric].notna()], fig_dir / f"box_{slug}.png", metric,
                                ms, title=f"{ds} {exp}: every seed", ylabel=f"{metric} (%)")
      md += [f"![{metric} vs N]({p1.relative_to(out)})", f"![seeds]({p2.relative_to(out)})", ""]
    if "confusion_matrix" in g.columns:
      nmax = g["n_per_class"].max()
      for m, gm in g[(g["n_per_class"] == nmax) & g["confusion_matrix"].notna()].groupby("method"):
        cm = np.sum([np.asarray(c, dtype=np.int64) for c in gm["confusion_matrix"]], axis=0)
        p = plots.plot_confusion_matrix(cm, fig_dir / f"cm_{_slug(ds, exp, m, nmax)}.png",
                                        title=f"{m}, N={nmax}, summed over {len(gm)} seeds")
        md.append(f"![confusion {m}]({p.relative_to(out)})")
      md.append("")
    if curves:
      for (m, n), gc in g.groupby(["method", "n_per_class"]):
        rd = pathlib.Path(gc.sort_values("seed")["run_dir"].iloc[0])
        records = None
        if (rd / "metrics.jsonl").is_file():
          records = plots.read_metrics_jsonl(rd / "metrics.jsonl")
        elif (rd / "history.json").is_file():  # tl_jax.experiment: a JSON list of epoch dicts
          records = json.loads((rd / "history.json").read_text())
        if records:
          p = plots.plot_training_curves(records, fig_dir / f"curves_{_slug(ds, exp, m, n)}.png",
                                         title=f"{m} N={n} seed {gc['seed'].min()}")
          md.append(f"![curves {m} N={n}]({p.relative_to(out)})")
  write_text_atomic(out / "cells.csv", pd.concat(all_cells).to_csv(index=False))
  write_text_atomic(out / "tests.csv", pd.concat(all_tests).to_csv(index=False))
  return write_text_atomic(out / "README.md", "\n".join(md) + "\n")


def _parse_pairs(values: Sequence[str] | None) -> list[tuple[str, str]] | None:
  if not values:
    return None
  pairs = []
  for v in values:
    parts = [s.strip() for s in v.split(",")]
    if len(parts) != 2 or not all(parts):
      raise ConfigError("--compare", v, "'A,B' (two method names)")
    pairs.append((parts[0], parts[1]))
  return pairs


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m tl_jax.analysis.report", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--runs", required=True, help="directory searched for summary.json")
  ap.add_argument("--out", required=True, help="output directory, e.g. results/stl10")
  ap.add_argument("--compare", action="append", help="'A,B' pair (repeatable); default "
                  "l2t_www,l2t_ww (or L2T-www,L2T-ww) when both exist")
  ap.add_argument("--methods", help="comma-separated column order / subset")
  ap.add_argument("--alternative", default="two-sided", choices=stats.ALTERNATIVES)
  ap.add_argument("--decimals", type=int, default=2)
  ap.add_argument("--decimal-sep", default=".", choices=[".", ","])
  ap.add_argument("--curves", action="store_true", help="also plot metrics.jsonl per cell")
  args = ap.parse_args(argv)
  try:
    path = build_report(args.runs, args.out, _parse_pairs(args.compare),
                        args.methods.split(",") if args.methods else None, args.alternative,
                        args.decimals, args.decimal_sep, args.curves)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
