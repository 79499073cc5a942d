"""tl_jax.analysis.lambdas on synthetic metrics.jsonl files whose λ are known."""

from __future__ import annotations

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tl_jax.analysis import lambdas  # noqa: E402

PAIRS = ("block4__pool0", "block9__pool1")


def _write_run(root: pathlib.Path, method: str, seed: int, lam0: dict[str, float],
               drift: float, epochs: int = 40, rerecord: bool = False) -> pathlib.Path:
  d = root / method / "n10" / f"seed{seed}"
  d.mkdir(parents=True)
  with open(d / "metrics.jsonl", "w") as f:
    for e in range(epochs):
      rec = {"epoch": e, "train_ce": 2.0 - e / epochs, "train_accuracy": e / epochs}
      rec.update({f"train_lambda/{p}": v * (1.0 + drift * e / (epochs - 1))
                  for p, v in lam0.items()})
      f.write(json.dumps(rec) + "\n")
      if rerecord and e == 3:  # a resumed run re-records epoch 3: the last record must win
        rec = dict(rec, **{f"train_lambda/{PAIRS[0]}": 99.0})
        f.write(json.dumps(rec) + "\n")
  return d


def test_series_keeps_the_last_record_of_an_epoch(tmp_path):
  d = _write_run(tmp_path, "l2t_ww", 0, {PAIRS[0]: 1.0, PAIRS[1]: 2.0}, drift=0.0,
                 rerecord=True)
  epochs, lam = lambdas.lambda_series(lambdas.plots.read_metrics_jsonl(d / "metrics.jsonl"))
  np.testing.assert_array_equal(epochs, np.arange(40))
  assert sorted(lam) == list(PAIRS)
  assert lam[PAIRS[0]][3] == 99.0 and lam[PAIRS[0]][2] == 1.0


def test_summary_numbers_and_table(tmp_path):
  d = _write_run(tmp_path, "l2t_ww", 1, {PAIRS[0]: 0.5, PAIRS[1]: 3.0}, drift=0.39)
  _write_run(tmp_path, "ufm", 0, {PAIRS[0]: 1.0, PAIRS[1]: 1.0}, drift=0.0)
  (tmp_path / "scratch" / "n10" / "seed0").mkdir(parents=True)  # no λ: not listed
  dirs = lambdas.run_dirs(tmp_path)
  assert [p.parent.parent.name for p in dirs] == ["ufm", "l2t_ww"]
  r = lambdas.summarise(d)
  assert r["pairs"] == 2 and r["epochs"] == 40 and r["top_pair"] == PAIRS[1]
  assert r["sum_first"] == pytest.approx(3.5) and r["sum_last"] == pytest.approx(3.5 * 1.39)
  # both pairs drift linearly by the same factor: last-10 mean over first-10 mean, minus 1
  t = np.arange(40) / 39
  ramp = 1.0 + 0.39 * t
  assert r["max_rel_change"] == pytest.approx(ramp[-10:].mean() / ramp[:10].mean() - 1.0)
  assert r["train_ce_last"] == pytest.approx(2.0 - 39 / 40)
  table = lambdas.markdown_table([lambdas.summarise(p) for p in dirs])
  lines = table.strip().splitlines()
  assert len(lines) == 4 and lines[2].startswith("| ufm | 10 | 0 |") and "0.00%" in lines[2]
  assert f"(`{PAIRS[1]}`)" in lines[3]


def test_cli_writes_figure_and_table_and_rejects_bad_input(tmp_path, capsys):
  runs = tmp_path / "runs"
  _write_run(runs, "l2t_www", 0, {PAIRS[0]: 0.2, PAIRS[1]: 1.5}, drift=-0.1)
  fig, table = tmp_path / "out" / "lambdas.png", tmp_path / "out" / "lambdas.md"
  assert lambdas.main(["--runs", str(runs), "--out", str(fig), "--table", str(table)]) == 0
  assert fig.stat().st_size > 1000 and table.read_text().count("| l2t_www |") == 1
  capsys.readouterr()
  bad = tmp_path / "bad.png"
  assert lambdas.main(["--runs", str(runs), "--out", str(bad), "--methods", "l2t"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--methods" in err[0] and "l2t_ww" in err[0]
  assert lambdas.main(["--runs", str(tmp_path / "none"), "--out", str(bad)]) == 2
  assert "--runs" in capsys.readouterr().err and not bad.exists()
