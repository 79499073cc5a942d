"""Seed-000-style tables from run summaries: accuracy, macro-F1, loss and macro recall on
train / val / test for every run of a comparison workdir (and its source run), plus the
test-split comparison across methods (the seed's Table 7). Copies each run's figures.

This module only finds the runs, labels them and writes files; the tables themselves are
`tl_jax.analysis.report.split_table` / `split_comparison_table` (one table module).

    python -m tl_jax.scenarios.tables --workdir workdirs/seed000_catsdogs --out results/seed000
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
from typing import Any

from tl_jax.analysis import report, suspect

FIGURES = ("confusion_matrix.png", "curves.png")


def find_runs(workdir: str | pathlib.Path) -> list[tuple[str, pathlib.Path, dict[str, Any]]]:
  """[(label, run dir, summary)]: a single run's own summary, else 'source' first (if any), then
  runs/<method>/n*/seed* sorted."""
  wd = pathlib.Path(workdir)
  out = []
  single = wd / "summary.json"  # a single run (no compare section)
  if single.exists():
    s = json.loads(single.read_text())
    out.append((f"{s.get('name', 'run')} (seed{s.get('seed', 0)})", wd, s))
  src = wd / "source" / "summary.json"
  if src.exists():
    out.append(("source", src.parent, json.loads(src.read_text())))
  for f in sorted(wd.glob("runs/*/n*/seed*/summary.json")):
    method, seed = f.parts[-4], f.parts[-2]
    out.append((f"{method} ({seed})", f.parent, json.loads(f.read_text())))
  return out


def write(workdir: str | pathlib.Path, out: str | pathlib.Path | None = None,
          all_seeds: bool = False) -> str:
  """Writes `out`/tables.md and copies figures (of the source and of seed-0 runs unless
  `all_seeds`); returns the Markdown."""
  runs = find_runs(workdir)
  if not runs:
    raise SystemExit(f"no summary.json under {workdir}")
  wd = pathlib.Path(workdir)
  methods = [(label, s) for label, run_dir, s in runs
             if not report.is_source_run(s, run_dir.relative_to(wd))]
  parts = ["## Test split, all runs", "",
           report.to_markdown(report.split_comparison_table(methods))]
  flagged = [f"- {suspect.MARK} {label}: " + "; ".join(why) for label, run_dir, s in runs
             if not report.is_source_run(s, run_dir.relative_to(wd))
             for why in [suspect.reasons(s, suspect.read_history(run_dir))] if why]
  if flagged:
    parts += ["", "Suspect runs (to be read with care):", ""] + flagged
  for label, run_dir, s in runs:
    parts += [f"## {label}", "", f"strategy `{s.get('strategy')}`, model `{s.get('model')}`, "
              f"train size {s.get('train_size')}, epochs run {s.get('epochs_run')}, best epoch "
              f"{s.get('best_epoch')}, {s.get('wall_s', 0):.0f} s", "",
              report.to_markdown(report.split_table(s))]
  text = "\n".join(parts)
  if out is not None:
    o = pathlib.Path(out)
    o.mkdir(parents=True, exist_ok=True)
    (o / "tables.md").write_text(text)
    for label, run_dir, _ in runs:
      if not (all_seeds or label == "source" or label.endswith("(seed0)")):
        continue
      stem = label.replace(" (", "_").rstrip(")")  # 'method_seed0' or 'source'
      for fig in FIGURES:
        if (run_dir / fig).exists():
          shutil.copyfile(run_dir / fig, o / f"{stem}_{fig}")
  return text


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", default=None, help="folder for tables.md and the runs' figures")
  ap.add_argument("--all-seeds", action="store_true", help="copy the figures of every seed")
  a = ap.parse_args(argv)
  print(write(a.workdir, a.out, a.all_seeds))


if __name__ == "__main__":
  main()
