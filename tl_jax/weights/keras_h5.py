"""Keras ResNet-50 / VGG-16 weights (`.h5`) into tl_jax's Keras-layout models, read with h5py.

Two layouts are read (no Keras needed):
- legacy Keras-2 `.h5` (the downloadable ImageNet files, `save_weights('x.h5')` in Keras 2, and
  Keras 3's legacy writer): root attr `layer_names`; per layer a group with attr `weight_names`
  ('conv1_conv/kernel:0' in Keras 2, 'conv1_conv/kernel' in Keras 3) whose datasets sit at
  `<layer>/<weight_name>`. A full-model file nests this under `model_weights/`.
- Keras 3 `save_weights('x.weights.h5')`: `layers/<class-based key>/vars/{0,1,...}` with the layer
  name in the `vars` group's `name` attribute; variables in creation order (Conv/Dense: kernel,
  bias; BatchNormalization: gamma, beta, moving_mean, moving_variance).
- Keras 3 whole-model `model.save('x.keras')`: a zip archive whose `model.weights.h5` has the
  Keras 3 layout above (read from memory; config.json is not needed).
Keras kernels are already HWIO / [in, out]; BN gamma/beta -> params scale/bias, moving_mean /
moving_variance -> batch_stats mean/var. tl_jax's `resnet50`/`vgg16` use the Keras layer names.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any

import numpy as np

from tl_jax.errors import ConfigError
from tl_jax.weights.common import Variables, flatten, resolve_existing, template_variables, \
    unflatten

KERAS_TO_FLAX = {"kernel": ("params", "kernel"), "bias": ("params", "bias"),
                 "gamma": ("params", "scale"), "beta": ("params", "bias"),
                 "moving_mean": ("batch_stats", "mean"),
                 "moving_variance": ("batch_stats", "var")}
BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")
DENSE_CONV_VARS = ("kernel", "bias")
# Layers a with-top file has that an include_top=False model lacks (dropped on purpose).
TOP_LAYERS = ("fc1", "fc2", "predictions", "flatten")


def _decode(s: Any) -> str:
  return s.decode("utf8") if isinstance(s, bytes) else str(s)


def _read_legacy(g) -> dict[str, dict[str, np.ndarray]]:
  out = {}
  for layer in (_decode(n) for n in g.attrs["layer_names"]):
    lg = g[layer]
    names = [_decode(n) for n in lg.attrs.get("weight_names", [])]
    if names:
      out[layer] = {n.split("/")[-1].split(":")[0]: np.asarray(lg[n]) for n in names}
  return out


def _read_keras3(g) -> dict[str, dict[str, np.ndarray]]:
  out: dict[str, dict[str, np.ndarray]] = {}

  def visit(group, key):
    if "vars" in group and len(group["vars"]):
      v = group["vars"]
      name = _decode(v.attrs.get("name", key))
      arrays = [np.asarray(v[str(i)]) for i in range(len(v))]
      kinds = BN_VARS if "normalization" in key else DENSE_CONV_VARS
      if "normalization" in key and len(arrays) != 4:
        raise ConfigError("weights.keras_layer", name,
                          hint="BatchNormalization without scale/center is not supported")
      if len(arrays) > len(kinds):
        raise ConfigError("weights.keras_layer", name, hint=f"{len(arrays)} variables")
      out[name] = dict(zip(kinds, arrays))
    if "layers" in group:
      for k in group["layers"]:
        visit(group["layers"][k], k)

  visit(g, "")
  return out


def read_keras_h5(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """{layer_name: {'kernel'|'bias'|'gamma'|...: array}} from either Keras weight layout."""
  import h5py
  p = resolve_existing(path)
  source: Any = p
  if zipfile.is_zipfile(p):  # a `.keras` archive: its weights are model.weights.h5
    try:
      with zipfile.ZipFile(p) as z:
        source = io.BytesIO(z.read("model.weights.h5"))
    except KeyError:
      raise ConfigError("weights.path", str(p), hint="a zip without model.weights.h5: not a "
                        "Keras 3 .keras archive") from None
    except zipfile.BadZipFile as e:
      raise ConfigError("weights.path", str(p), hint=f"corrupt .keras archive: {e}") from e
  try:
    with h5py.File(source, "r") as f:
      g = f["model_weights"] if "model_weights" in f else f
      if "layer_names" in g.attrs:
        return _read_legacy(g)
      if "layers" in g:
        return _read_keras3(g)
  except ConfigError:
    raise
  except Exception as e:  # h5py raises OSError/KeyError/ValueError on damaged files
    raise ConfigError("weights.path", str(p), hint=f"corrupt or unreadable h5: {e}") from e
  raise ConfigError("weights.path", str(p), hint="not a Keras weights file (no layer_names / layers)")


def load_keras_h5(path: str | os.PathLike, model,
                  input_shape: tuple[int, int, int] | None = None) -> Variables:
  """{'params', 'batch_stats'} for a Keras-layout tl_jax model (`resnet50`, `vgg16`).

  `input_shape` (H, W, C) only matters for VGG-16 with its top (fc1's size); default 224x224x3.
  A model with `num_classes=None` ignores the file's top layers (fc1, fc2, predictions); anything
  else missing, extra or of another shape raises ConfigError.
  """
  layers = read_keras_h5(path)
  template = template_variables(model, input_shape or (224, 224, 3))
  flat_t = {}
  for col in ("params", "batch_stats"):
    for path_, leaf in flatten(template.get(col, {})).items():
      flat_t[(col,) + path_] = leaf
  out, used, missing, bad = {}, set(), [], []
  for layer, vars_ in layers.items():
    for vname, arr in vars_.items():
      if vname not in KERAS_TO_FLAX:
        continue
      col, leaf = KERAS_TO_FLAX[vname]
      key = (col, layer, leaf)
      if key not in flat_t:
        continue
      if tuple(arr.shape) != tuple(flat_t[key].shape):
        bad.append(f"{layer}/{vname} {arr.shape} vs {flat_t[key].shape}")
        continue
      out[key] = np.asarray(arr, np.float32)
      used.add((layer, vname))
  missing = ["/".join(k) for k in flat_t if k not in out]
  drop_top = getattr(model, "num_classes", 0) is None
  extra = [f"{layer}/{v}" for layer, vs in layers.items() for v in vs
           if (layer, v) not in used and not (drop_top and layer in TOP_LAYERS)]
  if bad:
    raise ConfigError("weights.shape", bad[:10], hint=f"shape mismatch with {path} (for VGG-16 "
                      "with top pass the input_shape the file was built for)")
  if missing:
    raise ConfigError("weights.missing_keys", missing[:10],
                      hint=f"{len(missing)} tl_jax variables not in {path}")
  if extra:
    raise ConfigError("weights.extra_keys", extra[:10],
                      hint=f"{len(extra)} arrays of {path} have no tl_jax variable")
  return unflatten(out)
