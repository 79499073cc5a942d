"""Repetition sweeps: methods x N-per-class x seeds, one workdir per cell, resumable.

The grid comes from an ml_collections config:

    config.sweep.methods      = ('scratch', 'ufm', 'l2t_ww', 'l2t_www')
    config.sweep.n_per_class  = (5, 10, 30, 50, 100)
    config.sweep.seeds        = 30            # an int n means seeds 0..n-1, or a tuple of seeds
    config.sweep.method_overrides = {}        # optional {method: {'kt': {'beta': 1.0}}}

How a cell changes the config: `seed` <- seed, `data.n_per_class` <- N, and the method:
'ufm' / 'l2t_ww' / 'l2t_www' set `kt.method`; a name with an entry in `method_overrides` is
defined by that entry alone (e.g. 'l2t_www_beta1': {'kt': {'method': 'l2t_www', 'beta': 1.0}});
any other name sets `transfer.strategy` (with `kt.method = 'none'`). Overrides are nested
mappings (ConfigDict forbids dots in keys) flattened to dotted fields and applied last. A dotted
field that does not exist in the config is a ConfigError (typos must not silently do nothing).

Cell workdir: `<root>/<method>/n<N>/seed<seed>`. A cell whose workdir holds summary.json is
done and skipped. The pending seeds of one (method, N) run together as one compiled program
(a unit; `config.sweep.seeds_per_unit` caps its size), whose checkpoints resume it. Cells are
dealt to hosts round-robin (`cell_index % num_hosts == host_index`), so `--print_commands` can
give every host one command and the hosts never share a cell.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import logging
import os
import pathlib
import re
import shlex
import sys
import tempfile
import traceback
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from tl_jax import identity, terminal
from tl_jax.errors import ConfigError

SUMMARY_NAME = "summary.json"
KT_METHODS = ("ufm", "l2t_ww", "l2t_www")
RunUnit = Callable[[ml_collections.ConfigDict, Sequence[int], Sequence[str]], Any]


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid: its coordinates, its own config and its workdir."""
  index: int
  method: str
  n_per_class: int
  seed: int
  config: ml_collections.ConfigDict = dataclasses.field(compare=False, repr=False)
  workdir: pathlib.Path

  @property
  def done(self) -> bool:
    """Finished with this cell's config (tl_jax.identity: same result-determining fields)."""
    return (self.workdir / SUMMARY_NAME).is_file() and identity.matches(self.workdir, self.config)

  @property
  def stale(self) -> bool:
    """Holds a summary or checkpoints of another config."""
    return identity.has_outputs(self.workdir) and not identity.matches(self.workdir, self.config)


def _slug(s: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "_"


def cell_dirname(method: str, n_per_class: int, seed: int) -> str:
  return f"{_slug(method)}/n{int(n_per_class)}/seed{int(seed)}"


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """config.a.b.c = value for an existing field (ConfigError if any part is missing); a new key
  is accepted only inside the open `*kwargs` dicts (model, head, source kwargs)."""
  node = config
  parts = dotted.split(".")
  for i, p in enumerate(parts):
    open_dict = i == len(parts) - 1 and i > 0 and (parts[i - 1].endswith("kwargs") or
                                                   ".".join(parts[:i]) == "data.splits")
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or (p not in node and
                                                                    not open_dict):
      raise ConfigError(f"sweep override '{dotted}'", value, hint=f"the config has no field "
                        f"'{'.'.join(parts[:i + 1])}'")
    if i < len(parts) - 1:
      node = node[p]
  if isinstance(value, list):
    value = tuple(value)
  try:
    node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"sweep override '{dotted}'", value, hint=str(e)) from e


def _seq(sweep: Any, name: str, kind: type) -> list:
  v = sweep.get(name) if hasattr(sweep, "get") else None
  if v is None:
    raise ConfigError(f"sweep.{name}", None, hint="required")
  if name == "seeds" and isinstance(v, int) and not isinstance(v, bool):
    if v < 1:
      raise ConfigError("sweep.seeds", v, "an int >= 1 or a list of seeds")
    return list(range(v))
  if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not v:
    raise ConfigError(f"sweep.{name}", v, f"a non-empty list of {kind.__name__}")
  if not all(isinstance(x, kind) and not isinstance(x, bool) for x in v):
    raise ConfigError(f"sweep.{name}", v, f"a list of {kind.__name__}")
  if len(set(v)) != len(v):
    raise ConfigError(f"sweep.{name}", v, hint="duplicates")
  return list(v)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'kt': {'beta': 1}} -> {'kt.beta': 1} (dotted keys are accepted too)."""
  out = {}
  for k, v in (d.items() if hasattr(d, "items") else []):
    key = f"{prefix}{k}"
    if isinstance(v, (Mapping, ml_collections.ConfigDict)):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Any
                    ) -> ml_collections.ConfigDict:
  """A deep copy of `config` with nested ({'transfer': {'strategy': ...}}) or dotted overrides."""
  c = copy.deepcopy(config)
  with c.unlocked():
    for k, v in flatten(overrides).items():
      set_field(c, k, v)
  return c


def _overrides(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  mo = config.sweep.get("method_overrides") if "sweep" in config else None
  return {str(m): flatten(v) for m, v in (mo.items() if mo else [])}


def cell_config(config: ml_collections.ConfigDict, method: str, n_per_class: int,
                seed: int) -> ml_collections.ConfigDict:
  """A deep copy of `config` with this cell's method, N and seed applied."""
  c = copy.deepcopy(config)
  with c.unlocked():
    set_field(c, "seed", int(seed))
    set_field(c, "data.n_per_class", int(n_per_class))
    overrides = _overrides(config)
    if method in KT_METHODS:
      set_field(c, "kt.method", method)
    elif method not in overrides:
      set_field(c, "transfer.strategy", method)
      if "kt" in c:
        set_field(c, "kt.method", "none")
    for k, v in overrides.get(method, {}).items():
      set_field(c, k, v)
  return c


def expand_grid(config: ml_collections.ConfigDict, root: str | os.PathLike) -> list[Cell]:
  """All cells in (method, N, seed) order with their configs and workdirs under `root`."""
  if "sweep" not in config:
    raise ConfigError("sweep", None, hint="the config needs a `sweep` block (methods, "
                      "n_per_class, seeds)")
  methods = _seq(config.sweep, "methods", str)
  ns = _seq(config.sweep, "n_per_class", int)
  seeds = _seq(config.sweep, "seeds", int)
  if any(n < 0 for n in ns):
    raise ConfigError("sweep.n_per_class", ns, "integers >= 0 (0 = the whole training pool)")
  unknown = set(_overrides(config)) - set(methods)
  if unknown:
    raise ConfigError("sweep.method_overrides", sorted(unknown), methods)
  from tl_jax.transfer.strategies import STRATEGIES
  known = list(STRATEGIES) + list(KT_METHODS) + sorted(_overrides(config))
  for m in methods:
    if m not in known:
      raise ConfigError("sweep.methods", m, known,
                        hint="a strategy, a KT method, or a name in sweep.method_overrides")
  root = pathlib.Path(root)
  cells = []
  for m in methods:
    for n in ns:
      for s in seeds:
        cells.append(Cell(len(cells), m, n, s, cell_config(config, m, n, s),
                          root / cell_dirname(m, n, s)))
  return cells


def host_cells(cells: Sequence[Cell], host_index: int = 0, num_hosts: int = 1) -> list[Cell]:
  """The cells of host `host_index` (round-robin, so every host gets every method and N)."""
  if num_hosts < 1:
    raise ConfigError("num_hosts", num_hosts, ">= 1")
  if not 0 <= host_index < num_hosts:
    raise ConfigError("host_index", host_index, f"0..{num_hosts - 1}")
  return [c for c in cells if c.index % num_hosts == host_index]


def load_run_unit(spec: str | None = None) -> RunUnit:
  """`module:function` taking (config, seeds, workdirs), imported lazily; default
  tl_jax.experiment.run_seeds (the hook exists for tests and for wrapping the real runner)."""
  cand = spec or "tl_jax.experiment:run_seeds"
  mod_name, _, fn_name = cand.partition(":")
  if not fn_name:
    raise ConfigError("run_unit", cand, "'module:function'")
  try:
    return getattr(importlib.import_module(mod_name), fn_name)
  except (ImportError, AttributeError) as e:
    raise ConfigError("run_unit", cand, hint=str(e)) from e


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


@dataclasses.dataclass
class GridReport:
  ran: list[Cell] = dataclasses.field(default_factory=list)
  pending: list[Cell] = dataclasses.field(default_factory=list)  # dry run: would run
  skipped: list[Cell] = dataclasses.field(default_factory=list)
  failed: list[tuple[Cell, str]] = dataclasses.field(default_factory=list)


def units(cells: Sequence[Cell], seeds_per_unit: int = 0) -> list[list[Cell]]:
  """The pending cells grouped into units: the seeds of one (method, N) that run as one
  compiled program, at most `seeds_per_unit` of them (0 = all of the cell's pending seeds)."""
  groups: dict[tuple[str, int], list[Cell]] = {}
  for c in cells:
    groups.setdefault((c.method, c.n_per_class), []).append(c)
  out = []
  for g in groups.values():
    k = seeds_per_unit if seeds_per_unit > 0 else len(g)
    out += [g[i:i + k] for i in range(0, len(g), k)]
  return out


def check_cells(cells: Sequence[Cell]) -> None:
  """Every cell's config checked (tl_jax.validate, experiment.check_honoured); the first bad
  value is a ConfigError naming the cell."""
  from tl_jax import experiment, validate
  for c in cells:
    try:
      validate.check_config(c.config)
      experiment.check_honoured(c.config)
    except ConfigError as e:
      raise ConfigError(e.field, e.value, e.allowed,
                        hint=f"sweep cell {c.method} n{c.n_per_class} seed{c.seed}") from None


def plan_units(config: ml_collections.ConfigDict, root: str | os.PathLike, host_index: int = 0,
               num_hosts: int = 1, dry_run: bool = False, overwrite: bool = False
               ) -> tuple[GridReport, list[list[Cell]]]:
  """(report with the skipped cells, the units to run) of this host's share of the grid, after
  checking every cell's config and the run identity of what the workdirs already hold (see
  `run_grid`). Removes the outputs of cells of another config when `overwrite`."""
  cells = host_cells(expand_grid(config, root), host_index, num_hosts)
  check_cells(cells)  # the whole grid before its first cell
  rep = GridReport()
  stale = [c for c in cells if c.stale]
  if stale and not overwrite:
    c = stale[0]
    diffs = identity.diff_fields(identity.stored_config(c.workdir) or {}, c.config)
    raise ConfigError("workdir", str(root), hint=f"{len(stale)} cell(s) hold runs of another "
                      f"config (e.g. {c.workdir.relative_to(root)}: {'; '.join(diffs[:3])}); "
                      "pass --overwrite to rerun them, or use a new workdir")
  if not dry_run:
    for c in stale:
      identity.remove_outputs(c.workdir)
  todo = []
  for c in cells:
    (rep.skipped if c.done else todo).append(c)
  logging.info("sweep: %d cells on host %d/%d: %d already finished with this config "
               "(skipped), %d to run%s", len(cells), host_index, num_hosts, len(rep.skipped),
               len(todo), f" ({len(stale)} of another config rerun)" if stale else "")
  per_unit = int(config.sweep.get("seeds_per_unit", 0) or 0)
  return rep, units(todo, per_unit) if todo else []


def prepare_unit(unit: Sequence[Cell]) -> None:
  """Creates the unit's workdirs and records each cell's coordinates and config (cell.json)."""
  for c in unit:
    c.workdir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(c.workdir / "cell.json", {"method": c.method,
                                                 "n_per_class": c.n_per_class,
                                                 "seed": c.seed, "config": c.config.to_dict()})


def run_grid(config: ml_collections.ConfigDict, root: str | os.PathLike,
             run_unit: RunUnit | None = None, host_index: int = 0, num_hosts: int = 1,
             keep_going: bool = False, dry_run: bool = False,
             overwrite: bool = False) -> GridReport:
  """Runs this host's unfinished cells, each unit (the pending seeds of one method and N) as one
  program: `run_unit(config, seeds, workdirs)` (default tl_jax.experiment.run_seeds).

  A cell is finished when its workdir holds summary.json written by a config of the same
  identity (tl_jax.identity.config_hash). Cells holding a summary or checkpoints of another
  config are an error before any work, naming the fields that differ, unless `overwrite` (then
  they rerun). `config.sweep.seeds_per_unit` (0 = all) caps the seeds of a unit, so that on a
  slow machine each finished unit is kept. With keep_going a failing unit is logged and the
  sweep goes on (its cells rerun next time). tl_jax.sweep.submit sends the same units to a
  cluster instead.
  """
  rep, plan = plan_units(config, root, host_index, num_hosts, dry_run, overwrite)
  if rep.skipped and not dry_run:
    print(f"[tl_jax] {len(rep.skipped)} of {len(rep.skipped) + sum(map(len, plan))} runs "
          "finished earlier with this same config: kept, not rerun", flush=True)
  if dry_run or not plan:
    rep.pending = [c for unit in plan for c in unit] if dry_run else []
    return rep
  run_unit = run_unit or load_run_unit()
  from tqdm.auto import tqdm
  # one bar over the runs (the engine adds one over epochs below it); none off a terminal
  bar = tqdm(total=sum(map(len, plan)), unit="run", dynamic_ncols=True,
             disable=not terminal.bars_wanted(config.train.get("progress", True)))
  try:
    for i, unit in enumerate(plan):
      seeds = [c.seed for c in unit]
      bar.set_description(f"{unit[0].method} N={unit[0].n_per_class}")
      logging.info("sweep: unit %d/%d %s n%d seeds %s", i + 1, len(plan), unit[0].method,
                   unit[0].n_per_class, seeds)
      prepare_unit(unit)
      try:
        run_unit(unit[0].config, seeds, [str(c.workdir) for c in unit])
      except Exception as e:  # noqa: BLE001 - reported, and re-raised unless keep_going
        if not keep_going:
          raise
        logging.error("unit %s failed: %s", [str(c.workdir) for c in unit], e)
        msg = "".join(traceback.format_exception_only(type(e), e)).strip()
        rep.failed += [(c, msg) for c in unit]
        bar.update(len(unit))
        continue
      for c in unit:
        if c.done:
          rep.ran.append(c)
          tqdm.write(run_line(c), file=sys.stdout)
        else:
          rep.failed.append((c, f"the unit returned but wrote no {SUMMARY_NAME}"))
      sys.stdout.flush()
      bar.update(len(unit))
  finally:
    bar.close()
  return rep


def run_line(cell: Cell) -> str:
  """One line for a finished run: its test and validation accuracy, best epoch, wall time and
  why it is suspect, if it is (tl_jax.analysis.suspect)."""
  from tl_jax.analysis import suspect
  s = json.loads((cell.workdir / SUMMARY_NAME).read_text())
  line = (f"[tl_jax] {cell.method} N={cell.n_per_class} seed {cell.seed}: "
          f"test {100 * float(s.get('test_accuracy', float('nan'))):.1f} %")
  if s.get("val_accuracy") is not None:
    line += f", val {100 * float(s['val_accuracy']):.1f} %"
  if s.get("best_epoch") is not None:
    line += f", best epoch {s['best_epoch']} of {s.get('epochs_run', '?')}"
  if s.get("wall_s") is not None:
    line += f", {float(s['wall_s']):.0f} s"
  why = suspect.reasons(s, suspect.read_history(cell.workdir))
  return line + (f"  {suspect.MARK} " + "; ".join(why) if why else "")


def host_commands(config_arg: str, root: str | os.PathLike, num_hosts: int,
                  overrides: Mapping[str, Any] | Sequence[str] = (),
                  script: str = "launch/sweep.py", python: str = "python") -> list[str]:
  """One shell command per host; each runs its round-robin share of the grid in `root`."""
  if num_hosts < 1:
    raise ConfigError("num_hosts", num_hosts, ">= 1")
  if isinstance(overrides, Mapping):
    extra = [f"--config.{k}={v}" for k, v in overrides.items()]
  else:
    extra = list(overrides)
  return [" ".join([python, script, f"--config={shlex.quote(config_arg)}",
                    f"--workdir={shlex.quote(str(root))}", f"--host_index={h}",
                    f"--num_hosts={num_hosts}", *map(shlex.quote, extra)])
          for h in range(num_hosts)]
