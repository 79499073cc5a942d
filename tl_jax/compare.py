"""Compare methods on one target: optionally train a source network, then run every method of
`config.compare.methods` for every seed, and print/write a mean ± std table with Mann-Whitney
p-values against the reference method (the table and its provenance header come from
`tl_jax.analysis.report`, the project's one table module).

Each method's unfinished seeds run as one compiled program (`tl_jax.experiment.run_seeds`), one
workdir per seed, `workdir/runs/<method>/n<N>/seed<S>`; finished runs (summary.json present) are
skipped, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Any

import ml_collections

from tl_jax import experiment
from tl_jax.analysis import report
from tl_jax.errors import ConfigError
from tl_jax.train import jsonl


def _flatten(overrides: Any, prefix: str = "") -> list[tuple[str, Any]]:
  items = overrides.items() if hasattr(overrides, "items") else overrides
  out = []
  for k, v in items:
    key = f"{prefix}{k}"
    if hasattr(v, "items"):
      out += _flatten(v, key + ".")
    else:
      out.append((key, v))
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Any) -> ml_collections.ConfigDict:
  """A copy of `config` with nested ({'transfer': {'strategy': ...}}) or dotted overrides."""
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in _flatten(overrides):
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
      if p not in node:
        raise ConfigError(f"override {key}", value, sorted(node.keys()))
      node = node[p]
    open_dict = len(parts) > 1 and parts[-2].endswith("kwargs")  # model/head/source kwargs
    if parts[-1] not in node and not open_dict:
      raise ConfigError(f"override {key}", value, sorted(node.keys()))
    node[parts[-1]] = tuple(value) if isinstance(value, list) else value
  return out


def _run(cfg, wd: pathlib.Path) -> dict[str, Any]:
  done = wd / experiment.SUMMARY_FILE
  if done.exists():
    logging.info("finished earlier, not rerun: %s", wd)
    return jsonl.read_json(done)
  return experiment.train_and_evaluate(cfg, wd)


def run_comparison(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Runs the source (if any) and every method x seed; returns {'table': ..., 'runs': [...]}."""
  wd = experiment.check_workdir(workdir)
  t0 = time.time()
  c = config.compare
  base = ml_collections.ConfigDict(config.to_dict())
  del base["compare"]
  source_dir = None
  if c.source:
    source_dir = wd / "source"
    print(f"[tl_jax] training the source network in {source_dir}", flush=True)
    src = _run(apply_overrides(base, c.source), source_dir)
    if src.get("role") != "source":  # so no report counts it as a method, wherever it is copied
      src["role"] = "source"
      jsonl.write_json_atomic(source_dir / experiment.SUMMARY_FILE, src)
    print(f"[tl_jax] source test accuracy {src['test_accuracy']:.4f}", flush=True)
  summaries = []
  order = tuple(c.get("order") or ()) or tuple(c.methods.keys())
  for method in order:
    if method not in c.methods:
      raise ConfigError("compare.order", method, sorted(c.methods.keys()))
    cfgs, dirs = [], []
    for seed in c.seeds:
      cfg = apply_overrides(base, c.methods[method])
      cfg.seed = int(seed)
      if source_dir is not None and cfg.transfer.strategy != "scratch" and \
          not cfg.transfer.init_from and cfg.transfer.init_kind == "tl_jax":
        cfg.transfer.init_from = str(source_dir)
      if source_dir is not None and cfg.kt.method != "none" and cfg.kt.source_kind == "tl_jax" \
          and not cfg.kt.source_weights:
        cfg.kt.source_weights = str(source_dir)
      cfg.name = method
      cfgs.append(cfg)
      dirs.append(wd / "runs" / method / f"n{int(cfg.data.n_per_class)}" / f"seed{seed}")
    todo = [i for i, d in enumerate(dirs) if not (d / experiment.SUMMARY_FILE).exists()]
    if todo:
      print(f"[tl_jax] {method}: {len(todo)} seed(s) in one program", flush=True)
      experiment.run_seeds(cfgs[todo[0]], [cfgs[i].seed for i in todo], [dirs[i] for i in todo])
    for cfg, run_dir in zip(cfgs, dirs):
      s = jsonl.read_json(run_dir / experiment.SUMMARY_FILE)
      s["method"] = method
      jsonl.write_json_atomic(run_dir / experiment.SUMMARY_FILE, s)
      print(f"[tl_jax] {method:>20s} seed {cfg.seed}: test accuracy {s['test_accuracy']:.4f}",
            flush=True)
      summaries.append(s)
  refs = c.get("references")
  table = report.to_markdown(report.summary_table(
      summaries, reference=c.reference or order[0], references=refs.to_dict() if refs else None,
      methods=order))
  header = report.provenance(config.name, config.compare.seeds, time.time() - t0)
  jsonl.write_text_atomic(wd / "results.md", header + table)
  print(table, end="", flush=True)
  return {"table": table, "runs": summaries}
