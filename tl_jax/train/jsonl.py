"""Crash-safe JSON files: whole-file writes via temp file + rename, and JSONL appends."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np


def to_jsonable(obj: Any) -> Any:
  """numpy/jax scalars and arrays -> Python; NaN/inf -> None (strict JSON has no NaN)."""
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
    arr = np.asarray(obj)
    return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating, float)):
    f = float(obj)
    return f if math.isfinite(f) else None
  if isinstance(obj, np.bool_):
    return bool(obj)
  if isinstance(obj, Path):
    return str(obj)
  return obj


def dumps(obj: Any) -> str:
  return json.dumps(to_jsonable(obj), sort_keys=True, allow_nan=False)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes `text` so readers see the old or the new file, never a half-written one."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
  write_text_atomic(path, json.dumps(to_jsonable(obj), sort_keys=True, indent=indent,
                                     allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
  with open(path) as f:
    return json.load(f)


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
  """Appends one line (one record per epoch); flushed and fsynced so a crash loses at most it."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    f.write(dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
  write_text_atomic(path, "".join(dumps(r) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads records, ignoring a truncated final line left by a crash mid-append."""
  out = []
  with open(path) as f:
    lines = f.read().splitlines()
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from e
  return out
