"""Command-line parsing with the one error path: every bad flag ends in one line
`error: <field>: got ...; allowed: ...` and exit 2 (no traceback, no absl FATAL line).

Shared by `python -m tl_jax.main` and `launch/sweep.py`. Besides absl's own flags and
ml-collections' `--config.a.b=v` overrides it accepts new keys in the open keyword dicts
(`--config.model.kwargs.width=8`, ...), which ml-collections would reject as unknown fields.
"""

from __future__ import annotations

import ast
import difflib
import re
import sys
from typing import Any, Sequence

from absl import flags

from tl_jax.errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
KWARGS_DICTS = ("model.kwargs", "model.head_kwargs", "kt.source_kwargs", "input.augment_kwargs",
                "data.splits")


class CliError(Exception):
  """A bad command line; its message is the one line after 'error: '."""


def split_kwargs(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, Any]]]:
  """(argv without the open-dict overrides, [(dotted field, value)]); values are Python
  literals where they parse as one, else strings."""
  rest, kw = [], []
  pat = re.compile(r"^--config\.(" + "|".join(re.escape(d) for d in KWARGS_DICTS) +
                   r")\.([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
  for a in argv:
    m = pat.match(a)
    if not m:
      rest.append(a)
      continue
    raw = m.group(3)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    kw.append((f"{m.group(1)}.{m.group(2)}", value))
  return rest, kw


def _override_for(argv: Sequence[str], key: str) -> str:
  for a in argv:
    name = a.split("=", 1)[0]
    if name.startswith("--config.") and key in name[len("--config."):].split("."):
      return name
  return "--config"


def one_line(exc: BaseException, argv: Sequence[str]) -> str:
  """The 'field: got ...; allowed: ...' line for a flag-parsing failure."""
  msg = str(exc).strip()
  if isinstance(exc, (KeyError, AttributeError)):
    text = msg.encode().decode("unicode_escape") if "\\n" in msg else msg
    key = (re.findall(r"'([^'\"]+)'", text) or ["?"])[0]
    sugg = re.findall(r'Did you mean "([^"]+)"', text)
    hint = f"did you mean '{sugg[0]}'?" if sugg else "see the config file for its fields"
    return str(ConfigError(_override_for(argv, key), key, "a field of the config", hint=hint))
  m = re.match(r"flag --([^=\s]+)=(.*?): (.*)$", msg, re.S)
  if m and "No such file" in m.group(3):
    return str(ConfigError(f"--{m.group(1)}", m.group(2), "an existing config file"))
  if m and "must have a value other than None" in m.group(3):
    return str(ConfigError(f"--{m.group(1)}", None, "a value (required)"))
  if m and "Traceback" in m.group(3):  # the config file's get_config raised: its last line
    last = [x for x in m.group(3).strip().splitlines() if x.strip()][-1].strip()
    return str(ConfigError(f"--{m.group(1)}", m.group(2), hint=last[:300]))
  if m:
    detail = " ".join(m.group(3).split())
    return str(ConfigError(f"--{m.group(1)}", m.group(2), hint=detail[:200]))
  m = re.search(r"Unknown command line flag '([^']+)'", msg)
  if m:
    known = sorted(n for n in flags.FLAGS if not n.startswith(("help", "?", "only_check")))
    close = difflib.get_close_matches(m.group(1), known, n=1)
    return str(ConfigError(f"--{m.group(1)}", "an unknown flag",
                           ", ".join(f"--{n}" for n in ("config", "workdir", "overwrite")
                                     if n in known) + ", ...",
                           hint=f"did you mean --{close[0]}?" if close else ""))
  return " ".join(msg.split())[:300]


def parse(argv: Sequence[str], required: Sequence[str] = ("config",)
          ) -> tuple[list[str], list[tuple[str, Any]]]:
  """Parses absl flags; (remaining argv, open-dict overrides). Raises CliError."""
  argv, kw = split_kwargs(argv)
  sys.argv[:] = argv  # ml-collections reads its `--config.*` overrides from sys.argv itself
  try:
    rest = flags.FLAGS(list(argv))
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
    raise CliError(one_line(e, argv)) from None
  for name in required:
    if flags.FLAGS[name].value is None:
      raise CliError(str(ConfigError(f"--{name}", None, "a value (required)")))
    if name == "config":
      _load_config(argv)
  return rest, kw


def _load_config(argv: Sequence[str]) -> None:
  """The config file is loaded lazily, on first use: load it now, so a missing or broken file
  is a bad command line too."""
  flag = flags.FLAGS["config"]
  try:
    flag.value.keys()
  except OSError:
    raise CliError(str(ConfigError("--config", flags.FLAGS["config"].config_filename
                                   if hasattr(flag, "config_filename") else None,
                                   "an existing config file (path[:argument])"))) from None
  except (KeyError, AttributeError, ValueError, TypeError) as e:
    raise CliError(one_line(e, argv)) from None


def apply_kwargs(config: Any, overrides: Sequence[tuple[str, Any]]) -> None:
  """Sets the open-dict overrides on `config` (new keys allowed there only)."""
  from tl_jax.sweep.grid import set_field
  with config.unlocked():
    for dotted, value in overrides:
      set_field(config, dotted, value)


def fail(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return EXIT_BAD_INPUT
