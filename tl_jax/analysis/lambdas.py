"""How far the L2T meta-networks move the matching weights λ during a run.

L2T-ww's 'where' net sets one λ per layer pair (batch mean, logged by the engine as
`train_lambda/<pair>` in metrics.jsonl). Whether meta-learning changed λ at all, or the run
trained with the weights the random init of that net gave it, decides how a result should be read:
with 100 images and 200 iterations of meta-Adam at 1e-4 the second is possible. This module
reads the logged λ of every run in a sweep directory <method>/n<N>/seed<s>, writes one figure
(λ per pair over epochs, one panel per run) and a markdown table (first and last epoch, largest
pair, largest relative change of any pair's λ between the means of the first and last 10
epochs, final training CE and accuracy).

    python -m tl_jax.analysis.lambdas --runs DIR --out results/<experiment>/figures/lambdas.png \
        --table results/<experiment>/lambdas.md
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any, Sequence

import numpy as np

from tl_jax.analysis import plots
from tl_jax.errors import ConfigError, check_choice
from tl_jax.train import jsonl

PREFIX = "train_lambda/"
METHODS = ("ufm", "l2t_ww", "l2t_www")
WINDOW = 10  # epochs averaged at each end for the change column


def lambda_series(records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(epochs [E], {pair: λ [E]}) from metrics records; the last record of an epoch wins (a
  resumed run may re-record one). Only epochs that logged every pair are kept."""
  by_epoch: dict[int, dict[str, float]] = {}
  for r in records:
    lam = {k[len(PREFIX):]: float(v) for k, v in r.items() if k.startswith(PREFIX)}
    if lam and "epoch" in r:
      by_epoch[int(r["epoch"])] = lam
  if not by_epoch:
    return np.zeros(0, np.int64), {}
  pairs = sorted(set.intersection(*(set(d) for d in by_epoch.values())))
  epochs = np.array(sorted(by_epoch), np.int64)
  return epochs, {p: np.array([by_epoch[e][p] for e in epochs]) for p in pairs}


def run_dirs(runs: str | pathlib.Path, methods: Sequence[str] = METHODS) -> list[pathlib.Path]:
  """Run directories <method>/n<N>/seed<s> under `runs` that hold a metrics.jsonl, in method
  order, then N, then seed."""
  runs = pathlib.Path(runs)
  found = []
  for m in methods:
    cells = [p.parent for p in runs.glob(f"{m}/n*/seed*/metrics.jsonl")]
    found += sorted(cells, key=lambda d: (int(d.parent.name[1:]), int(d.name[4:])))
  return found


def summarise(run: pathlib.Path) -> dict[str, Any] | None:
  """One table row for a run, or None when it logged no λ."""
  records = plots.read_metrics_jsonl(run / "metrics.jsonl")
  epochs, lam = lambda_series(records)
  if not lam:
    return None
  first = {p: v[0] for p, v in lam.items()}
  last = {p: v[-1] for p, v in lam.items()}
  top = max(first, key=first.get)
  w = max(1, min(WINDOW, len(epochs) // 4))  # epoch means: λ also moves with the augmented batch
  change = max(abs(float(v[-w:].mean() - v[:w].mean())) / max(abs(float(v[:w].mean())), 1e-12)
               for v in lam.values())
  final = next((r for r in reversed(records) if "train_ce" in r), records[-1])
  return {"method": run.parent.parent.name, "n": run.parent.name, "seed": run.name,
          "epochs": int(epochs[-1]) + 1, "pairs": len(lam),
          "sum_first": sum(first.values()), "sum_last": sum(last.values()),
          "top_pair": top, "top_first": first[top], "max_rel_change": change,
          "train_ce_last": float(final.get("train_ce", np.nan)),
          "train_acc_last": float(final.get("train_accuracy", np.nan))}


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  head = ("| method | N | seed | epochs | pairs | Σλ first epoch | Σλ last epoch | largest λ at "
          "the start (pair) | largest change of a pair's λ, last vs first 10 epochs | train CE, last epoch | "
          "train acc. (%), last epoch |\n" + "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|")
  lines = [f"| {r['method']} | {r['n'][1:]} | {r['seed'][4:]} | {r['epochs']} | {r['pairs']} | "
           f"{r['sum_first']:.2f} | {r['sum_last']:.2f} | {r['top_first']:.2f} "
           f"(`{r['top_pair']}`) | {r['max_rel_change']:.2%} | {r['train_ce_last']:.3f} | "
           f"{100 * r['train_acc_last']:.1f} |" for r in rows]
  return "\n".join([head, *lines]) + "\n"


def plot_lambdas(runs: Sequence[pathlib.Path], out: str | pathlib.Path, ncols: int = 3,
                 title: str = "") -> pathlib.Path:
  """One panel per run: every pair's λ over epochs (log scale, shared y range)."""
  import matplotlib.pyplot as plt
  series = [(r, *lambda_series(plots.read_metrics_jsonl(r / "metrics.jsonl"))) for r in runs]
  series = [s for s in series if s[2]]
  if not series:
    raise ConfigError("runs", [str(r) for r in runs], hint="no run logged train_lambda/*")
  ncols = max(1, min(ncols, len(series)))
  nrows = -(-len(series) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows + 0.5),
                           sharey=True, squeeze=False, layout="constrained")
  for ax, (run, epochs, lam) in zip(axes.ravel(), series):
    colours = plt.get_cmap("tab20")
    for k, (pair, v) in enumerate(lam.items()):
      ax.plot(epochs, v, lw=1.0, label=pair, color=colours(k % 20))
    ax.set_yscale("log")
    ax.set_title(f"{run.parent.parent.name} · {run.parent.name} · {run.name}", fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("λ (batch mean)")
  for ax in axes.ravel()[len(series):]:
    ax.set_visible(False)
  handles, labels = axes.ravel()[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside right center", fontsize=7, title="pair")
  fig.suptitle(title or "matching weights λ per layer pair over training")
  return plots.save_figure(fig, out)


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--runs", required=True, help="sweep directory <method>/n<N>/seed<s>")
  ap.add_argument("--out", required=True, help="figure path (.png)")
  ap.add_argument("--table", default="", help="markdown table path (default: print it)")
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--title", default="")
  args = ap.parse_args(argv)
  try:
    methods = [check_choice("--methods", m, METHODS) for m in args.methods.split(",") if m]
    rows = [r for r in (summarise(d) for d in run_dirs(args.runs, methods)) if r]
    if not rows:
      raise ConfigError("--runs", args.runs, hint="no <method>/n<N>/seed<s>/metrics.jsonl with "
                        f"train_lambda/* for methods {','.join(methods)}")
    fig = plot_lambdas([pathlib.Path(args.runs) / r["method"] / r["n"] / r["seed"] for r in rows],
                       args.out, title=args.title)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(fig)
  text = markdown_table(rows)
  if args.table:
    jsonl.write_text_atomic(args.table, text)
    print(args.table)
  else:
    print(text, end="")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
