"""When progress bars are drawn: only for a person at a terminal.

Bars write carriage returns; in a log file or CI output they only add noise, so they are drawn
when both stdout (where the per-run lines and the table go) and stderr (where the bars go) are
terminals, and the config asks for them (`train.progress`, default on).
"""

from __future__ import annotations

import sys


def bars_wanted(progress: bool = True) -> bool:
  """True when `progress` is set and stdout and stderr are both terminals."""
  def tty(stream) -> bool:
    try:
      return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
      return False
  return bool(progress) and tty(sys.stdout) and tty(sys.stderr)
