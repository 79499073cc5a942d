"""Shared helpers of the pretrained-weight loaders: file resolution, PyTorch state-dict reading,
nested-dict flatten/unflatten, variable templates and the strict PyTorch-layout mapping.

The loader submodules import from here directly; `tl_jax.weights` re-exports these names.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from tl_jax import paths
from tl_jax.errors import ConfigError

Variables = dict[str, Any]

# (collection, flax leaf name) -> PyTorch state_dict leaf name
TORCH_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
              ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
              ("batch_stats", "var"): "running_var"}
TORCH_IGNORED_SUFFIXES = ("num_batches_tracked",)


def resolve_existing(path: str | os.PathLike, field: str = "weights.path") -> pathlib.Path:
  """`paths.resolve` plus a ConfigError naming the path when the file is missing."""
  p = paths.resolve(path)
  if not p.is_file():
    raise ConfigError(field, str(p), hint="file not found")
  return p


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A PyTorch-named state dict from `.npz` (no torch needed) or `.pth`/`.pth.tar` (torch)."""
  p = resolve_existing(path)
  if p.suffix == ".npz":
    try:
      with np.load(p, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
      raise ConfigError("weights.path", str(p), hint=f"corrupt or unreadable npz: {e}") from e
  try:
    import torch
  except ImportError as e:
    raise ConfigError("weights.path", str(p), hint="reading a .pth needs torch; use the .npz") from e
  try:
    # weights_only: torch's restricted unpickler (tensors, containers, numbers, strings); a file
    # that would run code on load is refused instead of executed
    obj = torch.load(p, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types (RuntimeError, UnpicklingError, EOFError...)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError("weights.path", str(p), hint=f"corrupt, unreadable or unsafe torch file "
                      f"(loaded with weights_only=True): {first}") from e
  if isinstance(obj, Mapping) and "state_dict" in obj:
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ConfigError("weights.path", str(p), hint="no state_dict in this torch file")
  out = {}
  for k, v in obj.items():
    k = k[len("module."):] if k.startswith("module.") else k
    out[k] = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
  return out


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping) or hasattr(v, "items"):
      flat.update(flatten(v, prefix + (k,)))
    else:
      flat[prefix + (k,)] = v
  return flat


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def template_variables(model, input_shape: Iterable[int]) -> Variables:
  """Shapes of `model`'s variables (no compute) as a nested dict of ShapeDtypeStructs."""
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), np.float32)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros(x.shape, np.float32),
                                        train=False))
  return {k: dict(c) if hasattr(c, "items") else c for k, c in v.items()}


def torch_layout_to_flax(a: np.ndarray, target_ndim: int) -> np.ndarray:
  """OIHW (incl. depthwise C,1,k,k) -> HWIO; Linear [out, in] -> [in, out]; vectors unchanged."""
  if a.ndim == 4 and target_ndim == 4:
    return a.transpose(2, 3, 1, 0)
  if a.ndim == 2 and target_ndim == 2:
    return a.T
  return a


def assign_from_torch(template: Mapping[str, Any], state: Mapping[str, np.ndarray],
                      key_fn: Callable[[tuple[str, ...]], str], source: str,
                      drop_prefixes: tuple[str, ...] = ()) -> Variables:
  """Fills every leaf of `template` ({'params', 'batch_stats'}) from a PyTorch state dict.

  `key_fn(module_path) -> torch module name`. Strict: a missing source key, an unused source key
  (other than num_batches_tracked and those under `drop_prefixes`) or a shape mismatch raises
  ConfigError naming them.
  """
  out, used, missing, bad_shape = {}, set(), [], []
  for col in ("params", "batch_stats"):
    if col not in template:
      continue
    for path, leaf in flatten(template[col]).items():
      tkey = key_fn(path[:-1]) + "." + TORCH_LEAF[(col, path[-1])]
      if tkey not in state:
        missing.append(tkey)
        continue
      arr = torch_layout_to_flax(np.asarray(state[tkey], np.float32), len(leaf.shape))
      if tuple(arr.shape) != tuple(leaf.shape):
        bad_shape.append(f"{tkey} {tuple(state[tkey].shape)} -> {'/'.join(path)} {leaf.shape}")
        continue
      used.add(tkey)
      out[(col,) + path] = arr
  extra = sorted(k for k in state if k not in used and not k.endswith(TORCH_IGNORED_SUFFIXES)
                 and not k.startswith(drop_prefixes))
  if missing:
    raise ConfigError("weights.missing_keys", missing[:10], hint=f"{len(missing)} keys absent "
                      f"from {source}")
  if bad_shape:
    raise ConfigError("weights.shape", bad_shape[:10], hint=f"shape mismatch with {source}")
  if extra:
    raise ConfigError("weights.extra_keys", extra[:10], hint=f"{len(extra)} keys of {source} "
                      "have no tl_jax variable")
  return unflatten(out)
