"""The shipped experiment configs, importable from an installed tl_jax.

Each module's `get_config(arg)` returns an ml-collections ConfigDict; its docstring holds the
command that runs it and the numbers it produced. From the command line the same configs are
`--config configs/<name>.py[:arg]` (thin files in the checkout that load these modules).

    from tl_jax import configs
    config = configs.get("quickstart")            # or configs.get("l2t_thesis", "cifar100")
    configs.names()                               # ('l2t_cpu_mini', 'l2t_thesis', ...)
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from tl_jax.errors import ConfigError


def names() -> tuple[str, ...]:
  """The names of the shipped configs."""
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def get(name: str, arg: str | None = None) -> Any:
  """The ConfigDict of shipped config `name` (with its optional argument, as after ':')."""
  if name not in names():
    raise ConfigError("config", name, names())
  mod = importlib.import_module(f"{__name__}.{name}")
  return mod.get_config(arg) if arg else mod.get_config()
