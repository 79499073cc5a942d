"""Train state: params, BN statistics and optimiser state in one pytree that jit can donate."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import optax


@flax.struct.dataclass
class TrainState:
  """What a train step updates; `apply_fn` and `tx` are static, so the leaves are arrays only.

  `batch_stats` is `{}` for models without BatchNorm, so one step function serves every model.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, apply_fn: Callable[..., Any], params: Any, batch_stats: Any,
             tx: optax.GradientTransformation) -> "TrainState":
    """Initialises the optimiser state for `params`; `batch_stats=None` becomes `{}`."""
    batch_stats = {} if batch_stats is None else batch_stats
    return cls(step=jax.numpy.asarray(0, dtype=jax.numpy.int32), params=params,
               batch_stats=batch_stats, opt_state=tx.init(params), apply_fn=apply_fn, tx=tx)

  def apply_gradients(self, grads: Any, **changes: Any) -> "TrainState":
    """One optimiser update; extra fields (e.g. new batch_stats) are replaced via `changes`."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)

  @property
  def variables(self) -> dict[str, Any]:
    """The `variables` dict a Flax `apply` expects (without an empty batch_stats collection)."""
    v = {"params": self.params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    return v
