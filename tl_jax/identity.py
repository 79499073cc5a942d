"""Run identity: which config made a result, and one run per workdir at a time.

A result counts only for the config that made it. `config_hash` hashes every config field that
can change a run's numbers; fields that cannot (where progress goes, how often a checkpoint is
written, what a sweep enumerates, read-only probes) are left out (`IGNORED`), so a rerun that
only changes them still finds its finished work. Summaries and checkpoints record the hash;
`check_workdir` compares a new config with the one a workdir already holds (its config.json,
which every run writes before any work) and names the fields that differ.

`WorkdirLock` makes a second concurrent run in the same workdir fail at once; a lock left by a
dead process is taken over.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import shutil
import socket
from typing import Any, Iterable, Mapping

from tl_jax.config import base_config
from tl_jax.errors import ConfigError

IGNORED = ("sweep", "compare.seeds", "train.progress", "train.checkpoint_every",
           "train.keep_checkpoints", "kt.precision_probe_every")
# Fields whose default changed after results were recorded under the old one: identities are
# computed against the old default, so a run that relied on the new one is not taken for an
# older run that relied on the old one (and the older runs keep their identity).
RECORDED_DEFAULTS = {"transfer.bn": "live"}
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# what a run writes into its workdir (removed by --overwrite; nothing else is touched)
OUTPUTS = ("summary.json", "metrics.jsonl", "history.json", "trace.jsonl", "meta_precision.jsonl",
           "checkpoints", "model_variables.msgpack", "model.json", "curves.png",
           "confusion_matrix.png", "tensorboard", CONFIG_FILE)


def _as_dict(config: Any) -> dict[str, Any]:
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(config, sort_keys=True, default=_default))


def _default(x: Any) -> Any:
  if isinstance(x, (set, frozenset)):
    return sorted(x)
  if hasattr(x, "tolist"):
    return x.tolist()
  return str(x)


def flat_fields(config: Any, ignored: Iterable[str] = IGNORED) -> dict[str, Any]:
  """{'a.b.c': value} of every leaf field except `ignored` prefixes (tuples become lists)."""
  ignored = tuple(ignored)
  out: dict[str, Any] = {}

  def walk(node: Any, prefix: str) -> None:
    if isinstance(node, Mapping) and node:
      for k in sorted(node):
        walk(node[k], f"{prefix}.{k}" if prefix else str(k))
    elif not any(prefix == i or prefix.startswith(i + ".") for i in ignored):
      out[prefix] = node
  walk(_as_dict(config), "")
  return out


@functools.lru_cache(maxsize=8)
def _base_fields(ignored: tuple[str, ...]) -> dict[str, Any]:
  return flat_fields(base_config(), ignored)


def identity_fields(config: Any, ignored: Iterable[str] = IGNORED) -> dict[str, Any]:
  """The result-determining fields of `config` that differ from `base_config()`'s defaults.
  Why only those: a field added to tl_jax later, at a default that keeps the old behaviour,
  must not make every earlier result look like another config's. A default changed later is
  compared with its old value (`RECORDED_DEFAULTS`), so the identity of configs that relied
  on it changes."""
  base = dict(_base_fields(tuple(ignored)))
  base.update((k, v) for k, v in RECORDED_DEFAULTS.items() if k in base)
  missing = object()
  return {k: v for k, v in flat_fields(config, ignored).items() if base.get(k, missing) != v}


def config_hash(config: Any, ignored: Iterable[str] = IGNORED) -> str:
  """16 hex digits of sha256 over `identity_fields(config)` (`config`: a ConfigDict or the dict
  of a config.json)."""
  blob = json.dumps(identity_fields(config, ignored), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_hash(config: Any) -> str:
  """`config_hash` without the seed: equal for the seeds of one sweep cell."""
  return config_hash(config, IGNORED + ("seed",))


def diff_fields(old: Any, new: Any, ignored: Iterable[str] = IGNORED) -> list[str]:
  """'field: old -> new' for every result-determining field that differs (a field one of them
  lacks counts as its default)."""
  base = _base_fields(tuple(ignored))
  a = {**base, **flat_fields(old, ignored)}
  b = {**base, **flat_fields(new, ignored)}
  out = []
  for k in sorted(set(a) | set(b)):
    if a.get(k, "<absent>") != b.get(k, "<absent>"):
      out.append(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}")
  return out


def has_outputs(workdir: pathlib.Path) -> bool:
  """True when `workdir` holds a finished summary or a checkpoint of some run."""
  ck = workdir / "checkpoints"
  return (workdir / "summary.json").is_file() or (ck.is_dir() and any(ck.iterdir()))


def stored_config(workdir: pathlib.Path) -> dict[str, Any] | None:
  p = workdir / CONFIG_FILE
  if not p.is_file():
    return None
  try:
    return json.loads(p.read_text())
  except (OSError, json.JSONDecodeError):
    return None


def matches(workdir: pathlib.Path, config: Any) -> bool:
  """True when the workdir's recorded config has the identity of `config`."""
  old = stored_config(workdir)
  return old is not None and config_hash(old) == config_hash(config)


def check_workdir(workdir: str | os.PathLike, config: Any, overwrite: bool = False) -> None:
  """ConfigError when `workdir` holds results or checkpoints of another config (naming the
  differing fields); with `overwrite`, removes that run's outputs instead."""
  wd = pathlib.Path(workdir)
  if not wd.is_dir() or not has_outputs(wd):
    return
  old = stored_config(wd)
  if old is not None and config_hash(old) == config_hash(config):
    return
  if overwrite:
    remove_outputs(wd)
    return
  diffs = diff_fields(old, config) if old is not None else ["config.json missing or unreadable"]
  shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
  raise ConfigError("workdir", str(wd), hint=f"holds a run of another config ({shown}); pass "
                    "--overwrite to replace it, or use a new workdir")


def remove_outputs(workdir: pathlib.Path) -> None:
  for name in OUTPUTS:
    p = workdir / name
    if p.is_dir():
      shutil.rmtree(p)
    elif p.exists():
      p.unlink()


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Exclusive use of a workdir by this process (`with WorkdirLock(wd): ...`).

  The lock file holds 'host pid'. A second process fails at once with a ConfigError naming the
  holder; a lock whose process is gone (same host) is taken over. Re-entrant per process."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self.owned = False

  def acquire(self) -> "WorkdirLock":
    me = f"{socket.gethostname()} {os.getpid()}"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        try:
          host, pid = self.path.read_text().split()
        except (OSError, ValueError):
          host, pid = "", "0"
        if f"{host} {pid}" == me:
          return self  # this process already holds it
        if host == socket.gethostname() and not _alive(int(pid)):
          self.path.unlink(missing_ok=True)  # stale: its process is gone
          continue
        raise ConfigError("workdir", str(self.path.parent),
                          hint=f"in use by another run (pid {pid} on {host or '?'}); wait for "
                          f"it, or remove {self.path} if that process is gone") from None
      with os.fdopen(fd, "w") as f:
        f.write(me)
      self.owned = True
      return self
    raise ConfigError("workdir", str(self.path.parent), hint="could not take its lock file")

  def release(self) -> None:
    if self.owned:
      self.path.unlink(missing_ok=True)
      self.owned = False

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc: Any) -> None:
    self.release()
