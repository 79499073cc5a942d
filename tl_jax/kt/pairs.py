"""Layer pairs (m, n) for feature matching: source feature m -> target feature n.

The reference CLI writes pairs as 'm-n' with m / n indices into the source / target feature lists
(e.g. '4-0,4-1,...,14-4' = the 3 ResNet-32 stage outputs x the 5 VGG-9 pre-pool maps). We accept
indices or feature names on either side, and resolve each pair once against the shapes the models
actually produce (via `jax.eval_shape`, no FLOPs), so the losses and meta-networks get static
channel counts and map sizes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from tl_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PairSpec:
  """One matched pair with the static shapes the losses need (NHWC, batch dim dropped)."""
  source: str
  target: str
  source_channels: int
  target_channels: int
  source_hw: tuple[int, int]
  target_hw: tuple[int, int]

  @property
  def key(self) -> str:
    """Name used for this pair's regressor / meta-net params and metrics."""
    return f"{self.source}__{self.target}"


def _natural_key(s: str) -> list:
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def feature_shapes(model: Any, variables: Mapping[str, Any],
                   image_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
  """Returns {feature name: shape without batch} in forward order, at no compute cost.

  jit / eval_shape hand dicts back with sorted keys, so forward order is recovered by natural
  sort of the names ('block2' < 'block10'), the naming rule of tl_jax.models.
  """
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return {k: tuple(feats[k].shape[1:]) for k in sorted(feats, key=_natural_key)}


def _lookup(side: str, token: str, names: Sequence[str]) -> str:
  token = token.strip()
  if token in names:
    return token
  try:
    idx = int(token)
  except ValueError:
    idx = None
  if idx is not None and 0 <= idx < len(names):
    return names[idx]
  allowed = [f"{i} ({n})" for i, n in enumerate(names)]
  raise ConfigError(f"kt.pairs.{side}", token, allowed)


def _split(item: str, source_names: Sequence[str], target_names: Sequence[str]) -> tuple[str, str]:
  """Splits 'm-n'; names may themselves contain '-', so try every dash position."""
  parts = item.split("-")
  if len(parts) < 2:
    raise ConfigError("kt.pairs", item, "'m-n' with m a source and n a target feature index or name")
  for cut in range(1, len(parts)):
    m, n = "-".join(parts[:cut]), "-".join(parts[cut:])
    try:
      return _lookup("source", m, source_names), _lookup("target", n, target_names)
    except ConfigError:
      continue
  # No split resolved: re-raise the error of the plain first-dash split (names the allowed values).
  m, n = parts[0], "-".join(parts[1:])
  return _lookup("source", m, source_names), _lookup("target", n, target_names)


def parse_pairs(spec: str | Sequence[str], source_shapes: Mapping[str, Sequence[int]],
                target_shapes: Mapping[str, Sequence[int]]) -> tuple[PairSpec, ...]:
  """Parses 'm-n,m-n,...' (or a list of 'm-n') against the feature shapes of both models.

  `source_shapes` / `target_shapes`: {name: (H, W, C)} in forward order (see `feature_shapes`).
  'all' pairs every source feature with every target feature. Unknown pairs raise ConfigError
  naming the allowed indices/names; duplicates are rejected (they would double a pair's weight).
  """
  source_names, target_names = list(source_shapes), list(target_shapes)
  if isinstance(spec, str):
    items = [s for s in spec.replace(" ", "").split(",") if s]
  else:
    items = [str(s).strip() for s in spec]
  if items == ["all"]:
    items = [f"{m}-{n}" for m in range(len(source_names)) for n in range(len(target_names))]
  if not items:
    raise ConfigError("kt.pairs", spec, "a non-empty list of 'm-n' pairs")
  out, seen = [], set()
  for item in items:
    m, n = _split(item, source_names, target_names)
    if (m, n) in seen:
      raise ConfigError("kt.pairs", item, "each pair at most once")
    seen.add((m, n))
    s_shape, t_shape = tuple(source_shapes[m]), tuple(target_shapes[n])
    for side, shp in (("source", s_shape), ("target", t_shape)):
      if len(shp) != 3:
        raise ConfigError(f"kt.pairs.{side}_shape", shp, "(H, W, C) feature maps")
    out.append(PairSpec(source=m, target=n, source_channels=int(s_shape[2]),
                        target_channels=int(t_shape[2]), source_hw=(int(s_shape[0]), int(s_shape[1])),
                        target_hw=(int(t_shape[0]), int(t_shape[1]))))
  return tuple(out)


def all_to_all(source_idx: Sequence[int], target_idx: Sequence[int]) -> str:
  """'m-n' string pairing each listed source index with each listed target index."""
  return ",".join(f"{m}-{n}" for m in source_idx for n in target_idx)


def pairs_for_models(spec: str | Sequence[str], source_model: Any, source_variables: Mapping[str, Any],
                     target_model: Any, target_variables: Mapping[str, Any],
                     image_shape: Sequence[int]) -> tuple[PairSpec, ...]:
  """`parse_pairs` against the feature shapes both models produce for `image_shape` (H, W, C)."""
  return parse_pairs(spec, feature_shapes(source_model, source_variables, image_shape),
                     feature_shapes(target_model, target_variables, image_shape))
