"""Optimisers and LR schedules from a config, with regex-based freezing and LR multipliers.

The returned transformation is `chain(multi_transform(groups), scale_by_lr_scale())`: frozen
parameters go to `optax.set_to_zero()` (their update is exactly zero, so weight decay and momentum
cannot move them), every LR-multiplier group gets its own copy of the optimiser with the schedule
multiplied, and a final scalar `lr_scale` (kept in the optimiser state) lets the training loop
lower the LR on a plateau without recompiling. Because the LR multiplies the whole update in every
optimiser here (SGD/momentum, Adam, AdamW, RMSprop), scaling the update equals scaling the LR.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tl_jax.errors import ConfigError, check_choice
from tl_jax.train import masks

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "warmup_cosine")
SCHEDULE_UNITS = ("step", "epoch")
DECAY_TYPES = ("coupled", "decoupled")
FROZEN = "frozen"


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  if cfg is None:
    return default
  if hasattr(cfg, "get"):
    return cfg.get(key, default)
  return getattr(cfg, key, default)


# ----------------------------------------------------------------------------- lr scale hook
class LRScaleState(NamedTuple):
  """Global LR multiplier applied to the final update (reduce-LR-on-plateau writes it)."""
  scale: jax.Array


def scale_by_lr_scale(init_scale: float = 1.0) -> optax.GradientTransformation:
  """Multiplies updates by a scalar held in the optimiser state (changed by `set_lr_scale`)."""

  def init_fn(params):
    del params
    return LRScaleState(scale=jnp.asarray(init_scale, jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree.map(lambda u: (u * state.scale).astype(u.dtype), updates)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def _is_scale(x: Any) -> bool:
  return isinstance(x, LRScaleState)


def set_lr_scale(opt_state: Any, value: float) -> Any:
  """Returns `opt_state` with every LRScaleState set to `value` (same shapes: no recompilation)."""
  return jax.tree.map(
      lambda s: LRScaleState(jnp.asarray(value, jnp.float32)) if _is_scale(s) else s,
      opt_state, is_leaf=_is_scale)


def has_lr_scale(tree: Any) -> bool:
  """Whether `tree` (an optimiser state or a whole train state) holds an LRScaleState."""
  return any(_is_scale(s) for s in jax.tree.leaves(tree, is_leaf=_is_scale))


def lr_scale_of(tree: Any) -> jax.Array:
  """The LR scale inside `tree` as an array (traceable; 1.0 when there is none)."""
  found = [s for s in jax.tree.leaves(tree, is_leaf=_is_scale) if _is_scale(s)]
  return found[0].scale if found else jnp.asarray(1.0, jnp.float32)


def _has_count(x: Any) -> bool:
  return isinstance(x, tuple) and hasattr(x, "_fields") and "count" in x._fields


def with_counts(opt_state: Any, ref: Any) -> Any:
  """`opt_state` with every optax `count` field (schedules, Adam's bias correction) taken from
  `ref`, an optimiser state of the same structure. The L2T look-ahead uses it so that its steps
  run at the real step's LR, as the reference's look-ahead does."""
  counts = iter([s.count for s in jax.tree.leaves(ref, is_leaf=_has_count) if _has_count(s)])
  return jax.tree.map(lambda s: s._replace(count=next(counts)) if _has_count(s) else s,
                      opt_state, is_leaf=_has_count)


def get_lr_scale(opt_state: Any) -> float:
  """The current global LR scale (1.0 if the state has no LRScaleState)."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_scale) if _is_scale(s)]
  return float(found[0].scale) if found else 1.0


# ----------------------------------------------------------------------------- schedules
def make_schedule(cfg: Any, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
  """LR as a function of the optimiser step count.

  `schedule_unit='epoch'` holds the LR constant within an epoch (PyTorch schedulers stepped once
  per epoch); boundaries and warmup are then given in epochs, otherwise in steps (warmup is always
  given in epochs via `warmup_epochs` and converted).
  """
  lr = float(_get(cfg, "lr", 0.01))
  name = check_choice("optimizer.schedule", _get(cfg, "schedule", "constant"), SCHEDULES)
  unit = check_choice("optimizer.schedule_unit", _get(cfg, "schedule_unit", "step"),
                      SCHEDULE_UNITS)
  if steps_per_epoch < 1:
    raise ConfigError("steps_per_epoch", steps_per_epoch, ">= 1")
  per_epoch = unit == "epoch"
  total = num_epochs if per_epoch else num_epochs * steps_per_epoch
  warmup_epochs = float(_get(cfg, "warmup_epochs", 0))
  warmup = int(round(warmup_epochs if per_epoch else warmup_epochs * steps_per_epoch))
  min_lr = float(_get(cfg, "min_lr", 0.0))

  if name == "constant":
    base = optax.constant_schedule(lr)
  elif name == "step":
    boundaries = tuple(_get(cfg, "boundaries", ()) or ())
    factor = float(_get(cfg, "decay_factor", 0.1))
    if any(int(b) <= 0 for b in boundaries):
      raise ConfigError("optimizer.boundaries", boundaries, "positive integers")
    base = optax.piecewise_constant_schedule(lr, {int(b): factor for b in boundaries})
  elif name == "cosine":
    if total < 1:
      raise ConfigError("num_epochs", num_epochs, ">= 1")
    base = optax.cosine_decay_schedule(lr, decay_steps=total, alpha=min_lr / lr if lr else 0.0)
  else:  # warmup_cosine
    if warmup >= total:
      raise ConfigError("optimizer.warmup_epochs", warmup_epochs, f"< num_epochs ({num_epochs})")
    base = optax.warmup_cosine_decay_schedule(
        init_value=float(_get(cfg, "warmup_init_lr", 0.0)), peak_value=lr,
        warmup_steps=warmup, decay_steps=total, end_value=min_lr)

  if not per_epoch:
    return base
  spe = int(steps_per_epoch)
  return lambda count: base(count // spe)


# ----------------------------------------------------------------------------- optimisers
def _direction(cfg: Any, name: str) -> optax.GradientTransformation:
  """The optimiser without LR and weight decay (the part multiplied by -lr)."""
  if name == "sgd":
    momentum = float(_get(cfg, "momentum", 0.0) or 0.0)
    nesterov = bool(_get(cfg, "nesterov", False))
    if nesterov and momentum <= 0:
      raise ConfigError("optimizer.nesterov", True, "only with momentum > 0")
    return optax.trace(decay=momentum, nesterov=nesterov) if momentum else optax.identity()
  if name in ("adam", "adamw"):
    return optax.scale_by_adam(b1=float(_get(cfg, "b1", 0.9)), b2=float(_get(cfg, "b2", 0.999)),
                               eps=float(_get(cfg, "eps", 1e-8)))
  # rmsprop; PyTorch: alpha=0.99, eps=1e-8 outside the sqrt; Keras: rho=0.9, eps=1e-7.
  tx = optax.scale_by_rms(decay=float(_get(cfg, "rms_decay", 0.99)),
                          eps=float(_get(cfg, "eps", 1e-8)),
                          eps_in_sqrt=bool(_get(cfg, "eps_in_sqrt", False)))
  momentum = float(_get(cfg, "momentum", 0.0) or 0.0)
  return optax.chain(tx, optax.trace(decay=momentum)) if momentum else tx


def _group_tx(cfg: Any, name: str, schedule: optax.Schedule, mult: float,
              decay_mask: Any) -> optax.GradientTransformation:
  wd = float(_get(cfg, "weight_decay", 0.0) or 0.0)
  decay_type = _get(cfg, "decay_type", "decoupled" if name == "adamw" else "coupled")
  check_choice("optimizer.decay_type", decay_type, DECAY_TYPES)
  parts = []
  if wd and decay_type == "coupled":  # L2 added to the gradient (PyTorch SGD weight_decay)
    parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
  parts.append(_direction(cfg, name))
  if wd and decay_type == "decoupled":  # AdamW: p -= lr * (update + wd * p)
    parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
  scaled = schedule if mult == 1.0 else (lambda c: schedule(c) * mult)
  parts.append(optax.scale_by_learning_rate(scaled))
  return optax.chain(*parts)


def group_labels(cfg: Any, params: Any) -> Any:
  """Per-parameter group label: 'frozen', or 'lr_x<mult>' from the first matching lr_mults rule."""
  frozen = tuple(_get(cfg, "frozen", ()) or ())
  lr_mults = tuple(_get(cfg, "lr_mults", ()) or ())
  for rule in lr_mults:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2:
      raise ConfigError("optimizer.lr_mults", rule, "(regex, multiplier) pairs")
    if float(rule[1]) < 0:
      raise ConfigError("optimizer.lr_mults", rule, "multipliers >= 0")
  rules = [(r, FROZEN) for r in frozen]
  # A multiplier of 0 means frozen (exactly zero update, no optimiser state).
  rules += [(r, FROZEN if float(m) == 0 else f"lr_x{float(m)!r}") for r, m in lr_mults]
  masks.label_params(params, [(r, True) for r in frozen], False, field="optimizer.frozen",
                     require_match=True)
  return masks.label_params(params, rules, "lr_x1.0", field="optimizer.lr_mults")


def make_optimizer(cfg: Any, steps_per_epoch: int, num_epochs: int, params: Any,
                   extra_params: Any = None) -> optax.GradientTransformation:
  """Builds the optimiser described by `cfg` (an ml_collections ConfigDict or dict).

  Fields: name (sgd|adam|adamw|rmsprop), lr, momentum, nesterov, b1, b2, eps, rms_decay,
  weight_decay, decay_type (coupled|decoupled), decay_exclude (regexes not decayed, e.g. BN/bias),
  schedule (constant|step|cosine|warmup_cosine), schedule_unit (step|epoch), boundaries,
  decay_factor, warmup_epochs, warmup_init_lr, min_lr, frozen (regexes), lr_mults ((regex, m), ...),
  grad_clip_norm.

  With `extra_params` (e.g. the L2T regressors), the transformation acts on
  `{'target': params, 'regressors': extra_params}`: the rules match the target's parameter names
  as usual, and the extra parameters train in the base group.
  """
  name = _get(cfg, "name", None)
  if name not in OPTIMIZERS:
    raise ConfigError("optimizer.name", name, OPTIMIZERS)
  schedule = make_schedule(cfg, steps_per_epoch, num_epochs)
  labels = group_labels(cfg, params)
  described = masks.describe_trainable(params, tuple(_get(cfg, "frozen", ()) or ()))
  decay_exclude = tuple(_get(cfg, "decay_exclude", ()) or ())
  decay_mask = None
  if decay_exclude:
    excl = masks.label_params(params, [(r, True) for r in decay_exclude], False,
                              field="optimizer.decay_exclude")
    decay_mask = jax.tree.map(lambda e: not e, excl)
  if extra_params is not None:
    labels = {"target": labels, "regressors": jax.tree.map(lambda _: "lr_x1.0", extra_params)}
    if decay_mask is not None:
      decay_mask = {"target": decay_mask,
                    "regressors": jax.tree.map(lambda _: True, extra_params)}
    params = {"target": params, "regressors": extra_params}

  groups = sorted(set(jax.tree.leaves(labels)))
  transforms = {}
  for g in groups:
    if g == FROZEN:
      transforms[g] = optax.set_to_zero()
    else:
      mult = float(g[len("lr_x"):])
      transforms[g] = _group_tx(cfg, name, schedule, mult, decay_mask)
  parts = []
  clip = _get(cfg, "grad_clip_norm", None)
  if clip:
    parts.append(optax.clip_by_global_norm(float(clip)))
  parts.append(optax.multi_transform(transforms, labels))
  parts.append(scale_by_lr_scale())
  logging.info("optimizer %s, groups %s; %s", name, groups, described)
  return optax.chain(*parts)


def make_lr_fn(cfg: Any, steps_per_epoch: int, num_epochs: int) -> Callable[[int, float], float]:
  """`lr_fn(step, lr_scale) -> float` for logging the effective base-group LR."""
  schedule = make_schedule(cfg, steps_per_epoch, num_epochs)
  return lambda step, scale=1.0: float(schedule(step)) * float(scale)
