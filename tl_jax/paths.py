"""Where on-disk data lives. Nothing is copied into the project: point at it.

Resolution order for the shared data root: the `TL_JAX_SHARED` environment variable, then
`../shared` beside the project checkout. Configs hold paths like `shared://data/cifar10/train.npz`
which `resolve()` expands.
"""

from __future__ import annotations

import os
import pathlib

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_PREFIX = "shared://"


def shared_root() -> pathlib.Path | None:
  """The shared data root, or None when it is absent (tests then skip)."""
  env = os.environ.get("TL_JAX_SHARED")
  candidates = [pathlib.Path(env)] if env else []
  candidates.append(PROJECT_ROOT.parent / "shared")
  for c in candidates:
    if (c / "data").is_dir() or (c / "weights").is_dir():
      return c.resolve()
  return None


def resolve(path: str | os.PathLike) -> pathlib.Path:
  """Expands `shared://...` against `shared_root()`; other paths are returned as given."""
  s = os.fspath(path)
  if s.startswith(SHARED_PREFIX):
    root = shared_root()
    if root is None:
      from tl_jax.errors import ConfigError
      raise ConfigError("path", s, hint="the shared data root was not found: set TL_JAX_SHARED "
                        "or place `shared/` beside the project checkout")
    return root / s[len(SHARED_PREFIX):]
  return pathlib.Path(s).expanduser()
