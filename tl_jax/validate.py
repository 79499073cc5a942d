"""Config values checked for range, name and consistency before any data is read or compiled.

`check_config(config)` raises the one `ConfigError` (field, value, what is allowed) for values
that parse but make no sense - a zero or negative epoch count, a negative or non-finite learning
rate (gradient ascent), label smoothing outside [0, 1), an unknown registry name - so that a run
never ends in a finished, counted result of a nonsensical config. Checks that need the data or
the model's parameters (split shapes, regex rules against parameter names) run where those are
first known, still before training (tl_jax.experiment).
"""

from __future__ import annotations

import math
import os
from typing import Any

import ml_collections

from tl_jax.errors import ConfigError, check_choice


def _num(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node: Any = config
  for p in dotted.split("."):
    node = node[p]
  return node


def _check_number(config, field: str, lo: float | None = None, hi: float | None = None,
                  lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> None:
  v = _num(config, field)
  kind = "an integer" if integer else "a number"
  ok = isinstance(v, (int, float)) and not isinstance(v, bool)
  if integer:
    ok = ok and float(v).is_integer()
  if ok and not math.isfinite(float(v)):
    ok = False
  if ok and lo is not None:
    ok = v > lo if lo_open else v >= lo
  if ok and hi is not None:
    ok = v < hi if hi_open else v <= hi
  if not ok:
    lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    hi_s = "" if hi is None else (f"< {hi}" if hi_open else f"<= {hi}")
    rng = " and ".join(x for x in (lo_s, hi_s) if x)
    raise ConfigError(field, v, f"{kind} {rng}".strip())


def check_config(config: ml_collections.ConfigDict) -> None:
  """ConfigError for the first out-of-range, unknown or inconsistent value of `config`."""
  from tl_jax import models, runtime
  from tl_jax.data import augment, sources
  from tl_jax.train import optim
  from tl_jax.transfer import heads, init as tinit, strategies

  check_choice("model.name", config.model.name, models.model_names())
  check_choice("model.head", config.model.head, heads.HEADS)
  check_choice("optimizer.name", config.optimizer.name, optim.OPTIMIZERS)
  check_choice("optimizer.schedule", config.optimizer.schedule, optim.SCHEDULES)
  check_choice("optimizer.schedule_unit", config.optimizer.schedule_unit, optim.SCHEDULE_UNITS)
  check_choice("optimizer.decay_type", config.optimizer.decay_type, optim.DECAY_TYPES)
  check_choice("input.augment", config.input.augment, augment.AUGMENTS)
  check_choice("input.normalize", config.input.normalize, augment.NORMALIZE_MODES)
  check_choice("data.source", config.data.source, sources.source_names())
  check_choice("transfer.strategy", config.transfer.strategy, strategies.STRATEGIES)
  check_choice("transfer.init_kind", config.transfer.init_kind, tinit.INIT_KINDS)
  check_choice("transfer.bn", config.transfer.bn, strategies.BN_MODES)
  check_choice("model.bn_running_var", config.model.bn_running_var, ("biased", "unbiased"))
  check_choice("train.seed_loop", config.train.seed_loop, ("auto", "vmap", "map"))
  runtime.xla_cpu_flags(config)

  _check_number(config, "train.num_epochs", 1, integer=True)
  _check_number(config, "train.batch_size", 1, integer=True)
  _check_number(config, "train.eval_batch_size", 1, integer=True)
  _check_number(config, "train.checkpoint_every", 0, integer=True)
  _check_number(config, "train.label_smoothing", 0.0, 1.0, hi_open=True)
  _check_number(config, "optimizer.lr", 0.0, lo_open=True)
  _check_number(config, "optimizer.momentum", 0.0, 1.0, hi_open=True)
  _check_number(config, "optimizer.weight_decay", 0.0)
  _check_number(config, "optimizer.warmup_epochs", 0, integer=True)
  _check_number(config, "transfer.warmup_epochs", 0, integer=True)
  _check_number(config, "transfer.finetune_lr", 0.0)
  _check_number(config, "data.n_per_class", 0, integer=True)
  _check_number(config, "data.val_per_class", 0, integer=True)
  _check_number(config, "data.test_per_class", 0, integer=True)
  _check_number(config, "data.channels", 0, integer=True)
  if config.data.channels not in (0, 1, 3):
    raise ConfigError("data.channels", config.data.channels, [0, 1, 3])
  if int(config.transfer.warmup_epochs) > int(config.train.num_epochs):
    raise ConfigError("transfer.warmup_epochs", config.transfer.warmup_epochs,
                      f"0..train.num_epochs ({config.train.num_epochs})")
  if int(config.optimizer.warmup_epochs) >= int(config.train.num_epochs) and \
      config.optimizer.schedule == "warmup_cosine":
    raise ConfigError("optimizer.warmup_epochs", config.optimizer.warmup_epochs,
                      f"< train.num_epochs ({config.train.num_epochs})")
  _check_number(config, "train.early_stopping.patience", -1, integer=True)
  _check_number(config, "train.early_stopping.min_delta", 0.0)
  _check_number(config, "train.reduce_lr.patience", -1, integer=True)
  _check_number(config, "train.reduce_lr.factor", 0.0, 1.0, lo_open=True, hi_open=True)
  _check_number(config, "train.reduce_lr.min_lr", 0.0)
  if config.kt.method != "none":
    _check_number(config, "kt.beta", 0.0)
    _check_number(config, "kt.inner_steps", 0, integer=True)
    _check_number(config, "kt.meta_lr", 0.0, lo_open=True)
    _check_number(config, "kt.meta_weight_decay", 0.0)
    _check_number(config, "kt.source_num_classes", 1, integer=True)
    check_choice("kt.source_model", config.kt.source_model, models.model_names())
    check_choice("kt.source_kind", config.kt.source_kind, tinit.INIT_KINDS)
    from tl_jax.kt import bilevel, meta_nets
    check_choice("kt.bn_updates", config.kt.bn_updates, bilevel.BN_UPDATES)
    check_choice("kt.meta_dtype", config.kt.meta_dtype, bilevel.META_DTYPES)
    check_choice("kt.matmul_precision", config.kt.matmul_precision, bilevel.MATMUL_PRECISIONS)
    check_choice("kt.which_input", config.kt.which_input, meta_nets.WHICH_INPUTS)
    check_choice("kt.which_init", config.kt.which_init, meta_nets.WHICH_INITS)
  _check_number(config, "kt.precision_probe_every", 0, integer=True)
  env = os.environ.get("TL_JAX_SHARED")
  if env and not (os.path.isdir(os.path.join(env, "data")) or
                  os.path.isdir(os.path.join(env, "weights"))):
    raise ConfigError("TL_JAX_SHARED", env, "a folder holding data/ or weights/ (the shared "
                      "data root)", hint="unset it to use ../shared beside the checkout")
