"""launch/thesis_gpu.sh in its CPU smoke mode (so the GPU command cannot rot), and the seed
sizing arithmetic of launch/thesis_gpu.py."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

import thesis_gpu  # noqa: E402


def test_plan_picks_the_seeds_that_fit():
  flops = {m: {"train_step_flops": 1e12, "eval_flops_per_image": 1e8}
           for m in thesis_gpu.METHODS}
  # per seed and method: (200 steps x 1e12 + 200 x 500 x 1e8) / 1e13 = 21 s -> 84 s per seed
  seeds, lines = thesis_gpu.plan(flops, 100, 500, 128, 200, budget_s=480, utilisation=0.5,
                                 peak=2e13, compile_s=30)
  assert seeds == (480 - 4 * 30) // 84 == 4
  assert "fewer than 30" in lines[-1]
  seeds, _ = thesis_gpu.plan(flops, 100, 500, 128, 200, 1e6, 0.5, 2e13, 30)
  assert seeds == 30
  assert thesis_gpu.peak_flops("NVIDIA H100 80GB HBM3")[1] == "H100"


@pytest.mark.shared
@pytest.mark.slow
def test_thesis_gpu_smoke_runs_and_writes_the_table(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, SMOKE="1")
  proc = subprocess.run(["bash", str(ROOT / "launch" / "thesis_gpu.sh"), str(tmp_path / "w"),
                         "--out", str(out)], env=env, capture_output=True, text=True,
                        timeout=1200, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  for m in thesis_gpu.SMOKE_METHODS:
    assert (tmp_path / "w" / m / "n1" / "seed0" / "summary.json").exists(), m
  assert not (tmp_path / "w" / "scratch").exists()
  assert (out / "README.md").exists() and "precision" in (out / "run.txt").read_text()
