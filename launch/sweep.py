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
"""

from __future__ import annotations

import os
import pathlib
import sys

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
_KEEP = flags.DEFINE_bool("keep_going", True, "Log a failing cell and continue (exit 1 at end).")


def main(argv, kwargs=()):
  del argv
  if _WORKDIR.value is None:
    return cli.fail("--workdir: got nothing; allowed: the sweep's root directory")
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
    run_unit = grid.load_run_unit(_RUN_UNIT.value) if not _DRY.value else None
    rep = grid.run_grid(config, _WORKDIR.value, run_unit, _HOST.value, _NUM_HOSTS.value,
                        keep_going=_KEEP.value, dry_run=_DRY.value,
                        overwrite=_OVERWRITE.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
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
  try:
    rest, kwargs = cli.parse(sys.argv)
  except cli.CliError as e:
    return cli.fail(str(e))
  logging.set_verbosity(logging.INFO)
  try:
    return main(rest, kwargs)
  except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C); finished cells are kept: rerun the same command to "
          "continue", file=sys.stderr)
    return cli.EXIT_INTERRUPTED


if __name__ == "__main__":
  sys.exit(entry())
