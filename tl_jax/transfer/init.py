"""Initialise a target network from a source: a tl_jax run or a pretrained weight file.

Seed 000 copies the weights of the feature-extraction layers of a network trained on another
dataset into a new network with a new head (Keras get_weights/set_weights). Here: every variable
of the target whose path (and shape) exists in the source is copied; the head and anything the
source lacks keep their fresh initialisation. What was copied is logged and returned.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

import flax
from flax import serialization
import jax
import numpy as np

from tl_jax import paths
from tl_jax.errors import ConfigError, check_choice
from tl_jax.train import jsonl

VARIABLES_FILE = "model_variables.msgpack"
INIT_KINDS = ("tl_jax", "l2t_resnet32", "efficientnet_lite0", "keras_h5")


def save_variables(workdir: str | os.PathLike, variables: dict[str, Any],
                   meta: dict[str, Any]) -> pathlib.Path:
  """Writes the final variables (msgpack) and what built them (JSON), atomically."""
  path = pathlib.Path(workdir) / VARIABLES_FILE
  tmp = path.with_suffix(".tmp")
  tmp.write_bytes(serialization.msgpack_serialize(jax.device_get(dict(variables))))
  os.replace(tmp, path)
  jsonl.write_json_atomic(pathlib.Path(workdir) / "model.json", meta)
  return path


def load_variables(path: str | os.PathLike, field: str = "transfer.init_from") -> dict[str, Any]:
  """Reads a tl_jax run's variables: `path` is the run's workdir or the .msgpack file."""
  p = paths.resolve(path)
  if p.is_dir():
    p = p / VARIABLES_FILE
  if not p.exists():
    raise ConfigError(field, str(path), hint=f"no tl_jax weights at {p} (train the source run "
                      "first, or point at its workdir)")
  try:
    return serialization.msgpack_restore(p.read_bytes())
  except Exception as e:  # msgpack raises several types on corrupt input
    raise ConfigError(field, str(path), hint=f"corrupt weights file {p}: {e}") from e


def load_source(kind: str, path: str, backbone: Any = None) -> dict[str, Any]:
  """Variables of a source network. `backbone` (a model built with num_classes=None) is passed to
  pretrained loaders so they return exactly its variables."""
  check_choice("transfer.init_kind", kind, INIT_KINDS)
  if kind == "tl_jax":
    return load_variables(path)
  p = paths.resolve(path) if path else None
  if p is not None and not p.exists():
    raise ConfigError("transfer.init_from", path, hint=f"no such file: {p}")
  if kind == "l2t_resnet32":
    from tl_jax.weights.resnet32_l2t import load_resnet32_l2t
    return load_resnet32_l2t(p, model=backbone) if p else load_resnet32_l2t(model=backbone)
  if kind == "efficientnet_lite0":
    from tl_jax.weights.efficientnet_lite0 import load_efficientnet_lite0
    return load_efficientnet_lite0(p, model=backbone)
  from tl_jax.weights import keras_h5
  return keras_h5.load_keras_h5(p, model=backbone)


def _flat(tree: dict[str, Any]) -> dict[tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def graft(target: dict[str, Any], source: dict[str, Any], skip_prefixes: tuple[str, ...] = (),
          ) -> tuple[dict[str, Any], list[str]]:
  """Copies source leaves into target where paths agree; a path below the head whose shape
  differs is an error (never left random).

  Paths are compared per collection ('params', 'batch_stats'); a target whose tree sits under
  'backbone' (tl_jax.transfer.heads.Classifier) is matched against the source's root.
  Returns (new variables, copied path names). Raises when nothing matches (wrong source).
  """
  copied, out = [], {}
  for col, tree in target.items():
    flat_t = _flat(tree)
    flat_s = _flat(source.get(col, {}))
    new = {}
    for path, leaf in flat_t.items():
      name = "/".join(path)
      spath = path[1:] if path[0] == "backbone" and path not in flat_s else path
      src = flat_s.get(spath)
      if src is not None and not name.startswith(skip_prefixes):
        if np.shape(src) != np.shape(leaf):
          raise ConfigError("transfer.init_from", f"{col}/{name} of shape {np.shape(src)}",
                            f"the target's shape {np.shape(leaf)}",
                            hint="the source and target disagree below the head (e.g. RGB "
                            "weights into a 1-channel model: set data.channels=3, or another "
                            "model.kwargs); a layer left random would then be frozen")
        new[path] = jax.numpy.asarray(src, dtype=leaf.dtype)
        copied.append(f"{col}/{name}")
      else:
        new[path] = leaf
    out[col] = flax.traverse_util.unflatten_dict(new)
  if not copied:
    raise ConfigError("transfer.init_from", None, hint="no variable of the source matches the "
                      "target's names and shapes: is it the same architecture?")
  logging.info("initialised %d variables from the source", len(copied))
  return out, copied
