"""Early stopping and reduce-LR-on-plateau as small pure-Python classes with Keras semantics.

They see one (epoch, value) pair per epoch and say what to do; the loop owns the state and the LR.
`state_dict()`/`load_state_dict()` round-trip through JSON so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from tl_jax.errors import ConfigError, check_choice

MODES = ("min", "max", "auto")


def resolve_mode(monitor: str, mode: str) -> str:
  """Keras 'auto': maximise accuracy/F1/recall-like metrics, minimise anything else."""
  check_choice("monitor_mode", mode, MODES)
  if mode != "auto":
    return mode
  up = ("acc", "f1", "recall", "precision", "auc")
  return "max" if any(u in monitor for u in up) else "min"


class EarlyStopping:
  """Stops after `patience` epochs without an improvement larger than `min_delta`.

  Mirrors keras.callbacks.EarlyStopping: `wait` counts epochs since the last improvement, the run
  stops when `wait >= patience` (not at epoch 0); with a `baseline`, the counter only resets on
  improvements over the baseline. `patience=None` never stops (best tracking only).
  """

  def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: Optional[int] = 0,
               min_delta: float = 0.0, baseline: Optional[float] = None,
               restore_best: bool = True, start_from_epoch: int = 0):
    if patience is not None and patience < 0:
      raise ConfigError("early_stopping.patience", patience, ">= 0 or None")
    self.monitor = monitor
    self.mode = resolve_mode(monitor, mode)
    self.patience = patience
    self.min_delta = abs(float(min_delta))
    self.baseline = baseline
    self.restore_best = restore_best
    self.start_from_epoch = start_from_epoch
    self.wait = 0
    self.best = math.inf if self.mode == "min" else -math.inf
    self.best_epoch: Optional[int] = None
    self.stopped_epoch: Optional[int] = None

  def _better(self, current: float, reference: float) -> bool:
    if self.mode == "min":
      return current + self.min_delta < reference
    return current - self.min_delta > reference

  def update(self, epoch: int, value: Optional[float]) -> dict[str, bool]:
    """Feeds one epoch's metric. Returns {'improved': new best, 'stop': end training now}."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or \
        epoch < self.start_from_epoch:
      return {"improved": False, "stop": False}
    value = float(value)
    self.wait += 1
    if self._better(value, self.best):
      self.best = value
      self.best_epoch = epoch
      if self.baseline is None or self._better(value, self.baseline):
        self.wait = 0
      return {"improved": True, "stop": False}
    if self.patience is not None and self.wait >= self.patience and epoch > 0:
      self.stopped_epoch = epoch
      return {"improved": False, "stop": True}
    return {"improved": False, "stop": False}

  def state_dict(self) -> dict[str, Any]:
    return {"wait": self.wait, "best": None if math.isinf(self.best) else self.best,
            "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch}

  def load_state_dict(self, d: dict[str, Any]) -> None:
    self.wait = int(d["wait"])
    self.best = (math.inf if self.mode == "min" else -math.inf) if d["best"] is None \
        else float(d["best"])
    self.best_epoch = d["best_epoch"]
    self.stopped_epoch = d["stopped_epoch"]


class ReduceLROnPlateau:
  """Multiplies the LR by `factor` after `patience` epochs without improvement (Keras semantics).

  Improvement: value < best - min_delta ('min') or > best + min_delta ('max'). After a
  reduction, `cooldown` epochs pass before counting again; the LR never goes below `min_lr`.
  """

  def __init__(self, monitor: str = "val_loss", mode: str = "auto", factor: float = 0.1,
               patience: int = 10, min_delta: float = 1e-4, cooldown: int = 0,
               min_lr: float = 0.0):
    if not 0.0 < factor < 1.0:
      raise ConfigError("reduce_lr.factor", factor, "0 < factor < 1")
    if patience < 0:
      raise ConfigError("reduce_lr.patience", patience, ">= 0")
    self.monitor = monitor
    self.mode = resolve_mode(monitor, mode)
    self.factor = float(factor)
    self.patience = int(patience)
    self.min_delta = abs(float(min_delta))
    self.cooldown = int(cooldown)
    self.min_lr = float(min_lr)
    self.wait = 0
    self.cooldown_counter = 0
    self.best = math.inf if self.mode == "min" else -math.inf

  def _better(self, current: float) -> bool:
    if self.mode == "min":
      return current < self.best - self.min_delta
    return current > self.best + self.min_delta

  def in_cooldown(self) -> bool:
    return self.cooldown_counter > 0

  def update(self, value: Optional[float], lr: float) -> float:
    """Feeds one epoch's metric and the current LR; returns the LR to use from now on."""
    if value is None or math.isnan(float(value)):
      return lr
    value = float(value)
    if self.in_cooldown():
      self.cooldown_counter -= 1
      self.wait = 0
    if self._better(value):
      self.best = value
      self.wait = 0
    elif not self.in_cooldown():
      self.wait += 1
      if self.wait >= self.patience and lr > self.min_lr:
        lr = max(lr * self.factor, self.min_lr)
        self.cooldown_counter = self.cooldown
        self.wait = 0
    return lr

  def state_dict(self) -> dict[str, Any]:
    return {"wait": self.wait, "cooldown_counter": self.cooldown_counter,
            "best": None if math.isinf(self.best) else self.best}

  def load_state_dict(self, d: dict[str, Any]) -> None:
    self.wait = int(d["wait"])
    self.cooldown_counter = int(d["cooldown_counter"])
    self.best = (math.inf if self.mode == "min" else -math.inf) if d["best"] is None \
        else float(d["best"])
