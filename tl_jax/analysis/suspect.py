"""Runs whose numbers should not be read at face value, flagged wherever a table is written.

A mean over seeds hides a seed that never learnt; restoring the best validation epoch hides a
run that diverged after it; a run whose best epoch is its last was still improving when it
stopped (under-trained). `reasons(summary, history)` names each case for one run:

  * 'at chance'      - its best or final validation accuracy is within 2 points of chance
                       (1 / number of classes);
  * 'diverged'       - a non-finite training loss, or a final training loss above its first;
  * 'still improving'- its best validation epoch is its last epoch.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping, Sequence

CHANCE_MARGIN = 0.02
MARK = "†"


def reasons(summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> list[str]:
  """The suspect-run reasons of one run (empty when there is nothing to say)."""
  out = []
  k = int(summary.get("num_classes") or 0)
  val = [float(h["val_accuracy"]) for h in history if h.get("val_accuracy") is not None]
  if k >= 2 and val:
    chance = 1.0 / k
    best, final = max(val), val[-1]
    if best <= chance + CHANCE_MARGIN or final <= chance + CHANCE_MARGIN:
      out.append(f"at chance (validation best {100 * best:.1f} %, final {100 * final:.1f} %, "
                 f"chance {100 * chance:.1f} %)")
  loss = [h.get("train_loss") for h in history if "train_loss" in h]
  if loss:
    bad = [x for x in loss if x is None or not math.isfinite(float(x))]
    if bad:
      out.append("diverged (non-finite training loss)")
    elif len(loss) > 1 and float(loss[-1]) > float(loss[0]):
      out.append(f"diverged (training loss {float(loss[0]):.3g} -> {float(loss[-1]):.3g})")
  if history and history[-1].get("is_best") and len(history) > 1:
    out.append(f"still improving (best epoch = last, {history[-1].get('epoch')})")
  return out


def read_history(run_dir: str | pathlib.Path) -> list[dict[str, Any]]:
  """A run's per-epoch records: history.json, else metrics.jsonl, else none."""
  rd = pathlib.Path(run_dir)
  if (rd / "history.json").is_file():
    return json.loads((rd / "history.json").read_text())
  if (rd / "metrics.jsonl").is_file():
    rows = {}
    for line in (rd / "metrics.jsonl").read_text().splitlines():
      if line.strip():
        r = json.loads(line)
        rows[r.get("epoch", len(rows))] = r
    return [rows[k] for k in sorted(rows)]
  return []


def lines(runs: Any) -> list[str]:
  """One line per flagged run of a `report.load_runs` / `runs_frame` frame (column
  'suspect'): '† method N=n seed s: reason; reason'."""
  if "suspect" not in getattr(runs, "columns", ()):
    return []
  out = []
  for _, r in runs.sort_values(["method", "n_per_class", "seed"]).iterrows():
    if isinstance(r["suspect"], (list, tuple)) and r["suspect"]:
      out.append(f"{MARK} {r['method']} N={r['n_per_class']} seed {r['seed']}: "
                 + "; ".join(r["suspect"]))
  return out
