"""The two method families as learners of the one engine (tl_jax.engine.fit).

A learner turns the pieces a method needs (model, optax transformation, masks, augmentation)
into the four things the engine calls:

  init(key, variables) -> state            per seed, from that seed's initial model variables
  step(state, batch, key, consts) -> (state, metrics)   pure; scanned over an epoch's batches
  eval_variables(state) -> {'params', 'batch_stats'}     a field selection (works stacked)
  eval_logits(variables, images) -> logits               inference mode, eval preprocessing

* `SupervisedLearner` - scratch, frozen backbone, each stage of fine-tuning, full fine-tuning,
  BN live or frozen, label smoothing, the `(regex, value)` freeze and LR-multiplier rules (all
  in the optax transformation, tl_jax.train.optim); on cached features it is feature
  extraction.
* `FeatureMatchingLearner` - UFM, L2T-ww, L2T-www (tl_jax.kt.bilevel): the real step, the T
  inner steps and the look-ahead all use the same optax transformation as the supervised family;
  `consts` is the frozen source network's variables.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from tl_jax.kt.bilevel import KnowledgeTransfer
from tl_jax.train import steps
from tl_jax.train.state import TrainState

Preprocess = Callable[[jax.Array], jax.Array]


def _copy(tree: Any) -> Any:
  return jax.tree.map(jnp.array, tree)


def _logits(out: Any) -> jax.Array:
  return out[0] if isinstance(out, tuple) else out


class _Inference:
  """What both families evaluate: `model` in inference mode on `preprocess_eval(images)`."""
  model: Any
  preprocess_eval: Preprocess

  def eval_variables(self, state: Any) -> dict[str, Any]:
    return {"params": state.params, "batch_stats": state.batch_stats}

  def eval_logits(self, variables: dict[str, Any], images: jax.Array) -> jax.Array:
    v = {"params": variables["params"]}
    if jax.tree.leaves(variables.get("batch_stats", {})):
      v["batch_stats"] = variables["batch_stats"]
    return _logits(self.model.apply(v, self.preprocess_eval(images), train=False))


class SupervisedLearner(_Inference):
  """Cross-entropy training of `model` with `tx` (one stage of a transfer strategy)."""

  def __init__(self, model: Any, tx: optax.GradientTransformation,
               preprocess_train: Optional[Callable[[jax.Array, jax.Array], jax.Array]],
               preprocess_eval: Optional[Preprocess], *, label_smoothing: float = 0.0,
               bn_frozen: bool | frozenset[str] = False, trainable: Any = None,
               bn_running_var: str = "biased"):
    self.model, self.tx = model, tx
    self.preprocess_eval = preprocess_eval or steps.default_preprocess
    self._step = steps.make_train_step(model, preprocess_train, label_smoothing=label_smoothing,
                                       bn_frozen=bn_frozen, trainable=trainable,
                                       bn_running_var=bn_running_var, jit=False)

  def init(self, key: jax.Array, variables: dict[str, Any]) -> TrainState:
    del key  # the optimiser state is deterministic
    v = _copy(dict(variables))
    return TrainState.create(self.model.apply, v["params"], v.get("batch_stats", {}), self.tx)

  def step(self, state: TrainState, batch: dict[str, jax.Array], key: jax.Array,
           consts: Any = None):
    del consts
    return self._step(state, batch, key)


class FeatureMatchingLearner(_Inference):
  """UFM / L2T-ww / L2T-www on a target model; `consts` = the source network's variables."""

  def __init__(self, kt: KnowledgeTransfer, preprocess_eval: Optional[Preprocess]):
    self.kt = kt
    self.model = kt.target_model
    self.preprocess_eval = preprocess_eval or steps.default_preprocess

  def init(self, key: jax.Array, variables: dict[str, Any]):
    return self.kt.init(key, variables)

  def step(self, state: Any, batch: dict[str, jax.Array], key: jax.Array, consts: Any):
    return self.kt.iteration(state, batch, key, consts)


class FlatHead:
  """A head on cached [N, 1, 1, D] features with the model interface ((logits, features))."""

  def __init__(self, head: Any):
    self.head = head

  def init(self, rngs: Any, x: jax.Array, train: bool = False):
    return self.head.init(rngs, x.reshape((x.shape[0], -1)), train=train)

  def apply(self, variables: Any, x: jax.Array, train: bool = False, **kw: Any):
    out = self.head.apply(variables, x.reshape((x.shape[0], -1)), train=train, **kw)
    if isinstance(out, tuple):  # mutable collections requested
      logits, mutated = out
      return (logits, {}), mutated
    return out, {}


__all__ = ["FeatureMatchingLearner", "FlatHead", "SupervisedLearner"]
