"""Jitted train and eval steps: augmentation, BN statistics and loss in one XLA program."""

from __future__ import annotations

from typing import Any, Callable, Collection, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from tl_jax.models.layers import batch_norm_mask, bn_running_var as bn_var_context, frozen_batch_norm

Batch = dict[str, jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def default_preprocess(images: jax.Array) -> jax.Array:
  """uint8 -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
  """Per-example softmax cross-entropy on integer labels, optionally with label smoothing."""

  def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
    n = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, n, dtype=logits.dtype)
    if label_smoothing:
      onehot = optax.smooth_labels(onehot, label_smoothing)
    return optax.softmax_cross_entropy(logits, onehot)

  return loss_fn


def _mask(batch: Batch) -> jax.Array:
  if "mask" in batch:
    return batch["mask"].astype(jnp.float32)
  return jnp.ones(batch["label"].shape[0], jnp.float32)


def _split_output(out: Any) -> tuple[jax.Array, Any]:
  """Models return (logits, features); plain-logit modules are accepted too."""
  if isinstance(out, tuple) and len(out) == 2:
    return out
  return out, {}


def make_train_step(model: Any, preprocess_train: Optional[Callable[[jax.Array, jax.Array],
                                                                    jax.Array]] = None,
                    loss_fn: Optional[LossFn] = None,
                    extra_loss: Optional[Callable[[Any, dict[str, Any]], jax.Array]] = None,
                    *, label_smoothing: float = 0.0,
                    bn_frozen: bool | Collection[str] = False,
                    trainable: Any = None, bn_running_var: str = "biased",
                    jit: bool = True) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
  """Returns `train_step(state, batch, key) -> (state, metrics)`, jitted with the state donated.

  - `preprocess_train(key, uint8 images) -> float32 images` runs inside the step (augmentation on
    device); default: scale to [0, 1].
  - `loss_fn(logits, labels) -> per-example loss`; default cross-entropy with `label_smoothing`.
    A 'mask' in the batch (1 real, 0 padding) weights the mean and restricts BatchNorm's batch
    statistics to the real rows (`tl_jax.models.layers.batch_norm_mask`), so a padded batch
    gives the loss, gradients and BN statistics of its real rows alone.
  - `extra_loss(params, aux) -> scalar` is added to the loss, aux = {logits, features, labels,
    images, mask} (for L2-SP, feature matching, ...).
  - `bn_frozen=True` runs every BatchNorm in inference mode (it uses and keeps its running
    statistics; `tl_jax.models.layers.frozen_batch_norm`) while dropout stays on. Models with
    their own `nn.BatchNorm` layers fall back to `train=False` (dropout off too). A collection
    of '/'-joined module paths freezes only the BatchNorms there (`frozen_bn_modules`: those
    whose parameters `trainable` freezes; `transfer.bn='frozen_layers'`).
  - `bn_running_var`: 'biased' (flax) or 'unbiased' (PyTorch) running-variance update
    (`tl_jax.models.layers.bn_running_var`).
  - `trainable`: a bool tree like the params (False = frozen). Frozen gradients are replaced by
    zeros before anything reads them, so XLA drops the backward pass below the lowest trainable
    layer (a frozen backbone then costs a forward pass, not a full backward).
  - Metrics: loss (total), ce_loss, accuracy, count, grad_norm, nonfinite (1.0 if the loss or
    gradients are NaN/inf; the update is then skipped so the state stays finite and the loop can
    raise `NonFiniteLossError`).
  """
  preprocess = preprocess_train
  loss_fn = loss_fn or cross_entropy(label_smoothing)
  all_bn_frozen = bn_frozen is True
  frozen_bn_paths = frozenset() if isinstance(bn_frozen, bool) else frozenset(bn_frozen)

  def train_step(state, batch: Batch, key: jax.Array):
    # `key` is used as given: the engine folds it with the seed's global step
    aug_key, dropout_key = jax.random.split(key)
    images = batch["image"]
    x = preprocess(aug_key, images) if preprocess is not None else default_preprocess(images)
    labels = batch["label"]
    mask = _mask(batch)
    denom = jnp.maximum(mask.sum(), 1.0)
    has_bn = bool(jax.tree.leaves(state.batch_stats))
    bn_mask = batch.get("mask")

    def compute_loss(params):
      with batch_norm_mask(bn_mask), bn_var_context(bn_running_var):
        return _compute_loss(params)

    def _compute_loss(params):
      variables = {"params": params}
      if has_bn:
        variables["batch_stats"] = state.batch_stats
      if all_bn_frozen or not has_bn:
        try:  # tl_jax's BatchNorms in inference mode, dropout still on
          with frozen_batch_norm(all_bn_frozen):
            out = model.apply(variables, x, train=True, rngs={"dropout": dropout_key})
        except flax.errors.ModifyScopeVariableError:
          # a model with its own nn.BatchNorm (not tl_jax.models.layers.batch_norm) tried to
          # update its statistics: freeze them the only way it allows, train=False (no dropout)
          out = model.apply(variables, x, train=False, rngs={"dropout": dropout_key})
        new_bs = state.batch_stats
      else:  # the BatchNorms at `bn_frozen` paths (if any) keep their statistics
        with frozen_batch_norm(frozen_bn_paths):
          out, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": dropout_key})
        new_bs = mutated["batch_stats"]
      logits, features = _split_output(out)
      per_ex = loss_fn(logits, labels)
      ce = (per_ex * mask).sum() / denom
      total = ce
      if extra_loss is not None:
        total = total + extra_loss(params, {"logits": logits, "features": features,
                                            "labels": labels, "images": x, "mask": mask})
      return total, (ce, logits, new_bs)

    (loss, (ce, logits, new_bs)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        state.params)
    if trainable is not None:
      grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.apply_gradients(grads, batch_stats=new_bs)
    # Skip the update on a non-finite loss: the loop raises, and the state stays usable.
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    correct = ((jnp.argmax(logits, -1) == labels) * mask).sum()
    metrics = {"loss": loss, "ce_loss": ce, "accuracy": correct / denom, "count": mask.sum(),
               "grad_norm": grad_norm, "nonfinite": 1.0 - finite.astype(jnp.float32)}
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=0) if jit else train_step


def make_eval_step(model: Any, preprocess_eval: Optional[Callable[[jax.Array], jax.Array]] = None,
                   loss_fn: Optional[LossFn] = None, *,
                   jit: bool = True) -> Callable[[Any, Batch], dict[str, jax.Array]]:
  """Returns `eval_step(state, batch) -> sums` with BN in inference mode.

  Output: loss_sum, correct, count (masked sums, so a padded last batch counts only real
  examples) and per-example `pred` (int32) and `mask` for confusion matrices. `state` needs
  `.params` and `.batch_stats`.
  """
  loss_fn = loss_fn or cross_entropy(0.0)

  def eval_step(state, batch: Batch):
    images = batch["image"]
    x = preprocess_eval(images) if preprocess_eval is not None else default_preprocess(images)
    variables = {"params": state.params}
    if jax.tree.leaves(state.batch_stats):
      variables["batch_stats"] = state.batch_stats
    logits, _ = _split_output(model.apply(variables, x, train=False))
    labels = batch["label"]
    mask = _mask(batch)
    pred = jnp.argmax(logits, -1).astype(jnp.int32)
    per_ex = loss_fn(logits, labels)
    per_ex = jnp.where(mask > 0, per_ex, 0.0)  # padding may hold garbage labels
    return {"loss_sum": (per_ex * mask).sum(), "correct": ((pred == labels) * mask).sum(),
            "count": mask.sum(), "pred": pred, "mask": mask}

  return jax.jit(eval_step) if jit else eval_step
