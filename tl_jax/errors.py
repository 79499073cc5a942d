"""One error type for bad user input, so the CLI can print one clear line and exit non-zero."""

from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
  """Bad user input: names the offending field, the value given and what is allowed."""

  def __init__(self, field: str, value: Any = None, allowed: Iterable[Any] | str | None = None,
               hint: str = ""):
    self.field = field
    self.value = value
    self.allowed = allowed
    msg = f"{field}: got {value!r}"
    if allowed is not None:
      allowed_s = allowed if isinstance(allowed, str) else ", ".join(map(str, allowed))
      msg += f"; allowed: {allowed_s}"
    if hint:
      msg += f" ({hint})"
    super().__init__(msg)


def check_choice(field: str, value: Any, allowed: Iterable[Any]) -> Any:
  """Returns `value` if it is in `allowed`, else raises ConfigError naming the field."""
  allowed = list(allowed)
  if value not in allowed:
    raise ConfigError(field, value, allowed)
  return value


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss; raised with the epoch/step so the run stops cleanly."""
