"""The one module that turns run summaries into tables, tests and figures.

Every table of the project is built here, from the one `summary.json` schema below:
`comparison_table` (thesis layout: N rows x method columns, Mann-Whitney + Holm per pair),
`summary_table` (method rows, what `tl_jax.compare` prints and writes to results.md),
`split_table` / `split_comparison_table` (train/val/test metrics of single runs, the seed
scenarios' tables, `tl_jax.scenarios.tables`), and `provenance` (the header of results.md).
Callers only pick rows and write files, so a format or a statistic changes in one place.

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
    role             str    optional  'source' marks the network transferred FROM (never a method)
    {train,val,test}_{accuracy,macro_f1,loss,macro_recall}  optional  split tables; test_macro_f1
                                      is also a summary_table column
    epochs_run, best_epoch, wall_s   optional  split_comparison_table rows
    hardware, git_commit, wall_time_s, best_epoch, ... optional, kept as extra columns

Source runs are never counted as a method: `load_runs` skips a summary whose `role` is 'source'
or whose folder, relative to the scanned directory, lies under a folder named `source` (where
`tl_jax.compare` trains it, `<workdir>/source/`, and sets its `role`). A source run is a plain
run (usually method 'scratch', the target runs' seed), so counting it would add a seed to
'scratch' or collide with one.

Output in OUT: README.md (tables, test/alternative/method, n per cell, Holm family, git commit,
date, hardware), one CSV per table, cells.csv (numeric mean/std/n), tests.csv (U, p, Holm p,
rank-biserial), figures/*.png. Every file is written atomically (temp + rename).

Holm family: all Mann-Whitney tests of one table (one dataset/experiment/metric, every N and
every compared pair). A test needs at least MIN_TEST_N = 2 seeds on each side (else 'n/a'/'—').
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
import shlex
import subprocess
import sys
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from tl_jax import identity
from tl_jax.analysis import stats, suspect
from tl_jax.errors import ConfigError, check_choice

SUMMARY_NAME = "summary.json"
REQUIRED = ("method", "n_per_class", "seed", "test_accuracy")
ACCURACY_KEYS = ("test_accuracy", "val_accuracy", "minority_accuracy")
METHOD_ORDER = ("scratch", "from_scratch", "ufm", "UFM", "l2t_ww", "L2T-ww", "l2t_www", "L2T-www")
# The thesis comparison (proposed vs previous), in the project's and the thesis' spelling.
DEFAULT_PAIRS = (("l2t_www", "l2t_ww"), ("L2T-www", "L2T-ww"))
ALPHA = 0.05
MIN_TEST_N = 2  # seeds per side below which no Mann-Whitney test is reported
SPLITS = ("train", "val", "test")
SPLIT_METRICS = ("accuracy", "macro_f1", "loss", "macro_recall")  # run_summary's per-split keys
METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "loss": "loss",
                 "macro_recall": "macro recall", "minority_accuracy": "minority accuracy"}
SUMMARY_METRICS = ("test_accuracy", "test_macro_f1")  # compare's columns


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


def is_source_run(summary: Mapping[str, Any], rel_dir: str | os.PathLike | None = None) -> bool:
  """True for the network transferred from: `role` 'source', or a folder under `source/`
  (`rel_dir` is relative to the scanned directory, so a root that happens to sit below some
  'source' folder does not hide every run)."""
  return summary.get("role") == "source" or (
      rel_dir is not None and "source" in pathlib.PurePath(rel_dir).parts)


def runs_frame(summaries: Sequence[Mapping[str, Any]], where: str = "summaries") -> pd.DataFrame:
  """One validated row per summary (source runs dropped); rejects two runs of one cell, which
  would otherwise silently count as two seeds."""
  rows = []
  for i, d in enumerate(summaries):
    if not is_source_run(d):
      d = {**d, "run_dir": d.get("run_dir", f"{where}[{i}]")}
      if "suspect" not in d:  # flagged from the run's own history (tl_jax.analysis.suspect)
        rd = pathlib.Path(str(d["run_dir"]))
        d["suspect"] = suspect.reasons(d, suspect.read_history(rd) if rd.is_dir() else [])
      rows.append(validate_summary(d, d["run_dir"]))
  if not rows:
    raise ConfigError(where, len(summaries), hint="no (non-source) run summary")
  df = _separate_configs(pd.DataFrame(rows))
  key = ["dataset", "experiment", "method", "n_per_class", "seed"]
  dup = df[df.duplicated(key, keep=False)]
  if len(dup):
    raise ConfigError("runs", dup["run_dir"].tolist()[:4], hint="several runs share "
                      "(dataset, experiment, method, n_per_class, seed)")
  return df


def _separate_configs(df: pd.DataFrame) -> pd.DataFrame:
  """Runs of one (dataset, experiment, method, N) whose configs differ in more than the seed
  (`cell_hash`, tl_jax.identity) are not pooled: the most common config keeps the method name,
  every other one becomes 'method [cfg <hash>]', with a warning on stderr."""
  if "cell_hash" not in df.columns:
    return df
  df = df.copy()
  for key, g in df.groupby(["dataset", "experiment", "method", "n_per_class"], sort=True):
    hashes = g["cell_hash"].fillna("unknown")
    if hashes.nunique() <= 1:
      continue
    keep = hashes.value_counts().index[0]
    for h in hashes.unique():
      if h != keep:
        idx = g.index[hashes == h]
        df.loc[idx, "method"] = f"{key[2]} [cfg {str(h)[:6]}]"
    print(f"warning: {key[2]} N={key[3]}: runs of {hashes.nunique()} different configs "
          f"(not only the seed); listed separately as '{key[2]} [cfg <hash>]'", file=sys.stderr)
  return df


def _cell_hash(d: Mapping[str, Any], run_dir: pathlib.Path) -> str | None:
  if d.get("cell_hash"):
    return str(d["cell_hash"])
  cfg = identity.stored_config(run_dir)
  return identity.cell_hash(cfg) if cfg is not None else None


def load_runs(runs_dir: str | os.PathLike) -> pd.DataFrame:
  """One row per summary.json under `runs_dir` (source runs skipped, see `is_source_run`); a
  `run_dir` column says where it came from."""
  root = pathlib.Path(runs_dir)
  if not root.is_dir():
    raise ConfigError("--runs", str(root), hint="directory not found")
  rows = []
  for p in sorted(root.rglob(SUMMARY_NAME)):
    try:
      d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
      raise ConfigError("summary.json", str(p), hint=f"not valid JSON ({e})") from e
    if not is_source_run(d, p.parent.relative_to(root)):
      rows.append({**d, "run_dir": str(p.parent), "cell_hash": _cell_hash(d, p.parent)})
  if not rows:
    raise ConfigError("--runs", str(root), hint=f"no {SUMMARY_NAME} of a non-source run under it")
  return runs_frame(rows, str(root))


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


def _with_metric(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
  sub = runs[runs[metric].notna()] if metric in runs.columns else runs.iloc[:0]
  if sub.empty:
    raise ConfigError("metric", metric, hint="no run has this value")
  return sub


def _methods(sub: pd.DataFrame, methods: Sequence[str] | None) -> list[str]:
  """Row/column order: `methods` exactly (each must exist), else `order_methods`."""
  present = set(sub["method"])
  if methods is None:
    return order_methods(sub["method"].unique())
  unknown = [m for m in methods if m not in present]
  if unknown:
    raise ConfigError("methods", unknown, sorted(present))
  return list(methods)


def _samples(sub: pd.DataFrame, metric: str) -> dict[tuple[str, int], np.ndarray]:
  """{(method, N): values in percent}, the one place fractions become table units."""
  return {(m, n): 100.0 * g[metric].to_numpy(float)
          for (m, n), g in sub.groupby(["method", "n_per_class"], sort=False)}


def _cell(values: np.ndarray | None, decimals: int, decimal_sep: str) -> str:
  if values is None or not values.size:
    return "—"
  return stats.mean_std(values).format(decimals, decimal_sep)


def _test(x: np.ndarray | None, y: np.ndarray | None, alternative: str):
  """Mann-Whitney of x vs y, or None when a side has fewer than MIN_TEST_N values (one value
  against one always gives p = 1, which says nothing and would inflate a Holm family)."""
  if x is None or y is None or min(x.size, y.size) < MIN_TEST_N:
    return None
  return stats.mann_whitney(x, y, alternative=alternative)


def comparison_table(runs: pd.DataFrame, metric: str = "test_accuracy",
                     methods: Sequence[str] | None = None,
                     pairs: Sequence[tuple[str, str]] | None = None,
                     alternative: str = "two-sided", decimals: int = 2,
                     decimal_sep: str = ".") -> tuple[pd.DataFrame, pd.DataFrame]:
  """Rows = N per class; columns = methods ('mean ± std' %), then per pair A,B: difference of
  means A - B (percentage points), Mann-Whitney p, Holm-adjusted p; last column n per cell.

  `runs` must hold one dataset/experiment. Returns (display table of strings, tests DataFrame).
  """
  sub = _with_metric(runs, metric)
  methods = _methods(sub, methods)
  if pairs is None:
    pairs = [p for p in DEFAULT_PAIRS if set(p) <= set(methods)][:1]
  for a, b in pairs:
    for m in (a, b):
      if m not in set(sub["method"]):
        raise ConfigError("compare", f"{a},{b}", sorted(set(sub["method"])))
  ns = sorted(sub["n_per_class"].unique())
  vals = _samples(sub, metric)
  empty = np.zeros(0)
  fmt = lambda x: f"{x:+.{decimals}f}".replace(".", decimal_sep)  # noqa: E731
  table = pd.DataFrame(index=pd.Index(ns, name="N per class"))
  for m in methods:
    table[m] = [_cell(vals.get((m, n)), decimals, decimal_sep) for n in ns]
  tests = []
  for a, b in pairs:
    for n in ns:
      x, y = vals.get((a, n), empty), vals.get((b, n), empty)
      row = dict(n_per_class=n, a=a, b=b, n_a=x.size, n_b=y.size, metric=metric,
                 diff=float(x.mean() - y.mean()) if x.size and y.size else np.nan)
      r = _test(x, y, alternative)
      if r:
        row.update(U=r.statistic, p=r.pvalue, mw_method=r.method, alternative=r.alternative,
                   rank_biserial=r.rank_biserial)
      else:
        row.update(U=np.nan, p=np.nan, mw_method="", alternative=alternative,
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
  table["n per cell"] = ["/".join(str(vals.get((m, n), empty).size) for m in methods) for n in ns]
  return table, tests_df


def summary_table(runs: pd.DataFrame | Sequence[Mapping[str, Any]], reference: str | None = None,
                  references: Mapping[str, str] | None = None,
                  metrics: Sequence[str] = SUMMARY_METRICS,
                  methods: Sequence[str] | None = None, alternative: str = "two-sided",
                  decimals: int = 2, decimal_sep: str = ".") -> pd.DataFrame:
  """Rows = method (x N per class when the runs hold several N); columns = seeds, 'mean ± std' %
  of each metric some run has, Mann-Whitney p of the first metric vs the row's reference
  (`references[method]`, else `reference`, else the first method) at the same N.

  The layout of `tl_jax.compare`: one target, many methods, each tested against its own
  baseline (e.g. SGD methods against an SGD scratch run). Each p is read on its own, so there is
  no Holm family here; the thesis' family-corrected tests are `comparison_table`'s. `runs`
  (summaries or a `load_runs` frame) must hold one dataset/experiment.
  """
  runs = runs if isinstance(runs, pd.DataFrame) else runs_frame(runs)
  metrics = [m for m in metrics if m in runs.columns and runs[m].notna().any()]
  if not metrics:
    raise ConfigError("metrics", list(metrics), hint="no run has any of them")
  methods = _methods(runs, methods)
  reference = reference or methods[0]
  references = dict(references or {})
  ns = sorted(runs["n_per_class"].unique())
  vals = {k: _samples(runs[runs[k].notna()], k) for k in metrics}
  rows, index = [], []
  for m in methods:
    for n in ns:
      seeds = int(((runs["method"] == m) & (runs["n_per_class"] == n)).sum())
      if not seeds:
        continue
      ref = references.get(m, reference)
      r = None if ref == m else _test(vals[metrics[0]].get((m, n)),
                                      vals[metrics[0]].get((ref, n)), alternative)
      sel = runs[(runs["method"] == m) & (runs["n_per_class"] == n)]
      flagged = int(sum(bool(x) for x in sel["suspect"])) if "suspect" in sel.columns else 0
      rows.append([seeds] + [_cell(vals[k].get((m, n)), decimals, decimal_sep) for k in metrics]
                  + [f"{stats.format_p(r.pvalue)} ({ref})" if r else "—",
                     f"{flagged} {suspect.MARK}" if flagged else ""])
      index.append((m, n) if len(ns) > 1 else m)
  cols = (["seeds"] + [f"{metric_label(k)} (%)" for k in metrics] + ["Mann-Whitney p (vs)"]
          + ["suspect runs"])
  idx = (pd.MultiIndex.from_tuples(index, names=["method", "N per class"]) if len(ns) > 1
         else pd.Index(index, name="method"))
  return pd.DataFrame(rows, index=idx, columns=cols)


def metric_label(key: str) -> str:
  """'test_macro_f1' -> 'test macro-F1': the column/row names every table uses."""
  split, _, metric = key.partition("_")
  if split not in SPLITS:
    split, metric = "", key
  return " ".join(x for x in (split, METRIC_LABELS.get(metric, metric.replace("_", " "))) if x)


def _metric_grid(columns: Sequence[tuple[str, Mapping[str, Any], str]],
                 decimals: int) -> pd.DataFrame:
  """Rows = SPLIT_METRICS; a column per (label, summary, key prefix), '—' where absent."""
  grid = pd.DataFrame(index=pd.Index([METRIC_LABELS[k] for k in SPLIT_METRICS], name="metric"))
  for label, s, prefix in columns:
    grid[label] = ["—" if s.get(prefix + k) is None else f"{s[prefix + k]:.{decimals}f}"
                   for k in SPLIT_METRICS]
  return grid


def split_table(summary: Mapping[str, Any], decimals: int = 4) -> pd.DataFrame:
  """One run: metric rows x train/val/test columns (the seed scenarios' Tables 1-6)."""
  return _metric_grid([(s, summary, f"{s}_") for s in SPLITS], decimals)


def split_comparison_table(runs: Sequence[tuple[str, Mapping[str, Any]]], split: str = "test",
                           decimals: int = 4) -> pd.DataFrame:
  """Metric rows x one column per labelled run on one split, plus epochs and wall time (the
  seed scenarios' Table 7: single seeds side by side, no aggregation). Source runs dropped."""
  runs = [(label, s) for label, s in runs if not is_source_run(s)]
  grid = _metric_grid([(label, s, f"{split}_") for label, s in runs], decimals)
  extra = pd.DataFrame([[f"{s.get('epochs_run')} ({s.get('best_epoch')})" for _, s in runs],
                        [f"{s.get('wall_s', 0):.0f}" for _, s in runs]],
                       index=["epochs run (best)", "wall time (s)"], columns=grid.columns)
  return pd.concat([grid, extra]).rename_axis("metric")


def to_markdown(df: pd.DataFrame) -> str:
  """A GitHub Markdown table (index levels as first columns); no extra dependency."""
  head = [str(n or "") for n in df.index.names] + [str(c) for c in df.columns]
  esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
  lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
  for idx, row in df.iterrows():
    keys = idx if isinstance(idx, tuple) else (idx,)
    lines.append("| " + " | ".join(map(esc, [*keys, *row.tolist()])) + " |")
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- provenance

def git_commit(root: str | os.PathLike | None = None) -> str:
  """HEAD's sha, with ' (dirty)' when tracked code differs from it. Files under results/ do not
  count: they are what runs write (a benchmark script rewriting its own earlier output must not
  mark the code it runs as uncommitted)."""
  root = root or pathlib.Path(__file__).resolve().parents[2]
  try:
    r = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root,
                       capture_output=True, text=True, timeout=10)
    sha = r.stdout.strip() if r.returncode == 0 else ""
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)results"], cwd=root, capture_output=True, text=True,
                           timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return (sha or "unknown (no commit)") + (" (dirty)" if sha and dirty else "")


def _cpu_model() -> str:
  """The CPU's marketing name (platform.processor() is often empty or 'x86_64' on Linux)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def hardware_description() -> str:
  try:
    import jax  # lazy: the report itself needs no accelerator
    devs = ", ".join(sorted({f"{d.platform}:{d.device_kind}" for d in jax.devices()}))
    jax_s = f"jax {jax.__version__}, {len(jax.devices())} device(s) [{devs}]"
  except Exception as e:  # noqa: BLE001 - a report must still be written
    jax_s = f"jax unavailable ({type(e).__name__})"
  return (f"{platform.platform()}; CPU {_cpu_model()} x{os.cpu_count()}; "
          f"Python {platform.python_version()}; {jax_s}")


def runnable_command(argv: Sequence[str]) -> str:
  """`argv` as a shell line that reruns it from the working directory: a module run as a
  script (sys.argv[0] is then its file) becomes `python -m <module>`, a script under the
  working directory gets its relative path, every argument is shell-quoted."""
  argv = [str(a) for a in argv]
  if not argv:
    return ""
  head, rest = argv[0], argv[1:]
  path = pathlib.Path(head)
  pkg = pathlib.Path(__file__).resolve().parents[1]  # the tl_jax package
  if path.suffix == ".py" and path.is_file():
    full = path.resolve()
    if pkg in full.parents:
      mod = ".".join(full.relative_to(pkg.parent).with_suffix("").parts)
      return " ".join(["python", "-m", mod, *map(shlex.quote, rest)])
    try:
      head = str(full.relative_to(pathlib.Path.cwd().resolve()))
    except ValueError:
      head = str(full)
    return " ".join(["python", shlex.quote(head), *map(shlex.quote, rest)])
  return " ".join(map(shlex.quote, [head, *rest]))


def provenance(config_name: str, seeds: Sequence[int], wall_s: float,
               command: Sequence[str] | None = None) -> str:
  """Where a table came from, as Markdown lines above it (results.md): command, config, seeds,
  commit, date, hardware, wall time and the load average (a loaded machine skews wall time)."""
  now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
  return (f"Command: `{runnable_command(sys.argv if command is None else command)}`  \n"
          f"Config: {config_name}; seeds {tuple(seeds)}  \nCommit: {git_commit()}  \n"
          f"Date: {now}  \nHardware: {hardware_description()}  \n"
          f"Wall time: {wall_s:.0f} s; 1-min load average at the end: {os.getloadavg()[0]:.2f}"
          "\n\n")


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
    dsn = plots.short_dataset(ds) or ds  # figure titles: 'cifar10', not the file's path
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
                                    title=f"{dsn} · {exp}: mean ± std over seeds",
                                    ylabel=f"{metric} (%)")
      g100 = g.assign(**{metric: 100.0 * g[metric]})
      p2 = plots.plot_box_strip(g100[g100[metric].notna()], fig_dir / f"box_{slug}.png", metric,
                                ms, title=f"{dsn} · {exp}: every seed", ylabel=f"{metric} (%)")
      md += [f"![{metric} vs N]({p1.relative_to(out)})", f"![seeds]({p2.relative_to(out)})", ""]
    flagged = suspect.lines(g)
    if flagged:
      md += ["Suspect runs (counted in the table, to be read with care):", ""]
      md += [f"- {x}" for x in flagged] + [""]
    if "confusion_matrix" in g.columns:
      nmax = g["n_per_class"].max()
      for m, gm in g[(g["n_per_class"] == nmax) & g["confusion_matrix"].notna()].groupby("method"):
        cm = np.sum([np.asarray(c, dtype=np.int64) for c in gm["confusion_matrix"]], axis=0)
        p = plots.plot_confusion_matrix(cm, fig_dir / f"cm_{_slug(ds, exp, m, nmax)}.png",
                                        class_names=_class_names(gm, cm.shape[0]),
                                        title=f"{dsn} · {exp} · {m} · N={nmax}/class\n"
                                        f"test split, summed over {len(gm)} "
                                        f"seed{'s' if len(gm) != 1 else ''}")
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
                                         title=plots.run_title(f"{dsn} · {exp}", "", m, n,
                                                               gc["seed"].min()))
          md.append(f"![curves {m} N={n}]({p.relative_to(out)})")
  write_text_atomic(out / "cells.csv", pd.concat(all_cells).to_csv(index=False))
  write_text_atomic(out / "tests.csv", pd.concat(all_tests).to_csv(index=False))
  return write_text_atomic(out / "README.md", "\n".join(md) + "\n")


def _class_names(runs: pd.DataFrame, num_classes: int) -> list[str] | None:
  """The class names of a cell's runs, for confusion-matrix ticks: summary.json's
  'class_names' where present, else the run's model.json (tl_jax.transfer.init.save_variables
  writes them there for every method family). None (index ticks) unless all runs agree."""
  found = set()
  for _, r in runs.iterrows():
    names = r.get("class_names")
    if not isinstance(names, (list, tuple)):
      names = None
      meta = pathlib.Path(str(r.get("run_dir", ""))) / "model.json"
      if meta.is_file():
        try:
          names = json.loads(meta.read_text()).get("class_names")
        except (json.JSONDecodeError, AttributeError):
          names = None
    if names is None:
      return None
    found.add(tuple(str(n) for n in names))
  if len(found) != 1:
    return None
  names = list(found.pop())
  return names if len(names) == num_classes else None


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
