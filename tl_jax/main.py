"""Command line: `python -m tl_jax.main --config configs/<name>.py --workdir DIR [--config.x=y]`.

Thin on purpose: it parses flags and hands the config to the library
(`tl_jax.experiment.train_and_evaluate`, or `tl_jax.compare.run_comparison` when the config has a
`compare` section). Bad input ends with one line naming the field and a non-zero exit.
"""

from __future__ import annotations

import errno
import logging as pylogging
import sys

from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml-collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, checkpoints and figures.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the outputs of a run of another "
                               "config found in --workdir (otherwise an error).")



def run(config, workdir: str, overwrite: bool = False):
  if "compare" in config:
    from tl_jax.compare import run_comparison
    return run_comparison(config, workdir, overwrite)
  from tl_jax.experiment import train_and_evaluate
  return train_and_evaluate(config, workdir, overwrite)


def main(argv, kwargs=()) -> int:
  del argv
  from tl_jax import cli
  if _WORKDIR.value is None:
    return cli.fail("--workdir: got nothing; allowed: a directory for the run's outputs")
  # absl INFO lines only when asked for (--verbosity=0 or higher); warnings and errors always
  level = pylogging.INFO if flags.FLAGS["verbosity"].present else pylogging.WARNING
  pylogging.getLogger("absl").setLevel(level)
  logging.set_verbosity(logging.INFO if level == pylogging.INFO else logging.WARNING)
  from tqdm.contrib.logging import logging_redirect_tqdm
  with logging_redirect_tqdm():  # log lines above the progress bar, not through it
    return execute(_CONFIG.value, _WORKDIR.value, _OVERWRITE.value, kwargs)


def execute(config, workdir: str, overwrite: bool = False, kwargs=()) -> int:
  """Runs `config` in `workdir` as the command line does; returns the exit status (0 ok, 2 bad
  input or environment, with one `error: <field>: got ...; allowed: ...` line on stderr, 3 a
  non-finite loss, 130 interrupted)."""
  from tl_jax import cli
  from tl_jax.errors import ConfigError, NonFiniteLossError
  try:
    cli.apply_kwargs(config, kwargs)
    from tl_jax import runtime
    runtime.setup(config)
    run(config, workdir, overwrite)
  except ConfigError as e:
    return cli.fail(str(e))
  except NonFiniteLossError as e:
    print(f"error: training stopped: {e}", file=sys.stderr)
    return 3
  except KeyboardInterrupt:
    print(f"error: interrupted (Ctrl-C); {workdir} keeps its last checkpoint: rerun the same "
          "command to resume", file=sys.stderr)
    return cli.EXIT_INTERRUPTED
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
      return cli.fail(f"{e.filename or workdir}: got {(e.strerror or str(e)).lower()}; "
                      "allowed: a writable path with free space")
    raise
  return 0


def entry():
  from tl_jax import cli
  try:
    rest, kwargs = cli.parse(sys.argv)
  except cli.CliError as e:
    sys.exit(cli.fail(str(e)))
  sys.exit(main(rest, kwargs))


if __name__ == "__main__":
  entry()
