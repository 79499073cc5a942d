"""Suspect-run flags on synthetic histories, and where tables show them."""

import json

import pandas as pd

from tl_jax.analysis import report, suspect


def _hist(val, loss, best_last=False):
  h = [{"epoch": i, "val_accuracy": v, "train_loss": l, "is_best": False}
       for i, (v, l) in enumerate(zip(val, loss))]
  best = len(h) - 1 if best_last else max(range(len(h)), key=lambda i: val[i])
  h[best]["is_best"] = True
  return h


def test_healthy_run_has_no_flag():
  assert suspect.reasons({"num_classes": 5}, _hist([0.3, 0.6, 0.7, 0.65], [1.6, 1.0, 0.7, 0.6])) == []


def test_at_chance_by_best_or_by_final():
  r = suspect.reasons({"num_classes": 5}, _hist([0.2, 0.21, 0.2], [1.6, 1.5, 1.4]))
  assert len(r) == 1 and r[0].startswith("at chance (validation best 21.0 %")
  # learnt, then collapsed to chance: restoring the best epoch would hide it
  r = suspect.reasons({"num_classes": 5}, _hist([0.3, 0.8, 0.2], [1.6, 0.5, 0.4]))
  assert any(x.startswith("at chance") and "final 20.0 %" in x for x in r)
  assert suspect.reasons({"num_classes": 5}, _hist([0.3, 0.8, 0.23], [1.6, 0.5, 0.4])) == []


def test_diverged_and_still_improving():
  r = suspect.reasons({"num_classes": 10}, _hist([0.3, 0.5, 0.6], [2.3, 1.0, float("nan")]))
  assert "diverged (non-finite training loss)" in r
  r = suspect.reasons({"num_classes": 10}, _hist([0.3, 0.5, 0.4], [2.3, 1.0, 2.9]))
  assert any(x.startswith("diverged (training loss 2.3 -> 2.9)") for x in r)
  r = suspect.reasons({"num_classes": 10}, _hist([0.3, 0.5, 0.6], [2.3, 1.0, 0.9], best_last=True))
  assert r == ["still improving (best epoch = last, 2)"]


def test_tables_mark_and_list_flagged_runs(tmp_path):
  rows = []
  for seed, val in enumerate(([0.3, 0.7, 0.6], [0.2, 0.2, 0.21], [0.4, 0.8, 0.75])):
    rd = tmp_path / f"scratch/n5/seed{seed}"
    rd.mkdir(parents=True)
    (rd / "history.json").write_text(json.dumps(_hist(val, [1.5, 1.0, 0.9])))
    rows.append({"method": "scratch", "n_per_class": 5, "seed": seed, "num_classes": 5,
                 "test_accuracy": val[1], "run_dir": str(rd)})
  frame = report.runs_frame(rows)
  table = report.summary_table(frame)
  assert table.loc["scratch", "suspect runs"] == f"1 {suspect.MARK}"
  assert suspect.lines(frame) == [f"{suspect.MARK} scratch N=5 seed 1: at chance (validation "
                                  "best 21.0 %, final 21.0 %, chance 20.0 %); still improving "
                                  "(best epoch = last, 2)"]
  assert suspect.lines(pd.DataFrame({"x": [1]})) == []
