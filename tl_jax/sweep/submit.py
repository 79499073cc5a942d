"""Sweep units as cluster jobs through submitit (SLURM, or local processes to try it out).

`launch/sweep.py --executor=slurm` submits one job per unit (the pending seeds of one method and
N, `config.sweep.seeds_per_unit` capping it) instead of running them here. A job runs its unit
with the same runner as a local sweep (`tl_jax.experiment.run_seeds` by default), so it resumes
from the unit's checkpoints: when SLURM preempts it or its time runs out, submitit calls
`UnitJob.checkpoint` and requeues it, and the requeued job continues where the checkpoints are.
Submitting the sweep again submits only cells not yet finished with this config.

    python launch/sweep.py --config configs/l2t_thesis.py:cifar10 --workdir /shared/runs/l2t \
        --executor=slurm --slurm_partition=gpu --slurm_gpus=1 --slurm_time_min=240
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import ml_collections

from tl_jax.errors import ConfigError
from tl_jax.sweep import grid

EXECUTORS = ("local", "slurm", "debug")


class UnitJob:
  """One unit as a picklable submitit callable: `run_unit(config, seeds, workdirs)`."""

  def __init__(self, config: ml_collections.ConfigDict, seeds: Sequence[int],
               workdirs: Sequence[str], run_unit: str | None = None):
    self.config = config
    self.seeds = [int(s) for s in seeds]
    self.workdirs = [str(w) for w in workdirs]
    self.run_unit = run_unit

  def __call__(self) -> list[str]:
    grid.load_run_unit(self.run_unit)(self.config, self.seeds, self.workdirs)
    missing = [w for w in self.workdirs if not (pathlib.Path(w) / grid.SUMMARY_NAME).is_file()]
    if missing:
      raise RuntimeError(f"the unit returned but wrote no {grid.SUMMARY_NAME} in {missing}")
    return self.workdirs

  def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
    """Called by submitit on preemption / timeout: requeue the same unit (it resumes from
    its checkpoints)."""
    import submitit
    return submitit.helpers.DelayedSubmission(
        UnitJob(self.config, self.seeds, self.workdirs, self.run_unit))


def make_executor(kind: str, folder: str | os.PathLike, *, timeout_min: int = 60,
                  slurm_partition: str = "", gpus: int = 0, cpus: int = 0,
                  mem_gb: int = 0) -> Any:
  """A submitit executor: 'slurm' (sbatch), 'local' (subprocesses), 'debug' (in process)."""
  if kind not in EXECUTORS:
    raise ConfigError("--executor", kind, EXECUTORS)
  try:
    import submitit
  except ImportError as e:
    raise ConfigError("--executor", kind, hint="needs submitit: pip install "
                      "'tl_jax[cluster]'") from e
  if kind == "local":
    ex = submitit.LocalExecutor(folder=str(folder))
  elif kind == "debug":
    ex = submitit.DebugExecutor(folder=str(folder))
  else:
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
  params: dict[str, Any] = {"timeout_min": int(timeout_min)}
  if kind == "slurm":
    if slurm_partition:
      params["slurm_partition"] = slurm_partition
    if gpus:
      params["gpus_per_node"] = int(gpus)
    if cpus:
      params["cpus_per_task"] = int(cpus)
    if mem_gb:
      params["mem_gb"] = int(mem_gb)
  ex.update_parameters(**params)
  return ex


def submit_units(config: ml_collections.ConfigDict, root: str | os.PathLike, executor: Any,
                 run_unit: str | None = None, host_index: int = 0, num_hosts: int = 1,
                 overwrite: bool = False) -> tuple[grid.GridReport, list[Any]]:
  """Submits one job per pending unit of this host's share of the grid; (report with the
  skipped cells, the submitit jobs). Validation and run identity as in `grid.run_grid`."""
  rep, plan = grid.plan_units(config, root, host_index, num_hosts, overwrite=overwrite)
  jobs = []
  for unit in plan:
    grid.prepare_unit(unit)
  with executor.batch():
    for unit in plan:
      jobs.append(executor.submit(UnitJob(unit[0].config, [c.seed for c in unit],
                                          [str(c.workdir) for c in unit], run_unit)))
  rep.pending = [c for unit in plan for c in unit]
  return rep, jobs
