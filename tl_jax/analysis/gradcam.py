"""Grad-CAM (Selvaraju et al., 2017) for any tl_jax model and any named feature map.

Why a jaxpr rewrite: tl_jax models return `(logits, features)` and do not mark their intermediate
maps for gradients (`Module.perturb` would need every model to cooperate, and many features are
plain `relu`/`max_pool` results, not sub-module outputs that `nn.intercept_methods` could see).
So the forward pass is traced once to a jaxpr, the variable that the model returns as
`features[name]` is located, and the jaxpr is re-evaluated with a zero `delta` added right where
that variable is produced. The VJP w.r.t. `delta` is then exactly d(class score)/d(feature map),
for every model, batched and jitted (eval mode, so images do not interact and the gradient of the
summed per-image scores is the per-image gradient).

Heatmap = relu(sum_c mean_hw(dS/dA_c) * A_c), bilinearly upsampled to the image size and divided
by its per-image maximum (so it lies in [0, 1]; an all-zero map stays zero).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from tl_jax.errors import ConfigError

__all__ = [
    "feature_gradients", "make_gradcam_fn", "gradcam", "cam_from", "overlay", "save_overlays",
    "GradCamEntry", "gradcam_panel",
]


def _bind(eqn, invals):
  params = eqn.primitive.get_bind_params(eqn.params)
  if isinstance(params, tuple):  # older jax: (subfuns, params)
    subfuns, params = params
    return eqn.primitive.bind(*subfuns, *invals, **params)
  return eqn.primitive.bind(*invals, **params)


def _eval_with_delta(jaxpr, consts, args, target, delta):
  """Evaluates `jaxpr` like `jax.core.eval_jaxpr`, adding `delta` to variable `target`."""
  env: dict[Any, Any] = {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  def write(v, val):
    if v is target:
      val = val + delta
    env[v] = val

  for v, c in zip(jaxpr.constvars, consts):
    write(v, c)
  for v, a in zip(jaxpr.invars, args):
    write(v, a)
  for eqn in jaxpr.eqns:
    ans = _bind(eqn, [read(v) for v in eqn.invars])
    if eqn.primitive.multiple_results:
      for v, a in zip(eqn.outvars, ans):
        write(v, a)
    else:
      write(eqn.outvars[0], ans)
  return [read(v) for v in jaxpr.outvars]


def _strip(variables):
  """Drops `perturbations` (batch-shaped debug variables some models create at init)."""
  if isinstance(variables, dict) or hasattr(variables, "items"):
    return {k: v for k, v in variables.items() if k != "perturbations"}
  return variables


def _apply_fn(model) -> Callable:
  return lambda variables, x: model.apply(variables, x, train=False)


def _traced(model, variables, images_shape, dtype=jnp.float32):
  """Traces the eval forward; returns (closed jaxpr, out treedef, feature names -> leaf index)."""
  spec_v = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), variables)
  spec_x = jax.ShapeDtypeStruct(tuple(images_shape), dtype)
  closed, out_shape = jax.make_jaxpr(_apply_fn(model), return_shape=True)(spec_v, spec_x)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(out_shape)
  if not (isinstance(out_shape, tuple) and len(out_shape) == 2 and isinstance(out_shape[1], dict)):
    raise ConfigError("gradcam.model", type(model).__name__,
                      hint="model.apply must return (logits, features_dict)")
  index = {}
  for i, (path, _) in enumerate(leaves):
    if len(path) == 2 and getattr(path[0], "idx", None) == 1:
      index[path[1].key] = i
  return closed, treedef, index


def feature_gradients(model, variables, images: jax.Array, feature: str,
                      class_idx: jax.Array | int | None = None):
  """Returns (A, dS/dA, logits, class_idx) for the map `features[feature]`.

  `class_idx` None means the predicted class of each image. Not jitted; `make_gradcam_fn` jits it.
  """
  variables = _strip(variables)
  closed, treedef, index = _traced(model, variables, images.shape, images.dtype)
  if feature not in index:
    raise ConfigError("gradcam.feature", feature, sorted(index))
  jaxpr = closed.jaxpr
  out_var = jaxpr.outvars[index[feature]]
  logits_pos = 0
  flat_args = jax.tree.leaves(variables) + [images]
  if isinstance(out_var, jcore.Literal):
    raise ConfigError("gradcam.feature", feature, hint="this feature map is a constant")
  if out_var in jaxpr.invars and jaxpr.invars.index(out_var) < len(flat_args) - 1:
    raise ConfigError("gradcam.feature", feature, hint="this feature map is a model variable")
  shape = out_var.aval.shape
  delta0 = jnp.zeros(shape, out_var.aval.dtype)

  def run(delta):
    outs = _eval_with_delta(jaxpr, closed.consts, flat_args, out_var, delta)
    return outs[logits_pos], outs[index[feature]]

  (logits, act), vjp = jax.vjp(run, delta0)
  if logits.ndim != 2:
    raise ConfigError("gradcam.logits", logits.shape, hint="expected [batch, classes] logits")
  if class_idx is None:
    cls = jnp.argmax(logits, axis=-1)
  else:
    cls = jnp.broadcast_to(jnp.asarray(class_idx, jnp.int32), logits.shape[:1])
  onehot = jax.nn.one_hot(cls, logits.shape[-1], dtype=logits.dtype)
  (grad,) = vjp((onehot, jnp.zeros_like(act)))
  return act, grad, logits, cls


def cam_from(act: jax.Array, grad: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """relu(sum_c mean_hw(grad_c) A_c), bilinear upsampling to `out_hw`, per-image max -> 1."""
  if act.ndim != 4:
    raise ConfigError("gradcam.feature_rank", act.shape, hint="Grad-CAM needs an NHWC map")
  weights = jnp.mean(grad, axis=(1, 2), keepdims=True)
  cam = jax.nn.relu(jnp.sum(weights * act, axis=-1))
  cam = jax.image.resize(cam, (cam.shape[0],) + tuple(out_hw), "bilinear")
  cam = jnp.maximum(cam, 0.0)
  peak = jnp.max(cam, axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)


def make_gradcam_fn(model, variables, images_shape: Sequence[int], feature: str,
                    out_hw: tuple[int, int] | None = None):
  """A jitted `fn(variables, images, class_idx_or_None) -> (heatmaps [B,H,W], logits, classes)`.

  `class_idx` may be None (predicted class), an int, or an int array [B].
  """
  images_shape = tuple(images_shape)
  out_hw = tuple(out_hw) if out_hw is not None else images_shape[1:3]
  variables = _strip(variables)
  _, _, index = _traced(model, variables, images_shape)
  if feature not in index:
    raise ConfigError("gradcam.feature", feature, sorted(index))

  @jax.jit
  def fn(variables, images, class_idx=None):
    variables = _strip(variables)
    act, grad, logits, cls = feature_gradients(model, variables, images, feature, class_idx)
    return cam_from(act, grad, out_hw), logits, cls

  return fn


_FN_CACHE: dict[tuple, Callable] = {}


def _cached_fn(model, variables, shape, feature, out_hw):
  """Reuses compiled Grad-CAM functions across calls (panels call the same model repeatedly)."""
  try:
    key = (model, shape, feature, None if out_hw is None else tuple(out_hw))
    hash(key)
  except TypeError:
    return make_gradcam_fn(model, variables, shape, feature, out_hw)
  if key not in _FN_CACHE:
    if len(_FN_CACHE) > 32:
      _FN_CACHE.clear()
    _FN_CACHE[key] = make_gradcam_fn(model, variables, shape, feature, out_hw)
  return _FN_CACHE[key]


def gradcam(model, variables, images, feature: str, class_idx=None,
            preprocess: Callable | None = None, batch_size: int = 32,
            out_hw: tuple[int, int] | None = None) -> np.ndarray:
  """Heatmaps [N,H,W] in [0,1] for `images` (uint8 or float NHWC), batched and jitted.

  `preprocess` maps a batch of raw images to model input (e.g. resize + normalise).
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ConfigError("gradcam.images", images.shape, hint="expected NHWC")
  n = images.shape[0]
  prep = preprocess or (lambda b: jnp.asarray(b, jnp.float32))
  cls_all = None if class_idx is None else np.broadcast_to(np.asarray(class_idx, np.int32), (n,))
  out = []
  for s in range(0, n, batch_size):
    batch = prep(images[s:s + batch_size])
    # pad the last batch so one compiled function serves every batch
    b = batch.shape[0]
    if b < batch_size and n > batch_size:
      batch = jnp.concatenate([batch, jnp.repeat(batch[-1:], batch_size - b, 0)], 0)
    fn = _cached_fn(model, variables, tuple(batch.shape), feature, out_hw)
    cls = None
    if cls_all is not None:
      cls = np.zeros(batch.shape[0], np.int32)
      cls[:b] = cls_all[s:s + b]
      cls = jnp.asarray(cls)
    heat, _, _ = fn(_strip(variables), batch, cls)
    out.append(np.asarray(heat[:b]))
  return np.concatenate(out, 0)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """RGB float [H,W,3] in [0,1]: jet-coloured heat blended onto the image (resized if needed)."""
  import matplotlib
  img = np.asarray(image, np.float32)
  if img.max() > 1.0 + 1e-6:
    img = img / 255.0
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, -1)
  heat = np.asarray(heat, np.float32)
  if heat.shape != img.shape[:2]:
    heat = np.asarray(jax.image.resize(jnp.asarray(heat), img.shape[:2], "bilinear"))
  rgb = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
  return np.clip((1 - alpha) * img[..., :3] + alpha * rgb, 0, 1)


def save_overlays(out_dir: str | os.PathLike, images: np.ndarray, heatmaps: np.ndarray,
                  prefix: str = "gradcam", alpha: float = 0.45) -> list[str]:
  """Writes one overlay PNG per image; returns the paths."""
  import matplotlib.pyplot as plt
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i, (img, h) in enumerate(zip(images, heatmaps)):
    p = os.path.join(os.fspath(out_dir), f"{prefix}_{i:03d}.png")
    plt.imsave(p, overlay(img, h, alpha))
    paths.append(p)
  return paths


@dataclasses.dataclass
class GradCamEntry:
  """One column of a panel: a model, its variables, the map to explain and its input pipeline."""
  name: str
  model: Any
  variables: Any
  feature: str
  preprocess: Callable | None = None
  class_names: Sequence[str] | None = None


def gradcam_panel(entries: Sequence[GradCamEntry], images: np.ndarray, path: str | os.PathLike,
                  class_idx: Sequence[int] | None = None, alpha: float = 0.45,
                  batch_size: int = 16, labels: Sequence[int] | None = None,
                  class_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """A rows=images x cols=(image, model_1, ..., model_k) PNG; returns {name: heatmaps}.
  With `labels` the image column shows each image's true class and every model's title says
  whether its prediction is right (✓) or wrong (✗)."""
  import matplotlib.pyplot as plt
  fig, heats = panel_figure(entries, images, class_idx, alpha, batch_size, labels, class_names)
  os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return heats


def panel_figure(entries: Sequence[GradCamEntry], images: np.ndarray,
                 class_idx: Sequence[int] | None = None, alpha: float = 0.45,
                 batch_size: int = 16, labels: Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None) -> tuple[Any, dict[str, np.ndarray]]:
  """(matplotlib figure, {name: heatmaps}) of `gradcam_panel`, not saved."""
  import matplotlib
  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt
  images = np.asarray(images)
  n, k = images.shape[0], len(entries)
  heats, preds = {}, {}
  for e in entries:
    prep = e.preprocess or (lambda b: jnp.asarray(b, jnp.float32))
    heats[e.name] = gradcam(e.model, e.variables, images, e.feature, class_idx, prep, batch_size)
    logits, _ = e.model.apply(_strip(e.variables), prep(images), train=False)
    preds[e.name] = np.asarray(jnp.argmax(logits, -1))
  fig, axes = plt.subplots(n, k + 1, figsize=(2.0 * (k + 1), 2.0 * n), squeeze=False)
  for i in range(n):
    img = images[i]
    axes[i, 0].imshow(img[..., 0] if img.shape[-1] == 1 else img,
                      cmap="gray" if img.shape[-1] == 1 else None)
    names = class_names or (entries[0].class_names if entries else None)
    true = None if labels is None else int(labels[i])
    head = "image\n" if i == 0 else ""
    if true is not None:
      head += f"true {names[true] if names is not None else true}"[:28]
    axes[i, 0].set_title(head, fontsize=7)
    for j, e in enumerate(entries):
      axes[i, j + 1].imshow(overlay(images[i], heats[e.name][i], alpha))
      p = int(preds[e.name][i])
      label = e.class_names[p] if e.class_names is not None else str(p)
      mark = "" if true is None else (" \u2713" if p == true else " \u2717")
      axes[i, j + 1].set_title((f"{e.name}\n" if i == 0 else "") + f"pred {label}"[:26] + mark,
                               fontsize=7)
  for ax in axes.ravel():
    ax.axis("off")
  fig.tight_layout()
  return fig, heats
