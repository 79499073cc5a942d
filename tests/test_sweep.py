"""Sweep grid and launcher: cells, units of seeds that run as one program, hosts, resume."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from tl_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- grid + launcher

import ml_collections  # noqa: E402

from tl_jax.config import base_config  # noqa: E402
from tl_jax.sweep import grid  # noqa: E402


def _grid_config(seeds=3):
  c = base_config()
  c.sweep = ml_collections.ConfigDict()
  c.sweep.methods = ("scratch", "l2t_www", "l2t_www_b1")
  c.sweep.n_per_class = (5, 10)
  c.sweep.seeds = seeds
  c.sweep.method_overrides = {"l2t_www_b1": {"kt": {"method": "l2t_www", "beta": 1.0}}}
  return c


class FakeRunCell:
  """Records calls and writes summary.json like the real runner (experiment.run_seeds)."""

  def __init__(self, fail_on=None):
    self.calls = []
    self.units = []
    self.fail_on = fail_on

  def __call__(self, config, seeds, workdirs):
    self.units.append((config.kt.method, config.transfer.strategy, config.data.n_per_class,
                       tuple(seeds)))
    if self.fail_on and any(self.fail_on in w for w in workdirs):
      raise RuntimeError("boom")
    for seed, workdir in zip(seeds, workdirs):
      self.calls.append((config.kt.method, config.transfer.strategy, config.kt.beta,
                         config.data.n_per_class, seed, workdir))
      cfg = ml_collections.ConfigDict(config.to_dict())
      cfg.seed = seed  # the run's identity, as experiment.run_seeds records it
      pathlib.Path(workdir, "config.json").write_text(cfg.to_json_best_effort())
      pathlib.Path(workdir, "summary.json").write_text(json.dumps(
          {"method": "x", "n_per_class": config.data.n_per_class, "seed": seed,
           "test_accuracy": 0.5}))


def test_expand_grid_sets_each_cells_fields(tmp_path):
  c = _grid_config()
  cells = grid.expand_grid(c, tmp_path)
  assert len(cells) == 3 * 2 * 3
  assert len({cell.workdir for cell in cells}) == len(cells)
  assert [cell.index for cell in cells] == list(range(len(cells)))
  by = {(cell.method, cell.n_per_class, cell.seed): cell for cell in cells}
  s = by["scratch", 10, 2].config
  assert (s.transfer.strategy, s.kt.method, s.data.n_per_class, s.seed) == ("scratch", "none",
                                                                           10, 2)
  w = by["l2t_www", 5, 0].config
  assert (w.kt.method, w.kt.beta, w.transfer.strategy) == ("l2t_www", 0.5, "scratch")
  b = by["l2t_www_b1", 5, 1].config
  assert (b.kt.method, b.kt.beta, b.seed) == ("l2t_www", 1.0, 1)
  assert by["l2t_www", 5, 0].workdir == tmp_path / "l2t_www" / "n5" / "seed0"
  assert c.seed == 0 and c.data.n_per_class == 0 and c.kt.method == "none"  # untouched
  assert [x.seed for x in grid.expand_grid(_grid_config(seeds=(7, 11)), tmp_path)][:2] == [7, 11]


def test_expand_grid_rejects_bad_grids(tmp_path):
  with pytest.raises(ConfigError, match="sweep"):
    grid.expand_grid(base_config(), tmp_path)
  for field, value in (("seeds", 0), ("methods", "scratch"), ("n_per_class", (5, 5)),
                       ("n_per_class", (-1,)), ("seeds", (1.5,))):
    c = _grid_config()
    c.sweep = ml_collections.ConfigDict({**c.sweep.to_dict(), field: value})
    with pytest.raises(ConfigError):
      grid.expand_grid(c, tmp_path)
  c = _grid_config()
  c.sweep.method_overrides = {"l2t_www_b1": {"kt": {"betta": 1.0}}}  # typo
  with pytest.raises(ConfigError, match="betta"):
    grid.expand_grid(c, tmp_path)
  c.sweep.method_overrides = {"other": {"kt": {"beta": 1.0}}}
  with pytest.raises(ConfigError):
    grid.expand_grid(c, tmp_path)


def test_run_grid_skips_done_cells_and_resumes(tmp_path):
  c = _grid_config(seeds=2)
  cells = grid.expand_grid(c, tmp_path)
  done = cells[3].workdir
  done.mkdir(parents=True)
  (done / "summary.json").write_text("{}")
  (done / "config.json").write_text(cells[3].config.to_json_best_effort())  # its identity
  interrupted = cells[5].workdir
  (interrupted / "checkpoints").mkdir(parents=True)  # started, no summary: must rerun
  fake = FakeRunCell()
  rep = grid.run_grid(c, tmp_path, fake)
  assert len(rep.skipped) == 1 and rep.skipped[0].workdir == done
  assert len(rep.ran) == len(cells) - 1 and not rep.failed
  ran_dirs = [call[-1] for call in fake.calls]
  assert str(done) not in ran_dirs and str(interrupted) in ran_dirs
  assert json.loads((cells[0].workdir / "cell.json").read_text())["config"]["seed"] == 0
  # one unit per (method, N): its pending seeds together
  assert len(fake.units) == 3 * 2 and ("none", "scratch", 10, (0,)) in fake.units  # s1 done
  again = FakeRunCell()
  rep = grid.run_grid(c, tmp_path, again)
  assert not again.calls and len(rep.skipped) == len(cells)
  c.sweep.seeds_per_unit = 1  # every seed its own program (finished work kept at once)
  assert [len(u) for u in grid.units(cells, 1)] == [1] * len(cells)
  assert [len(u) for u in grid.units(cells, 0)] == [2] * (len(cells) // 2)


def test_run_grid_hosts_partition_and_failures(tmp_path):
  c = _grid_config(seeds=2)
  n = len(grid.expand_grid(c, tmp_path))
  f0, f1 = FakeRunCell(), FakeRunCell()
  grid.run_grid(c, tmp_path / "a", f0, host_index=0, num_hosts=2)
  grid.run_grid(c, tmp_path / "a", f1, host_index=1, num_hosts=2)
  d0, d1 = {x[-1] for x in f0.calls}, {x[-1] for x in f1.calls}
  assert not d0 & d1 and len(d0 | d1) == n and len(d0) == n // 2
  with pytest.raises(ConfigError):
    grid.run_grid(c, tmp_path, f0, host_index=2, num_hosts=2)
  bad = FakeRunCell(fail_on="seed1")
  c.sweep.seeds_per_unit = 1
  rep = grid.run_grid(c, tmp_path / "b", bad, keep_going=True)
  assert len(rep.failed) == n // 2 and len(rep.ran) == n // 2
  assert "boom" in rep.failed[0][1]
  with pytest.raises(RuntimeError):
    grid.run_grid(c, tmp_path / "b", FakeRunCell(fail_on="seed1"))
  dry = grid.run_grid(c, tmp_path / "b", None, dry_run=True)
  assert len(dry.pending) == n // 2 and len(dry.skipped) == n // 2


def test_launcher_prints_one_command_per_host_and_runs_a_share(tmp_path):
  cfg = tmp_path / "exp.py"
  cfg.write_text(textwrap.dedent("""
    import ml_collections
    from tl_jax.config import base_config
    def get_config():
      c = base_config()
      c.sweep = ml_collections.ConfigDict(dict(methods=("scratch", "ufm"), n_per_class=(5,),
                                               seeds=3))
      return c
  """))
  (tmp_path / "fake_cell.py").write_text(textwrap.dedent("""
    import json, pathlib
    def run(config, seeds, workdirs):
      for seed, workdir in zip(seeds, workdirs):
        config.seed = seed
        pathlib.Path(workdir, "config.json").write_text(config.to_json_best_effort())
        pathlib.Path(workdir, "summary.json").write_text(json.dumps(
            {"method": config.kt.method, "epochs": config.train.num_epochs}))
  """))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
  work = tmp_path / "runs"
  args = [sys.executable, "launch/sweep.py", f"--config={cfg}", f"--workdir={work}",
          "--config.train.num_epochs=3", "--run_unit=fake_cell:run"]
  proc = subprocess.run(args + ["--print_commands", "--num_hosts=3"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  cmds = proc.stdout.strip().splitlines()
  assert len(cmds) == 3
  for h, cmd in enumerate(cmds):
    assert f"--host_index={h}" in cmd and "--num_hosts=3" in cmd
    assert "--config.train.num_epochs=3" in cmd and str(work) in cmd
  # run host 1's command as printed (python -> this interpreter)
  cmd = cmds[1].split()
  proc = subprocess.run([sys.executable] + cmd[1:], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  done = sorted(p.relative_to(work).as_posix() for p in work.rglob("summary.json"))
  # cells: scratch s0,s1,s2, ufm s0,s1,s2 -> host 1 of 3 gets indices 1 and 4
  assert done == ["scratch/n5/seed1/summary.json", "ufm/n5/seed1/summary.json"]
  s = json.loads((work / "ufm/n5/seed1/summary.json").read_text())
  assert s == {"method": "ufm", "epochs": 3}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPU cores")
def test_launcher_processes_split_the_cells_over_pinned_cores(tmp_path):
  cfg = tmp_path / "exp.py"
  cfg.write_text(textwrap.dedent("""
    import ml_collections
    from tl_jax.config import base_config
    def get_config():
      c = base_config()
      c.sweep = ml_collections.ConfigDict(dict(methods=("scratch",), n_per_class=(5,), seeds=4))
      return c
  """))
  (tmp_path / "fake_cell.py").write_text(textwrap.dedent("""
    import json, os, pathlib
    import ml_collections
    def run(config, seeds, workdirs):
      for seed, workdir in zip(seeds, workdirs):
        cfg = ml_collections.ConfigDict(config.to_dict())
        cfg.seed = seed  # the run's identity, as experiment.run_seeds records it
        pathlib.Path(workdir, "config.json").write_text(cfg.to_json_best_effort())
        pathlib.Path(workdir, "summary.json").write_text(json.dumps(
            {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0)),
             "width": config.model.kwargs.get("width")}))
  """))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
  work = tmp_path / "runs"
  args = [sys.executable, "launch/sweep.py", f"--config={cfg}", f"--workdir={work}",
          "--run_unit=fake_cell:run"]
  # an open-dict override (which cli.parse takes out of sys.argv) reaches the children too
  proc = subprocess.run(args + ["--processes", "2", "--config.model.kwargs.width=7"], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  runs = {int(p.parent.name[4:]): json.loads(p.read_text()) for p in work.rglob("summary.json")}
  assert sorted(runs) == [0, 1, 2, 3]
  # seeds 0, 2 in one process, 1, 3 in the other, each pinned to its own half of the cores
  assert runs[0]["pid"] == runs[2]["pid"] != runs[1]["pid"] == runs[3]["pid"]
  assert runs[0]["cores"] and runs[1]["cores"]
  assert all(r["width"] == 7 for r in runs.values())
  assert not set(runs[0]["cores"]) & set(runs[1]["cores"])
  cores = len(os.sched_getaffinity(0))
  for bad in ("0", str(cores + 1)):
    proc = subprocess.run(args + [f"--processes={bad}"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        f"error: --processes: got {bad}; allowed: 1..{cores}"), proc.stderr[-2000:]
