"""Sweep units as submitit jobs (the local executor stands in for SLURM)."""

from __future__ import annotations

import json
import pathlib

import ml_collections
import pytest

from tl_jax.config import base_config
from tl_jax.sweep import grid

submitit = pytest.importorskip("submitit")


def _sweep():
  c = base_config()
  c.train.num_epochs = 1
  c.sweep = ml_collections.ConfigDict({"methods": ("scratch", "scratch_lr05"),
                                       "n_per_class": (5,), "seeds": 2, "seeds_per_unit": 1})
  c.sweep.method_overrides = {"scratch_lr05": {"optimizer": {"lr": 0.05}}}
  return c


def test_one_local_job_per_unit_and_resubmission_skips_finished(tmp_path):
  from tl_jax.sweep import submit
  ex = submit.make_executor("local", tmp_path / "jobs", timeout_min=5)
  spec = "tests.fake_units:write_summary"
  rep, jobs = submit.submit_units(_sweep(), tmp_path / "runs", ex, run_unit=spec)
  assert len(jobs) == 4 and len(rep.pending) == 4  # 2 methods x 2 seeds, one seed per unit
  done = sorted(d for j in jobs for d in j.result())
  assert done == sorted(str(c.workdir) for c in grid.expand_grid(_sweep(), tmp_path / "runs"))
  cell = json.loads((pathlib.Path(done[0]) / "cell.json").read_text())
  assert cell["n_per_class"] == 5
  rep2, jobs2 = submit.submit_units(_sweep(), tmp_path / "runs", ex, run_unit=spec)
  assert not jobs2 and len(rep2.skipped) == 4


def test_preempted_job_requeues_the_same_unit():
  from tl_jax.sweep import submit
  job = submit.UnitJob(_sweep(), [3], ["/w/seed3"], "tests.fake_units:write_summary")
  again = job.checkpoint()
  assert isinstance(again, submitit.helpers.DelayedSubmission)
  assert again.function.seeds == [3] and again.function.workdirs == ["/w/seed3"]


def test_bad_executor_name():
  from tl_jax.errors import ConfigError
  from tl_jax.sweep import submit
  with pytest.raises(ConfigError, match="--executor: got 'pbs'"):
    submit.make_executor("pbs", "/tmp/x")


def test_launcher_submits_through_the_local_executor(tmp_path):
  import os
  import subprocess
  import sys
  import textwrap
  root = pathlib.Path(__file__).resolve().parents[1]
  cfg = tmp_path / "exp.py"
  cfg.write_text(textwrap.dedent("""
    import ml_collections
    from tl_jax.config import base_config
    def get_config():
      c = base_config()
      c.sweep = ml_collections.ConfigDict(dict(methods=("scratch",), n_per_class=(5,), seeds=2,
                                               seeds_per_unit=1))
      return c
  """))
  env = dict(os.environ, PYTHONPATH=str(root))
  args = [sys.executable, "launch/sweep.py", f"--config={cfg}", f"--workdir={tmp_path / 'w'}",
          "--executor=local", "--run_unit=tests.fake_units:write_summary"]
  r = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "submitted 2 job(s) for 2 cell(s)" in r.stderr
  assert sorted(p.parent.name for p in (tmp_path / "w").rglob("summary.json")) == ["seed0", "seed1"]
