"""Regex rules on '/'-joined parameter paths -> per-parameter labels (freezing, LR multipliers)."""

from __future__ import annotations

import re
from typing import Any, Hashable, Sequence

import jax
import numpy as np

from tl_jax.errors import ConfigError


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_name(path: Sequence[Any]) -> str:
  """'/'-joined name of a jax key path, e.g. 'block1/conv/kernel'."""
  return "/".join(_key_name(k) for k in path)


def param_names(params: Any) -> list[str]:
  """All leaf names of a param tree in tree order."""
  return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _compile(rules: Sequence[tuple[str, Any]], field: str) -> list[tuple[re.Pattern, Any]]:
  out = []
  for rule in rules:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2:
      raise ConfigError(field, rule, "(regex, value) pairs")
    try:
      out.append((re.compile(rule[0]), rule[1]))
    except (re.error, TypeError) as e:
      raise ConfigError(field, rule[0], "a valid regular expression", hint=str(e)) from e
  return out


def label_params(params: Any, rules: Sequence[tuple[str, Hashable]], default: Hashable,
                 field: str = "rules", require_match: bool = False) -> Any:
  """Tree of labels: the value of the first rule whose regex `re.search`es the path, else default.

  With `require_match`, a rule that matches no parameter raises ConfigError (catches typos such
  as a frozen-layer regex that silently freezes nothing).
  """
  compiled = _compile(rules, field)
  used = [False] * len(compiled)

  def label(path, _):
    name = path_name(path)
    for i, (rx, value) in enumerate(compiled):
      if rx.search(name):
        used[i] = True
        return value
    return default

  labels = jax.tree_util.tree_map_with_path(label, params)
  if require_match:
    for (rx, _), u in zip(compiled, used):
      if not u:
        raise ConfigError(field, rx.pattern, "a regex matching at least one parameter path",
                          hint=f"e.g. {param_names(params)[:4]}")
  return labels


def frozen_mask(params: Any, frozen_regexes: Sequence[str], require_match: bool = False) -> Any:
  """Boolean tree: True where the parameter is frozen."""
  return label_params(params, [(r, True) for r in frozen_regexes], False,
                      field="optimizer.frozen", require_match=require_match)


def frozen_modules(params: Any, frozen: Any) -> frozenset[str]:
  """'/'-joined paths of the modules all of whose parameters `frozen` (a bool tree like
  `params`) freezes, e.g. {'block1/bn'}: where `transfer.bn='frozen_layers'` keeps a
  BatchNorm in inference mode."""
  by_module: dict[str, list[bool]] = {}
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, _), is_frozen in zip(flat, jax.tree_util.tree_leaves(frozen)):
    by_module.setdefault(path_name(path[:-1]), []).append(bool(is_frozen))
  return frozenset(m for m, f in by_module.items() if all(f))


def trainable_names(params: Any, frozen_regexes: Sequence[str] = ()) -> dict[str, Any]:
  """Which tensors train and which are frozen, with parameter counts, for logging."""
  mask = frozen_mask(params, frozen_regexes)
  flat_mask = jax.tree_util.tree_leaves(mask)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  trainable, frozen, n_train, n_frozen = [], [], 0, 0
  for (path, leaf), is_frozen in zip(flat, flat_mask):
    size = int(np.prod(np.shape(leaf)))
    if is_frozen:
      frozen.append(path_name(path))
      n_frozen += size
    else:
      trainable.append(path_name(path))
      n_train += size
  return {"trainable": trainable, "frozen": frozen, "num_trainable_params": n_train,
          "num_frozen_params": n_frozen}


def describe_trainable(params: Any, frozen_regexes: Sequence[str] = ()) -> str:
  """One log line: 'trainable: N tensors, M params; frozen: K tensors, L params'."""
  t = trainable_names(params, frozen_regexes)
  return (f"trainable: {len(t['trainable'])} tensors, {t['num_trainable_params']} params; "
          f"frozen: {len(t['frozen'])} tensors, {t['num_frozen_params']} params")
