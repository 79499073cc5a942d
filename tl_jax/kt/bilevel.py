"""One knowledge-transfer training iteration (scratch / UFM / L2T-ww / L2T-www) as one jitted step.

L2T-ww / L2T-www iteration (thesis Algorithm 1 = the reference `train_l2t_ww.py` + `MetaSGD`):
  1. real step: momentum SGD (coupled weight decay) on θ = target params + regressors, loss
     CE + L_wfm(θ; φ) with the current φ held constant (its φ-gradient is not used);
  2. look-ahead from θ_0 = post-real-step θ and v_0 = its momentum buffer (both stop_gradient):
     T momentum-SGD steps on L_wfm only, then one on CE only, same LR / momentum / decay;
  3. meta loss = CE(θ_{T+1}) on the same augmented batch, BN in train mode;
  4. φ ← Adam(chain(add_decayed_weights, adam)) with the exact meta-gradient: `jax.grad` through
     the unrolled look-ahead (second order). The look-ahead is then discarded: θ stays θ_0.

Why second order is required: θ_{T+1} depends on φ only through the inner gradients
∇_θ L_wfm(θ_t; φ), and CE itself has no φ. Treating those gradients as constants (first-order /
FOMAML) therefore gives a meta-gradient that is identically zero; the signal is the mixed
derivative ∂²L_wfm/∂θ∂φ (plus the θ-Hessian terms that carry it through later steps).

Known deviation from the reference: its `meta_backward` re-runs the matching forward at θ_0 in
train mode and so updates BN running statistics twice per iteration; here only the real step's
forward updates them (look-ahead BN updates are dropped with the look-ahead).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from tl_jax.errors import ConfigError, check_choice
from tl_jax.kt import matching
from tl_jax.kt.meta_nets import MetaNetworks, init_meta_params
from tl_jax.kt.pairs import PairSpec

METHODS = ("scratch", "ufm", "l2t_ww", "l2t_www")
META_METHODS = ("l2t_ww", "l2t_www")


@dataclasses.dataclass(frozen=True)
class KTConfig:
  """Hyper-parameters; defaults are the reference's CIFAR/STL settings."""
  method: str = "l2t_ww"
  beta: float = 0.5
  inner_steps: int = 2          # T
  momentum: float = 0.9
  weight_decay: float = 1e-4    # coupled L2 on θ (target + regressors, incl. BN and biases)
  meta_lr: float = 1e-4
  meta_weight_decay: float = 1e-4
  first_order: bool = False     # ablation only: yields a zero meta-gradient (module docstring)
  remat: bool = False           # jax.checkpoint each look-ahead step to save memory


@flax.struct.dataclass
class KTState:
  """Everything one iteration reads and writes. `params`/`batch_stats` are the plain target
  model's, so eval code can use them as it would a TrainState's."""
  step: jax.Array
  params: Any                   # target model params
  batch_stats: Any              # target BN running stats ({} when BN-free)
  regressors: Any               # {pair.key: {'kernel', 'bias'}}; part of θ
  opt_state: Any                # momentum buffer v for θ = {'target': ..., 'regressors': ...}
  meta_params: Any              # φ ({} for scratch / ufm)
  meta_opt_state: Any
  source_variables: Any         # frozen source ({} for scratch)

  @property
  def theta(self) -> dict[str, Any]:
    return {"target": self.params, "regressors": self.regressors}

  @property
  def variables(self) -> dict[str, Any]:
    return _variables(self.params, self.batch_stats)


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def sgd_momentum_step(params: Any, velocity: Any, grads: Any, lr: jax.Array | float,
                      momentum: float, weight_decay: float) -> tuple[Any, Any]:
  """PyTorch SGD with coupled L2: d = g + ωθ; v ← μv + d; θ ← θ − ηv (== optax
  chain(add_decayed_weights(ω), sgd(η, μ))). Pure, so the look-ahead can be differentiated."""
  d = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, grads, params)
  v = jax.tree_util.tree_map(lambda d_, v_: d_ + momentum * v_, d, velocity)
  new = jax.tree_util.tree_map(lambda p, v_: p - lr * v_, params, v)
  return new, v


def cosine_per_epoch(base_lr: float, steps_per_epoch: int, num_epochs: int) -> Callable[[jax.Array], jax.Array]:
  """η_e = base/2 (1 + cos(π e / N)) with e = step // steps_per_epoch (constant within an epoch,
  the reference's per-epoch CosineAnnealingLR on PyTorch 1.0)."""
  if steps_per_epoch <= 0 or num_epochs <= 0:
    raise ConfigError("optimizer.schedule", (steps_per_epoch, num_epochs), "positive steps/epochs")

  def fn(step):
    epoch = jnp.floor_divide(step, steps_per_epoch)
    return 0.5 * base_lr * (1.0 + jnp.cos(jnp.pi * epoch / num_epochs))
  return fn


def softmax_ce(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean cross-entropy; a 0/1 `mask` (padded last batch) keeps padding out of the mean."""
  return matching.batch_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), mask)


class KnowledgeTransfer:
  """Builds the per-method iteration for a (source, target) pair of Flax models.

  Models follow the tl_jax contract: `apply(vars, x, train=..., mutable=...)` -> (logits,
  {name: NHWC map}). `preprocess(key, images) -> float images` runs inside the step (augment).
  `l2t_iteration(state, batch, key) -> (state, metrics)` is jitted with the state donated; the key
  is folded with `state.step`, batch = {'image', 'label'}. Every method has the same signature.
  """

  def __init__(self, source_model: Any, target_model: Any, pairs: Sequence[PairSpec],
               config: KTConfig, lr_schedule: Callable[[jax.Array], jax.Array],
               preprocess: Callable[[jax.Array, jax.Array], jax.Array] | None = None):
    check_choice("kt.method", config.method, METHODS)
    if config.inner_steps < 0:
      raise ConfigError("kt.inner_steps", config.inner_steps, ">= 0")
    self.source_model, self.target_model = source_model, target_model
    self.pairs = tuple(pairs) if config.method != "scratch" else ()
    if config.method != "scratch" and not self.pairs:
      raise ConfigError("kt.pairs", pairs, "at least one pair for ufm / l2t_ww / l2t_www")
    self.config = config
    self.lr_schedule = lr_schedule
    self.preprocess = preprocess or (lambda key, x: x.astype(jnp.float32))
    self.meta_tx = optax.chain(optax.add_decayed_weights(config.meta_weight_decay),
                               optax.adam(config.meta_lr))
    self.meta_net = MetaNetworks(self.pairs, which=config.method == "l2t_www")
    self.l2t_iteration = jax.jit(self.iteration, donate_argnums=0)
    self.meta_outputs = jax.jit(self._meta_outputs)

  # ---------------------------------------------------------------- state
  def init(self, key: jax.Array, target_variables: Mapping[str, Any],
           source_variables: Mapping[str, Any] | None = None) -> KTState:
    """Fresh state (zero momentum, initial regressors and φ). The variables are copied, since
    `l2t_iteration` donates the state and would otherwise invalidate the caller's arrays."""
    copy = lambda t: jax.tree_util.tree_map(jnp.array, t)  # noqa: E731
    target_variables = copy(dict(target_variables))
    source_variables = copy(dict(source_variables or {}))
    k_reg, k_meta = jax.random.split(key)
    method = self.config.method
    params = target_variables["params"]
    regressors = matching.init_regressors(self.pairs, k_reg) if self.pairs else {}
    meta = init_meta_params(self.pairs, method == "l2t_www", k_meta) if method in META_METHODS else {}
    theta = {"target": params, "regressors": regressors}
    return KTState(step=jnp.zeros((), jnp.int32), params=params,
                   batch_stats=target_variables.get("batch_stats", {}), regressors=regressors,
                   opt_state=jax.tree_util.tree_map(jnp.zeros_like, theta), meta_params=meta,
                   meta_opt_state=self.meta_tx.init(meta),
                   source_variables=source_variables if method != "scratch" else {})

  # ---------------------------------------------------------------- pieces
  def target_forward(self, params, batch_stats, x, rng):
    """Train-mode target forward -> (logits, features, new batch_stats)."""
    variables = _variables(params, batch_stats)
    if batch_stats:
      (logits, feats), upd = self.target_model.apply(variables, x, train=True, mutable=["batch_stats"],
                                                     rngs={"dropout": rng})
      return logits, feats, upd["batch_stats"]
    logits, feats = self.target_model.apply(variables, x, train=True, rngs={"dropout": rng})
    return logits, feats, batch_stats

  def source_features(self, source_variables, x) -> dict[str, jax.Array]:
    """Frozen source: eval mode, stop_gradient."""
    _, feats = self.source_model.apply(source_variables, x, train=False)
    return jax.lax.stop_gradient(feats)

  def meta_forward(self, meta_params, pooled, batch: int):
    """φ -> per-pair {'w', 'lam'[, 'gamma']} and the full-resolution γ per pair (or None)."""
    if self.config.method == "ufm":
      out = matching.uniform_meta(self.pairs, batch)
    else:
      out = self.meta_net.apply({"params": meta_params}, pooled)
    return out, matching.full_gamma(self.pairs, out)

  def wfm(self, regressors, feats, ctx, meta_out, gammas):
    if not self.pairs:
      return jnp.zeros((), ctx["x"].dtype)
    return matching.matching_loss(self.pairs, regressors, feats, ctx["resized"], meta_out,
                                  self.config.beta, gammas, ctx["mask"])

  def _step_theta(self, theta, v, grads, lr):
    c = self.config
    return sgd_momentum_step(theta, v, grads, lr, c.momentum, c.weight_decay)

  # ---------------------------------------------------------------- meta objective
  def meta_objective(self, meta_params, theta0, v0, bs0, ctx, rng):
    """CE(θ_{T+1}) after T L_wfm-only + 1 CE-only momentum-SGD steps from (θ_0, v_0).

    Differentiable in `meta_params` (exact second-order meta-gradient); θ_0, v_0 are constants.
    With `config.first_order` the inner gradients are stop_gradient'ed (result: zero gradient).
    """
    c = self.config
    x, y, mask, lr = ctx["x"], ctx["y"], ctx["mask"], ctx["lr"]
    meta_out, gammas = self.meta_forward(meta_params, ctx["pooled"], x.shape[0])
    theta, v, bs = jax.lax.stop_gradient((theta0, v0, bs0))
    rngs = jax.random.split(rng, c.inner_steps + 2)

    def wfm_fn(th, bs_, r):
      _, feats, nbs = self.target_forward(th["target"], bs_, x, r)
      return self.wfm(th["regressors"], feats, ctx, meta_out, gammas), nbs

    def ce_fn(th, bs_, r):
      logits, _, nbs = self.target_forward(th["target"], bs_, x, r)
      return softmax_ce(logits, y, mask), nbs

    def make_step(loss_fn):
      def step(th, v_, bs_, r):
        g, nbs = jax.grad(loss_fn, has_aux=True)(th, bs_, r)
        if c.first_order:
          g = jax.lax.stop_gradient(g)
        th, v_ = self._step_theta(th, v_, g, lr)
        return th, v_, nbs
      return jax.checkpoint(step) if c.remat else step

    wfm_step, ce_step = make_step(wfm_fn), make_step(ce_fn)
    for t in range(c.inner_steps):
      theta, v, bs = wfm_step(theta, v, bs, rngs[t])
    theta, v, bs = ce_step(theta, v, bs, rngs[c.inner_steps])
    meta_loss, _ = ce_fn(theta, bs, rngs[c.inner_steps + 1])
    return meta_loss

  # ---------------------------------------------------------------- one iteration
  def prepare(self, state: KTState, batch: Mapping[str, jax.Array], key: jax.Array):
    """Per-iteration constants `ctx` = {x, y, mask, pooled, resized, lr} (images after
    augmentation, labels, 0/1 padding mask, pooled / resized source maps, scheduled LR), and the
    dropout and look-ahead rngs."""
    k = jax.random.fold_in(key, state.step)
    k_aug, k_drop, k_meta = jax.random.split(k, 3)
    x = self.preprocess(k_aug, batch["image"])
    y = batch["label"]
    if self.pairs:
      src = self.source_features(state.source_variables, x)
      pooled, resized = matching.pooled_sources(src), matching.resize_sources(self.pairs, src)
    else:
      pooled, resized = {}, {}
    lr = jnp.asarray(self.lr_schedule(state.step), x.dtype)
    mask = batch.get("mask")
    mask = jnp.ones(y.shape, x.dtype) if mask is None else mask.astype(x.dtype)
    ctx = {"x": x, "y": y, "mask": mask, "pooled": pooled, "resized": resized, "lr": lr}
    return ctx, k_drop, k_meta

  def real_step(self, state: KTState, ctx, rng):
    """Step 1: θ_0, v_0, BN stats after one momentum-SGD step on CE + L_wfm (φ constant)."""
    x, y, mask, lr = ctx["x"], ctx["y"], ctx["mask"], ctx["lr"]
    meta_out, gammas = self.meta_forward(jax.lax.stop_gradient(state.meta_params), ctx["pooled"], x.shape[0])

    def total_fn(theta):
      logits, feats, nbs = self.target_forward(theta["target"], state.batch_stats, x, rng)
      ce = softmax_ce(logits, y, mask)
      wfm = self.wfm(theta["regressors"], feats, ctx, meta_out, gammas)
      return ce + wfm, (ce, wfm, logits, nbs)

    grads, (ce, wfm, logits, nbs) = jax.grad(total_fn, has_aux=True)(state.theta)
    theta0, v0 = self._step_theta(state.theta, state.opt_state, grads, lr)
    correct = (jnp.argmax(logits, -1) == y).astype(x.dtype)
    metrics = {"loss": ce + wfm, "ce": ce, "wfm": wfm, "accuracy": matching.batch_mean(correct, mask),
               "lr": lr}
    for p in self.pairs:
      metrics[f"lambda/{p.key}"] = matching.batch_mean(meta_out[p.key]["lam"], mask)
    return theta0, v0, nbs, metrics

  def iteration(self, state: KTState, batch: Mapping[str, jax.Array], key: jax.Array):
    """Un-jitted body of `l2t_iteration` (see module docstring)."""
    ctx, k_drop, k_meta = self.prepare(state, batch, key)
    theta0, v0, bs0, metrics = self.real_step(state, ctx, k_drop)
    meta_params, meta_opt_state = state.meta_params, state.meta_opt_state
    if self.config.method in META_METHODS:
      meta_loss, meta_grad = jax.value_and_grad(self.meta_objective)(
          meta_params, theta0, v0, bs0, ctx, k_meta)
      updates, meta_opt_state = self.meta_tx.update(meta_grad, meta_opt_state, meta_params)
      meta_params = optax.apply_updates(meta_params, updates)
      metrics["meta_loss"] = meta_loss
      metrics["meta_grad_norm"] = optax.tree.norm(meta_grad)
    else:
      metrics["meta_loss"] = jnp.zeros((), metrics["ce"].dtype)
      metrics["meta_grad_norm"] = jnp.zeros((), metrics["ce"].dtype)
    new_state = state.replace(step=state.step + 1, params=theta0["target"], batch_stats=bs0,
                              regressors=theta0["regressors"], opt_state=v0,
                              meta_params=meta_params, meta_opt_state=meta_opt_state)
    return new_state, metrics

  # ---------------------------------------------------------------- inspection (plots)
  def _meta_outputs(self, state: KTState, images: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """Per pair: 'w' (B, C_s) channel weights, 'lam' (B,) pair weights and, for L2T-www,
    'gamma' (B, H, W, C_s) per-pixel weights at the pair's map size, for float images."""
    if not self.pairs:
      return {}
    src = self.source_features(state.source_variables, images.astype(jnp.float32))
    out, gammas = self.meta_forward(state.meta_params, matching.pooled_sources(src), images.shape[0])
    res = {}
    for p in self.pairs:
      res[p.key] = {"w": out[p.key]["w"], "lam": out[p.key]["lam"]}
      if gammas[p.key] is not None:
        res[p.key]["gamma"] = gammas[p.key]
    return res


def num_params(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))
