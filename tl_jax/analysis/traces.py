"""What changes during training, recorded per epoch for the thesis's Fig. 35 and Fig. 36.

`TraceRecorder` (an `on_epoch_end` hook of tl_jax.engine.fit) appends to `trace.jsonl` in the
run's workdir: a few chosen weights of the target's first convolution (the same indices for every
method, so runs sharing a seed share their starting point) and, for L2T-www, the per-pixel
weights γ of every pair averaged over probe images and channels. Readers keep the last record
per epoch, so a resumed run that re-records an epoch is fine.

    python -m tl_jax.analysis.traces --runs DIR --out results/<experiment>/figures
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any, Sequence

import flax
import jax
import numpy as np

from tl_jax.train import jsonl

TRACE_FILE = "trace.jsonl"
NUM_WEIGHTS = 8


def chosen_weights(params: Any, k: int = NUM_WEIGHTS) -> tuple[str, np.ndarray]:
  """The first k entries of the first 4-D kernel in param-path order (name, values)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  for name in sorted(flat):
    if np.ndim(flat[name]) == 4:
      return name, np.asarray(flat[name]).ravel()[:k]
  name = sorted(flat)[0]
  return name, np.asarray(flat[name]).ravel()[:k]


class TraceRecorder:
  """(state, record) -> appends weights (and γ for L2T-www) to trace.jsonl; called by the engine
  after every epoch of a seed. `meta_outputs(state, images)` gives the meta-networks' outputs
  (tl_jax.kt.bilevel.KnowledgeTransfer.meta_outputs with the source bound)."""

  def __init__(self, workdir: str | pathlib.Path, meta_outputs: Any = None,
               probe_images: Any = None, method: str = ""):
    self.path = pathlib.Path(workdir) / TRACE_FILE
    self.meta_outputs = meta_outputs
    self.probe = probe_images
    self.method = method

  def __call__(self, state: Any, record: dict[str, Any]) -> None:
    name, w = chosen_weights(jax.device_get(state.params))
    row = {"epoch": int(record["epoch"]), "weight_name": name, "weights": w.tolist()}
    if self.meta_outputs is not None and self.probe is not None and self.method == "l2t_www":
      out = jax.device_get(self.meta_outputs(state, self.probe))
      row["gamma"] = {k: np.asarray(v["gamma"]).mean(axis=(0, 3)).tolist()
                      for k, v in out.items() if "gamma" in v}
    jsonl.append_jsonl(self.path, row)


def read_trace(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
  """Trace rows of a run, one per epoch (the last written wins), sorted by epoch."""
  p = pathlib.Path(workdir) / TRACE_FILE
  if not p.exists():
    return []
  by_epoch = {r["epoch"]: r for r in jsonl.read_jsonl(p)}
  return [by_epoch[e] for e in sorted(by_epoch)]


def plot_traces(runs: str | pathlib.Path, out: str | pathlib.Path,
                methods: Sequence[str] = ("scratch", "ufm", "l2t_ww", "l2t_www")) -> list[str]:
  """Fig. 35 (γ of L2T-www over epochs, first pair) and Fig. 36 (weight trajectories per method
  from the shared init of the same seed and N) from a sweep directory <method>/n<N>/seed<s>."""
  from tl_jax.analysis import plots
  runs, out = pathlib.Path(runs), pathlib.Path(out)
  written = []
  cells = sorted({(p.parent.name, p.name) for p in runs.glob("*/n*/seed*")},
                 key=lambda c: (int(c[0][1:]), int(c[1][4:])))
  for n_dir, seed_dir in cells[:1]:
    traj, epochs, wname = {}, None, ""
    for m in methods:
      rows = read_trace(runs / m / n_dir / seed_dir)
      if rows:
        traj[m] = np.array([r["weights"] for r in rows])
        epochs = epochs or [r["epoch"] for r in rows]
        wname = wname or str(rows[0].get("weight_name", ""))
    if traj:
      first = next(iter(traj.values()))  # plots checks that every method has this shape
      head = _sweep_label(runs, methods, n_dir, seed_dir)
      written.append(str(plots.plot_weight_trajectories(
          traj, out / f"weight_trajectories_{n_dir}_{seed_dir}.png", steps=epochs,
          xlabel="epoch", weight_names=[f"{wname or 'w'} #{j}" for j in range(first.shape[-1])],
          title=f"{head}first-conv weights over epochs ({n_dir}, {seed_dir}; same init)")))
    rows = [r for r in read_trace(runs / "l2t_www" / n_dir / seed_dir) if "gamma" in r]
    if rows:
      pair = sorted(rows[0]["gamma"])[0]
      g = np.array([r["gamma"][pair] for r in rows])
      written.append(str(plots.plot_gamma_grid(
          g, out / f"gamma_{pair}_{n_dir}_{seed_dir}.png", epochs=[r["epoch"] for r in rows],
          title=f"L2T-www per-pixel weights γ, pair {pair} ({n_dir}, {seed_dir})")))
  return written


def _sweep_label(runs: pathlib.Path, methods: Sequence[str], n_dir: str, seed_dir: str) -> str:
  """'<config name> · <data set> · ' from the first of the cell's runs with a summary.json, so
  the figure names what it was trained on; '' when no summary is there yet."""
  from tl_jax.analysis import plots
  for m in methods:
    p = runs / m / n_dir / seed_dir / "summary.json"
    if p.is_file():
      try:
        s = json.loads(p.read_text())
      except json.JSONDecodeError:
        continue
      label = plots.run_title(s.get("name", ""), s.get("dataset", ""))
      return f"{label} · " if label else ""
  return ""


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--runs", required=True)
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  for p in plot_traces(args.runs, args.out):
    print(p)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
