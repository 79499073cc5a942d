"""Compare methods on one target: optionally train a source network, then run every method of
`config.compare.methods` for every seed, and print/write a mean ± std table with Mann-Whitney
p-values against the reference method (the table and its provenance header come from
`tl_jax.analysis.report`, the project's one table module).

The methods x seeds are the same grid `launch/sweep.py` expands (tl_jax.sweep.grid, one
`method_overrides` entry per method): each method's unfinished seeds run as one compiled program
(`tl_jax.experiment.run_seeds`), one workdir per seed, `workdir/runs/<method>/n<N>/seed<S>`;
runs finished with the same config (tl_jax.identity) are skipped, so an interrupted comparison
resumes; runs of another config are an error unless --overwrite.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Any

import ml_collections

from tl_jax import experiment, identity, validate
from tl_jax.analysis import report, suspect
from tl_jax.errors import ConfigError
from tl_jax.sweep import grid
from tl_jax.train import jsonl


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a.b': v} -> {'a': {'b': v}} (ConfigDict keys cannot hold dots)."""
  out: dict[str, Any] = {}
  for k, v in flat.items():
    node = out
    *head, last = k.split(".")
    for h in head:
      node = node.setdefault(h, {})
    node[last] = v
  return out


def _run(cfg, wd: pathlib.Path, overwrite: bool = False) -> dict[str, Any]:
  done = wd / experiment.SUMMARY_FILE
  if done.exists() and identity.matches(wd, cfg):
    logging.info("finished earlier with this config, not rerun: %s", wd)
    return jsonl.read_json(done)
  return experiment.train_and_evaluate(cfg, wd, overwrite)


def run_comparison(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                   overwrite: bool = False) -> dict:
  """Runs the source (if any) and every method x seed; returns {'table': ..., 'runs': [...]}.
  Runs finished with the same config are kept; a workdir holding runs of another config is an
  error unless `overwrite` (tl_jax.identity)."""
  wd = experiment.check_workdir(workdir)
  t0 = time.time()
  c = config.compare
  base = ml_collections.ConfigDict(config.to_dict())
  del base["compare"]
  source_dir = wd / "source" if c.get("source") else None
  order = tuple(c.get("order") or ()) or tuple(c.methods.keys())
  sweep = ml_collections.ConfigDict({"methods": order, "seeds": tuple(int(x) for x in c.seeds),
                                     "n_per_class": (int(base.data.n_per_class),),
                                     "method_overrides": {}})
  for method in order:
    if method not in c.methods:
      raise ConfigError("compare.order", method, sorted(c.methods.keys()))
    over = grid.flatten(c.methods[method])
    over["name"] = method
    cfg = grid.apply_overrides(base, over)
    if source_dir is not None and cfg.transfer.strategy != "scratch" and \
        not cfg.transfer.init_from and cfg.transfer.init_kind == "tl_jax":
      over["transfer.init_from"] = str(source_dir)
    if source_dir is not None and cfg.kt.method != "none" and cfg.kt.source_kind == "tl_jax" \
        and not cfg.kt.source_weights:
      over["kt.source_weights"] = str(source_dir)
    sweep.method_overrides[method] = _nest(over)
  grid_cfg = ml_collections.ConfigDict(base.to_dict())
  grid_cfg.sweep = sweep
  # every value of the source and of every cell is checked before the source trains
  src_cfg = grid.apply_overrides(base, c.source) if c.get("source") else None
  if src_cfg is not None:
    validate.check_config(src_cfg)
    experiment.check_honoured(src_cfg)
  grid.check_cells(grid.expand_grid(grid_cfg, wd / "runs"))
  if src_cfg is not None:
    print(f"[tl_jax] training the source network in {source_dir}", flush=True)
    src = _run(src_cfg, source_dir, overwrite)
    if src.get("role") != "source":  # so no report counts it as a method, wherever it is copied
      src["role"] = "source"
      jsonl.write_json_atomic(source_dir / experiment.SUMMARY_FILE, src)
    print(f"[tl_jax] source test accuracy {src['test_accuracy']:.4f}", flush=True)
  # the same grid as launch/sweep.py: each method's pending seeds run as one program
  grid.run_grid(grid_cfg, wd / "runs", overwrite=overwrite)  # one line per finished run
  summaries = []
  for cell in grid.expand_grid(grid_cfg, wd / "runs"):
    s = jsonl.read_json(cell.workdir / experiment.SUMMARY_FILE)
    s["method"] = cell.method
    jsonl.write_json_atomic(cell.workdir / experiment.SUMMARY_FILE, s)
    summaries.append({**s, "run_dir": str(cell.workdir)})
  refs = c.get("references")
  frame = report.runs_frame(summaries)
  table = report.to_markdown(report.summary_table(
      frame, reference=c.get("reference") or order[0],
      references=refs.to_dict() if refs else None,
      methods=order))
  flagged = suspect.lines(frame)
  if flagged:
    table += "\nSuspect runs (counted above, to be read with care):\n\n" + "".join(
        f"- {x}\n" for x in flagged)
  figures = _figures(frame, wd, order, config.name)
  if figures:
    table += "\n" + "".join(f"![{f.stem}]({f.relative_to(wd)})\n" for f in figures)
  header = report.provenance(config.name, config.compare.seeds, time.time() - t0)
  jsonl.write_text_atomic(wd / "results.md", header + table)
  print("\n" + table, end="", flush=True)
  print(f"\n[tl_jax] table: {wd / 'results.md'}", flush=True)
  for f in figures:
    print(f"[tl_jax] figure: {f}", flush=True)
  print(f"[tl_jax] per run (metrics.jsonl, curves.png, confusion_matrix.png, tensorboard/): "
        f"{wd / 'runs'}/<method>/n<N>/seed<S>", flush=True)
  return {"table": table, "runs": summaries}


def _figures(frame: Any, wd: pathlib.Path, order: tuple[str, ...], name: str) -> list:
  """The comparison at a glance: every seed's test accuracy per method (box + points)."""
  try:
    from tl_jax.analysis import plots
  except ImportError:  # plotting is optional for headless library use
    return []
  if frame.empty or "test_accuracy" not in frame:
    return []
  ms = [m for m in order if m in set(frame["method"])]
  return [plots.plot_box_strip(frame, wd / "figures" / "test_accuracy.png", "test_accuracy",
                               methods=ms, title=f"{name}: test accuracy per seed")]
