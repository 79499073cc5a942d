"""Run (or hand out) a repetition sweep: methods x N-per-class x seeds from config.sweep.

  # everything on this machine, resumable (cells with summary.json are skipped):
  python launch/sweep.py --config=configs/<exp>.py --workdir=runs/<exp>
  # one command per host (each runs its round-robin share; all share --workdir):
  python launch/sweep.py --config=configs/<exp>.py --workdir=runs/<exp> --print_commands \
      --num_hosts=4
  # then tables and figures:
  python -m tl_jax.analysis.report --runs runs/<exp> --out results/<exp>

The pending seeds of each (method, N) run as one compiled program (`tl_jax.experiment.run_seeds`);
`--config.sweep.seeds_per_unit=1` makes every seed its own unit (kept as soon as it finishes).
`--processes=2` splits this host's cells between two processes, each pinned to half of the CPU
cores: on a 2-core CPU that is 1.5x the seeds per hour for LeNet-5, whose ops are too small to
keep two cores busy, while VGG-9, ResNet-32 and the L2T methods gain nothing or lose and need
twice the memory, hence the default of one (results/benchmarks/README.md).
On a SLURM cluster `--executor=slurm` submits one job per unit through submitit instead
(`--slurm_partition`, `--slurm_gpus`, `--slurm_time_min`, ...; tl_jax.sweep.submit): jobs that
are preempted or reach their time limit are requeued and resume from their checkpoints, and
submitting again submits only the cells not yet finished with this config.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tl_jax import cli  # noqa: E402
from tl_jax.errors import ConfigError  # noqa: E402
from tl_jax.sweep import grid  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml-collections config with a `sweep` "
                                          "block.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep root; cell workdirs are "
                               "<workdir>/<method>/n<N>/seed<seed>.")
_HOST = flags.DEFINE_integer("host_index", 0, "This host's index (0-based).")
_NUM_HOSTS = flags.DEFINE_integer("num_hosts", 1, "Hosts sharing the grid round-robin.")
_PRINT = flags.DEFINE_bool("print_commands", False, "Print one command per host and exit.")
_RUN_UNIT = flags.DEFINE_string("run_unit", None, "module:function(config, seeds, workdirs) that "
                                "runs one unit (default tl_jax.experiment:run_seeds).")
_DRY = flags.DEFINE_bool("dry_run", False, "List the cells this host would run and exit.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rerun cells holding runs of another config "
                               "(otherwise an error before any work).")
_EXECUTOR = flags.DEFINE_enum("executor", "here", ["here", "slurm", "local", "debug"],
                              "here: run the units in this process; slurm: one submitit job per "
                              "unit (sbatch); local: submitit subprocesses (to try the job path).")
_JOBS_DIR = flags.DEFINE_string("jobs_dir", "", "submitit's logs and pickles (default "
                                "<workdir>/_jobs).")
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", "", "SLURM partition.")
_SLURM_GPUS = flags.DEFINE_integer("slurm_gpus", 0, "GPUs per job.")
_SLURM_CPUS = flags.DEFINE_integer("slurm_cpus", 0, "CPUs per job.")
_SLURM_MEM = flags.DEFINE_integer("slurm_mem_gb", 0, "Memory per job (GB).")
_SLURM_TIME = flags.DEFINE_integer("slurm_time_min", 240, "Time limit per job (minutes); a job "
                                   "that reaches it is requeued and resumes from checkpoints.")
_PROCESSES = flags.DEFINE_integer("processes", 1, "Processes on this machine (--executor=here), "
                                  "each pinned to its share of the CPU cores and running every "
                                  "P-th of this host's cells.")
_KEEP = flags.DEFINE_bool("keep_going", True, "Log a failing cell and continue (exit 1 at end).")


def core_shares(cpus: list[int], processes: int) -> list[list[int]]:
  """`processes` contiguous, near-equal shares of the CPU ids `cpus`."""
  n = len(cpus)
  return [cpus[p * n // processes:(p + 1) * n // processes] for p in range(processes)]


def run_processes(processes: int, command: Sequence[str]) -> int:
  """Reruns this `command` (its arguments, as given) as `processes` children pinned to their
  core shares: child p takes host index host + num_hosts * p of num_hosts * processes, i.e.
  every P-th of this host's cells (absl keeps a flag's last value, so the appended ones win).
  Exit status: the worst child's (130 after Ctrl-C)."""
  shares = core_shares(sorted(os.sched_getaffinity(0)), processes)
  procs = []
  for p, cores in enumerate(shares):
    cmd = [sys.executable, os.path.abspath(__file__), *command, "--processes=1",
           f"--host_index={_HOST.value + _NUM_HOSTS.value * p}",
           f"--num_hosts={_NUM_HOSTS.value * processes}"]
    procs.append(subprocess.Popen(cmd, preexec_fn=lambda c=cores: os.sched_setaffinity(0, c)))
  print(f"{processes} processes, cores {' | '.join(','.join(map(str, c)) for c in shares)}",
        file=sys.stderr)
  interrupted = False
  codes = []
  for proc in procs:
    while True:
      try:
        codes.append(proc.wait())
        break
      except KeyboardInterrupt:  # the children got the same SIGINT; wait for them to stop
        interrupted = True
  if interrupted or cli.EXIT_INTERRUPTED in codes:
    print("error: interrupted (Ctrl-C); finished cells are kept: rerun the same command to "
          "continue", file=sys.stderr)
    return cli.EXIT_INTERRUPTED
  return max(codes)


def main(argv, kwargs=(), command: Sequence[str] = ()):
  """`command`: this process's arguments as given (open-dict overrides included), for
  --processes."""
  del argv
  if _WORKDIR.value is None:
    return cli.fail("--workdir: got nothing; allowed: the sweep's root directory")
  if _PROCESSES.value != 1:
    cores = len(os.sched_getaffinity(0))
    if not 1 <= _PROCESSES.value <= cores:
      return cli.fail(f"--processes: got {_PROCESSES.value}; allowed: 1..{cores} (the CPU cores "
                      "this process may use)")
    if _EXECUTOR.value != "here" or _PRINT.value:
      return cli.fail(f"--processes: got {_PROCESSES.value}; allowed: 1 with --executor="
                      f"{_EXECUTOR.value}{' and --print_commands' if _PRINT.value else ''} "
                      "(several processes per machine are for --executor=here)")
  try:
    cli.apply_kwargs(_CONFIG.value, kwargs)
  except ConfigError as e:
    return cli.fail(str(e))
  config = _CONFIG.value
  try:
    if _PRINT.value:
      cells = grid.expand_grid(config, _WORKDIR.value)  # validates the grid before printing
      overrides = [f"--config.{k}={v}"
                   for k, v in config_flags.get_override_values(flags.FLAGS["config"]).items()]
      extra = overrides + ([f"--run_unit={_RUN_UNIT.value}"] if _RUN_UNIT.value else [])
      for cmd in grid.host_commands(config_flags.get_config_filename(flags.FLAGS["config"]),
                                    _WORKDIR.value, _NUM_HOSTS.value, extra,
                                    script=os.path.relpath(__file__), python="python"):
        print(cmd)
      print(f"# {len(cells)} cells over {_NUM_HOSTS.value} host(s)", file=sys.stderr)
      return 0
    if _EXECUTOR.value != "here" and not _DRY.value:
      from tl_jax.sweep import submit
      ex = submit.make_executor(_EXECUTOR.value, _JOBS_DIR.value or
                                os.path.join(_WORKDIR.value, "_jobs"),
                                timeout_min=_SLURM_TIME.value,
                                slurm_partition=_SLURM_PARTITION.value, gpus=_SLURM_GPUS.value,
                                cpus=_SLURM_CPUS.value, mem_gb=_SLURM_MEM.value)
      rep, jobs = submit.submit_units(config, _WORKDIR.value, ex, _RUN_UNIT.value, _HOST.value,
                                      _NUM_HOSTS.value, overwrite=_OVERWRITE.value)
      for j in jobs:
        print(f"submitted job {j.job_id}")
      print(f"submitted {len(jobs)} job(s) for {len(rep.pending)} cell(s); skipped "
            f"{len(rep.skipped)} (finished with this config)", file=sys.stderr)
      if _EXECUTOR.value == "local":  # the local executor's jobs die with this process
        for j in jobs:
          j.result()
      return 0
    if _PROCESSES.value > 1 and not _DRY.value:
      grid.expand_grid(config, _WORKDIR.value)  # a bad grid is one error here, not one per child
      grid.host_cells([], _HOST.value, _NUM_HOSTS.value)
      return run_processes(_PROCESSES.value, command)
    if not _DRY.value:  # the same process setup as `python -m tl_jax.main`
      from tl_jax import runtime
      runtime.setup(config)
    run_unit = grid.load_run_unit(_RUN_UNIT.value) if not _DRY.value else None
    rep = grid.run_grid(config, _WORKDIR.value, run_unit, _HOST.value, _NUM_HOSTS.value,
                        keep_going=_KEEP.value, dry_run=_DRY.value,
                        overwrite=_OVERWRITE.value)
  except ConfigError as e:
    return cli.fail(str(e))
  if _DRY.value:
    for c in rep.pending:
      print(c.workdir)
  print(f"ran {len(rep.ran)}, skipped {len(rep.skipped)} (finished with this config), "
        f"failed {len(rep.failed)}",
        file=sys.stderr)
  for c, err in rep.failed:
    print(f"FAILED {c.workdir}: {err}", file=sys.stderr)
  return 1 if rep.failed else 0


def entry() -> int:
  command = sys.argv[1:]  # cli.parse takes the open-dict overrides out of sys.argv
  try:
    rest, kwargs = cli.parse(sys.argv)
  except cli.CliError as e:
    return cli.fail(str(e))
  logging.set_verbosity(logging.INFO)
  try:
    return main(rest, kwargs, command)
  except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C); finished cells are kept: rerun the same command to "
          "continue", file=sys.stderr)
    return cli.EXIT_INTERRUPTED


if __name__ == "__main__":
  sys.exit(entry())
