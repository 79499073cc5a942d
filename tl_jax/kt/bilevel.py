"""One knowledge-transfer training iteration (scratch / UFM / L2T-ww / L2T-www) as one pure step.

L2T-ww / L2T-www iteration (thesis Algorithm 1 = the reference `train_l2t_ww.py` + `MetaSGD`):
  1. real step: one update of the optax transformation `tx` (the thesis: momentum SGD with
     coupled weight decay, the same `tl_jax.train.optim.make_optimizer` chain every supervised
     method uses) on θ = target params + regressors, loss CE + L_wfm(θ; φ) with the current φ
     held constant (its φ-gradient is not used);
  2. look-ahead from θ_0 = post-real-step θ and its optimiser state (momentum buffer; both
     stop_gradient): T updates of the same `tx` on L_wfm only, then one on CE only, at the real
     step's LR (the reference's look-ahead reads the current param-group LR; `optim.with_counts`
     holds the schedule's count);
  3. meta loss = CE(θ_{T+1}) on the same augmented batch, BN in train mode;
  4. φ ← Adam(chain(add_decayed_weights, adam)) with the exact meta-gradient: `jax.grad` through
     the unrolled look-ahead (second order). The look-ahead is then discarded: θ stays θ_0.

Why second order is required: θ_{T+1} depends on φ only through the inner gradients
∇_θ L_wfm(θ_t; φ), and CE itself has no φ. Treating those gradients as constants (first-order /
FOMAML) therefore gives a meta-gradient that is identically zero; the signal is the mixed
derivative ∂²L_wfm/∂θ∂φ (plus the θ-Hessian terms that carry it through later steps).

BatchNorm running statistics (`KTConfig.bn_updates`): the look-ahead's own BN updates are
dropped with it, but the reference's `meta_backward` restores θ_0 and re-runs the matching
objective there in train mode without restoring again, so its running statistics are updated
twice per iteration - at the real step (forward at the pre-update θ) and at θ_0.
  'reference' (default) - the same two updates: the second is the train-mode forward at θ_0 on
      the same batch that the first look-ahead step computes anyway (no extra cost). Every
      number in the thesis is an eval-mode prediction of the reference code, so this is what
      reproduces it (effective BN momentum ≈ 0.19 per iteration instead of 0.1).
  'single' - only the real step's forward updates them (what a clean bilevel step would do).
  UFM and scratch have no look-ahead: one update either way. PyTorch also stores the *unbiased*
  batch variance (`bn_running_var='unbiased'`, tl_jax.models.layers.bn_running_var).

Precision (`meta_dtype`, `matmul_precision`): the look-ahead's CE rises from ~2.3 to ~16 in the
first iterations at lr 0.1 and a 1e-7 relative change of θ moves the meta-gradient by tens of
percent, so a float32 meta-gradient is largely roundoff early in training (in the reference
too). `meta_dtype='float64'` runs the look-ahead and the meta-gradient in float64 (the real step,
the state and Adam stay float32); `matmul_precision` (default 'highest') is the XLA precision of
every convolution and matmul of the iteration - on GPUs 'default' lets XLA use TF32.
`meta_gradient(..., dtype=, precision=)` computes it at any setting for the diagnostic
(tl_jax.analysis.meta_precision).

The frozen source network is an argument of the iteration (`source_variables`), never part of
the state: the state is donated and checkpointed, the source is a constant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from tl_jax.errors import ConfigError, check_choice
from tl_jax.kt import matching
from tl_jax.kt.meta_nets import WHICH_INITS, WHICH_INPUTS, MetaNetworks, init_meta_params
from tl_jax.kt.pairs import PairSpec
from tl_jax.models.layers import (BN_RUNNING_VAR, batch_norm_mask, bn_running_var,
                                   frozen_batch_norm, second_order)
from tl_jax.train import optim

METHODS = ("scratch", "ufm", "l2t_ww", "l2t_www")
META_METHODS = ("l2t_ww", "l2t_www")
BN_UPDATES = ("reference", "single")
META_DTYPES = ("float32", "float64")
MATMUL_PRECISIONS = ("default", "high", "highest")


def cast_floating(tree: Any, dtype: Any) -> Any:
  """Every floating leaf of `tree` as `dtype` (integers, keys and None unchanged)."""
  return jax.tree_util.tree_map(
      lambda a: a.astype(dtype) if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)
      else a, tree)


@contextlib.contextmanager
def precision_scope(dtype: str, precision: str):
  """Trace-time scope of a computation in `dtype` ('float64' enables x64) at XLA matmul
  `precision`."""
  with contextlib.ExitStack() as stack:
    if dtype == "float64":
      stack.enter_context(jax.enable_x64(True))
    stack.enter_context(jax.default_matmul_precision(precision))
    yield


@dataclasses.dataclass(frozen=True)
class KTConfig:
  """Hyper-parameters; defaults are the reference's CIFAR/STL settings."""
  method: str = "l2t_ww"
  beta: float = 0.5
  inner_steps: int = 2          # T
  momentum: float = 0.9         # of the default `tx` (sgd_tx) when none is given
  weight_decay: float = 1e-4    # coupled L2 on θ (target + regressors, incl. BN and biases)
  meta_lr: float = 1e-4
  meta_weight_decay: float = 1e-4
  first_order: bool = False     # ablation only: yields a zero meta-gradient (module docstring)
  bn_frozen: bool = False       # transfer.bn='frozen': the target's BN in inference mode
  bn_updates: str = "reference"  # reference (2 BN-stat updates per L2T iteration) | single
  bn_running_var: str = "biased"  # biased (flax) | unbiased (PyTorch) running variance
  meta_dtype: str = "float32"    # float32 | float64: look-ahead + meta-gradient precision
  matmul_precision: str = "highest"  # default | high | highest (XLA conv / matmul precision)
  which_input: str = "pooled"    # L2T-www h input: pooled source vector | the channel's map
  which_init: str = "identity"   # L2T-www h init: identity (γ ≡ 1) | torch (nn.Linear default)
  remat: bool = False           # jax.checkpoint each look-ahead step to save memory


@flax.struct.dataclass
class KTState:
  """Everything one iteration reads and writes. `params`/`batch_stats` are the plain target
  model's, so eval code can use them as it would a TrainState's."""
  step: jax.Array
  params: Any                   # target model params
  batch_stats: Any              # target BN running stats ({} when BN-free)
  regressors: Any               # {pair.key: {'kernel', 'bias'}}; part of θ
  opt_state: Any                # optax state of `tx` for θ = {'target': ..., 'regressors': ...}
  meta_params: Any              # φ ({} for scratch / ufm)
  meta_opt_state: Any

  @property
  def theta(self) -> dict[str, Any]:
    return {"target": self.params, "regressors": self.regressors}

  @property
  def variables(self) -> dict[str, Any]:
    return _variables(self.params, self.batch_stats)


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def sgd_tx(lr_schedule: Callable[[jax.Array], jax.Array], momentum: float = 0.9,
           weight_decay: float = 1e-4) -> optax.GradientTransformation:
  """PyTorch SGD with coupled L2 (d = g + ωθ; v ← μv + d; θ ← θ − ηv) as the optax chain
  `tl_jax.train.optim.make_optimizer` builds for `optimizer.name='sgd'`, decay 'coupled'."""
  parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  parts += [optax.trace(decay=momentum) if momentum else optax.identity(),
            optax.scale_by_learning_rate(lr_schedule), optim.scale_by_lr_scale()]
  return optax.chain(*parts)


def momentum_of(opt_state: Any) -> Any:
  """The momentum buffer v (optax TraceState.trace) inside an optimiser state."""
  found = [s for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState))
      if isinstance(s, optax.TraceState)]
  if len(found) != 1:
    raise ValueError(f"expected one optax.TraceState, found {len(found)}")
  return found[0].trace


def with_momentum(opt_state: Any, velocity: Any) -> Any:
  """`opt_state` with its momentum buffer replaced by `velocity` (same tree as θ)."""
  return jax.tree_util.tree_map(
      lambda s: optax.TraceState(trace=velocity) if isinstance(s, optax.TraceState) else s,
      opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState))


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
  `iteration(state, batch, key, source_variables) -> (state, metrics)` is pure (the engine scans
  it); `l2t_iteration` is the same, jitted with the state donated. The key is used as given (the
  engine folds it with the step); batch = {'image', 'label'[, 'mask']}. Every method has the same
  signature. `tx` updates θ (default `sgd_tx(lr_schedule, momentum, weight_decay)`);
  `lr_schedule(count)` is also what the 'lr' metric reports.
  """

  def __init__(self, source_model: Any, target_model: Any, pairs: Sequence[PairSpec],
               config: KTConfig, lr_schedule: Callable[[jax.Array], jax.Array],
               preprocess: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
               tx: optax.GradientTransformation | None = None):
    check_choice("kt.method", config.method, METHODS)
    if config.inner_steps < 0:
      raise ConfigError("kt.inner_steps", config.inner_steps, ">= 0")
    check_choice("kt.bn_updates", config.bn_updates, BN_UPDATES)
    check_choice("model.bn_running_var", config.bn_running_var, BN_RUNNING_VAR)
    check_choice("kt.meta_dtype", config.meta_dtype, META_DTYPES)
    check_choice("kt.matmul_precision", config.matmul_precision, MATMUL_PRECISIONS)
    check_choice("kt.which_input", config.which_input, WHICH_INPUTS)
    check_choice("kt.which_init", config.which_init, WHICH_INITS)
    self.source_model, self.target_model = source_model, target_model
    self.pairs = tuple(pairs) if config.method != "scratch" else ()
    if config.method != "scratch" and not self.pairs:
      raise ConfigError("kt.pairs", pairs, "at least one pair for ufm / l2t_ww / l2t_www")
    self.config = config
    self.lr_schedule = lr_schedule
    self.tx = tx if tx is not None else sgd_tx(lr_schedule, config.momentum, config.weight_decay)
    self.preprocess = preprocess or (lambda key, x: x.astype(jnp.float32))
    self.meta_tx = optax.chain(optax.add_decayed_weights(config.meta_weight_decay),
                               optax.adam(config.meta_lr))
    self.meta_net = MetaNetworks(self.pairs, which=config.method == "l2t_www",
                                 which_input=config.which_input, which_init=config.which_init)
    self.l2t_iteration = jax.jit(self.iteration, donate_argnums=0)
    self.meta_outputs = jax.jit(self._meta_outputs)

  # ---------------------------------------------------------------- state
  def init(self, key: jax.Array, target_variables: Mapping[str, Any]) -> KTState:
    """Fresh state (zero momentum, initial regressors and φ). The variables are copied, since
    `l2t_iteration` donates the state and would otherwise invalidate the caller's arrays."""
    copy = lambda t: jax.tree_util.tree_map(jnp.array, t)  # noqa: E731
    target_variables = copy(dict(target_variables))
    k_reg, k_meta = jax.random.split(key)
    method = self.config.method
    params = target_variables["params"]
    regressors = matching.init_regressors(self.pairs, k_reg) if self.pairs else {}
    meta = (init_meta_params(self.pairs, method == "l2t_www", k_meta, self.config.which_input,
                             self.config.which_init) if method in META_METHODS else {})
    theta = {"target": params, "regressors": regressors}
    return KTState(step=jnp.zeros((), jnp.int32), params=params,
                   batch_stats=target_variables.get("batch_stats", {}), regressors=regressors,
                   opt_state=self.tx.init(theta), meta_params=meta,
                   meta_opt_state=self.meta_tx.init(meta))

  # ---------------------------------------------------------------- pieces
  def target_forward(self, params, batch_stats, x, rng, mask=None):
    """Train-mode target forward -> (logits, features, new batch_stats)."""
    variables = _variables(params, batch_stats)
    # BatchNorm sees the real rows only; with bn_frozen tl_jax BNs run in inference mode
    with batch_norm_mask(mask), frozen_batch_norm(self.config.bn_frozen), \
        bn_running_var(self.config.bn_running_var):
      if batch_stats and not self.config.bn_frozen:
        (logits, feats), upd = self.target_model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        return logits, feats, upd["batch_stats"]
      logits, feats = self.target_model.apply(variables, x, train=True, rngs={"dropout": rng})
    return logits, feats, batch_stats

  def source_features(self, source_variables, x) -> dict[str, jax.Array]:
    """Frozen source: eval mode, stop_gradient."""
    _, feats = self.source_model.apply(source_variables, x, train=False)
    return jax.lax.stop_gradient(feats)

  def meta_forward(self, meta_params, pooled, batch: int, maps=None):
    """φ -> per-pair {'w', 'lam'[, 'gamma']} and the full-resolution γ per pair (or None).
    `maps` (the source maps) is read by L2T-www's h with which_input='map'."""
    if self.config.method == "ufm":
      out = matching.uniform_meta(self.pairs, batch)
    else:
      out = self.meta_net.apply({"params": meta_params}, pooled, maps)
    return out, matching.full_gamma(self.pairs, out)

  def wfm(self, regressors, feats, ctx, meta_out, gammas):
    if not self.pairs:
      return jnp.zeros((), ctx["x"].dtype)
    return matching.matching_loss(self.pairs, regressors, feats, ctx["resized"], meta_out,
                                  self.config.beta, gammas, ctx["mask"])

  def _step_theta(self, theta, opt_state, grads, count_ref=None):
    """One `tx` update of θ; with `count_ref` (an optimiser state) the schedule counts are held
    at its values, so every look-ahead step uses the real step's LR."""
    if count_ref is not None:
      opt_state = optim.with_counts(opt_state, count_ref)
    updates, opt_state = self.tx.update(grads, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state

  # ---------------------------------------------------------------- meta objective
  def meta_objective(self, meta_params, theta0, opt0, bs0, ctx, rng):
    """CE(θ_{T+1}) after T L_wfm-only + 1 CE-only `tx` updates from (θ_0, its optimiser state).

    Differentiable in `meta_params` (exact second-order meta-gradient through optax's update);
    θ_0 and its optimiser state are constants; the schedule count stays at `ctx['count_ref']`'s
    (the real step's LR). With `config.first_order` the inner gradients are stop_gradient'ed
    (result: zero gradient). Computes in the dtype of its inputs.
    """
    return self.meta_objective_aux(meta_params, theta0, opt0, bs0, ctx, rng)[0]

  def meta_objective_aux(self, meta_params, theta0, opt0, bs0, ctx, rng):
    """`meta_objective` and aux = {'bn_theta0': BN statistics after one train-mode forward at
    θ_0 (the reference's second update), 'lookahead': the loss of each look-ahead step
    (L_wfm at θ_0..θ_{T-1}, CE at θ_T) and CE(θ_{T+1}), shape [T + 2]}."""
    c = self.config
    x, y, mask = ctx["x"], ctx["y"], ctx["mask"]
    meta_out, gammas = self.meta_forward(meta_params, ctx["pooled"], x.shape[0], ctx.get("maps"))
    theta, v, bs = jax.lax.stop_gradient((theta0, opt0, bs0))
    count_ref = ctx.get("count_ref", opt0)
    rngs = jax.random.split(rng, c.inner_steps + 2)

    def wfm_fn(th, bs_, r):
      _, feats, nbs = self.target_forward(th["target"], bs_, x, r, mask)
      return self.wfm(th["regressors"], feats, ctx, meta_out, gammas), nbs

    def ce_fn(th, bs_, r):
      logits, _, nbs = self.target_forward(th["target"], bs_, x, r, mask)
      return softmax_ce(logits, y, mask), nbs

    def make_step(loss_fn):
      def step(th, v_, bs_, r):
        (loss, nbs), g = jax.value_and_grad(loss_fn, has_aux=True)(th, bs_, r)
        if c.first_order:
          g = jax.lax.stop_gradient(g)
        th, v_ = self._step_theta(th, v_, g, count_ref)
        return th, v_, nbs, loss
      return jax.checkpoint(step) if c.remat else step

    wfm_step, ce_step = make_step(wfm_fn), make_step(ce_fn)
    losses, bn_theta0 = [], None
    for t in range(c.inner_steps):
      theta, v, bs, loss = wfm_step(theta, v, bs, rngs[t])
      losses.append(loss)
      bn_theta0 = bs if bn_theta0 is None else bn_theta0
    theta, v, bs, loss = ce_step(theta, v, bs, rngs[c.inner_steps])
    losses.append(loss)
    bn_theta0 = bs if bn_theta0 is None else bn_theta0
    meta_loss, _ = ce_fn(theta, bs, rngs[c.inner_steps + 1])
    losses.append(meta_loss)
    aux = {"bn_theta0": jax.lax.stop_gradient(bn_theta0),
           "lookahead": jax.lax.stop_gradient(jnp.stack(losses))}
    return meta_loss, aux

  def meta_gradient(self, meta_params, theta0, opt0, bs0, ctx, rng, *,
                    dtype: str | None = None, precision: str | None = None):
    """(meta loss, meta-gradient, aux) with the look-ahead computed in `dtype` at matmul
    `precision` (defaults: `config.meta_dtype`, `config.matmul_precision`); every output is
    cast back to the dtypes of `meta_params` / `bs0`, so the caller's state keeps its dtype."""
    dtype = dtype or self.config.meta_dtype
    precision = precision or self.config.matmul_precision
    out_dtype = jax.tree_util.tree_leaves(meta_params)[0].dtype
    with precision_scope(dtype, precision), second_order():
      args = (meta_params, theta0, opt0, bs0, ctx)
      if dtype == "float64":
        args = cast_floating(args, jnp.float64)
      (loss, aux), grad = jax.value_and_grad(self.meta_objective_aux, has_aux=True)(*args, rng)
      grad = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grad, meta_params)
      aux = {"bn_theta0": jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype),
                                                 aux["bn_theta0"], bs0),
             "lookahead": aux["lookahead"].astype(out_dtype)}
      return loss.astype(out_dtype), grad, aux

  # ---------------------------------------------------------------- one iteration
  def prepare(self, state: KTState, batch: Mapping[str, jax.Array], key: jax.Array,
              source_variables: Any):
    """Per-iteration constants `ctx` = {x, y, mask, pooled, resized, lr, count_ref} (images
    after augmentation, labels, 0/1 padding mask, pooled / resized source maps, scheduled LR,
    the optimiser state whose schedule counts the look-ahead keeps), and the dropout and
    look-ahead rngs."""
    k_aug, k_drop, k_meta = jax.random.split(key, 3)
    x = self.preprocess(k_aug, batch["image"])
    y = batch["label"]
    if self.pairs:
      src = self.source_features(source_variables, x)
      pooled, resized = matching.pooled_sources(src), matching.resize_sources(self.pairs, src)
    else:
      pooled, resized = {}, {}
    lr = jnp.asarray(self.lr_schedule(state.step), x.dtype)
    mask = batch.get("mask")
    mask = jnp.ones(y.shape, x.dtype) if mask is None else mask.astype(x.dtype)
    ctx = {"x": x, "y": y, "mask": mask, "pooled": pooled, "resized": resized, "lr": lr,
           "count_ref": state.opt_state}
    if self.config.method == "l2t_www" and self.config.which_input == "map":
      ctx["maps"] = src
    return ctx, k_drop, k_meta

  def real_step(self, state: KTState, ctx, rng):
    """Step 1: θ_0, v_0, BN stats after one momentum-SGD step on CE + L_wfm (φ constant)."""
    x, y, mask, lr = ctx["x"], ctx["y"], ctx["mask"], ctx["lr"]
    meta_out, gammas = self.meta_forward(jax.lax.stop_gradient(state.meta_params), ctx["pooled"],
                                         x.shape[0], ctx.get("maps"))

    def total_fn(theta):
      logits, feats, nbs = self.target_forward(theta["target"], state.batch_stats, x, rng, mask)
      ce = softmax_ce(logits, y, mask)
      wfm = self.wfm(theta["regressors"], feats, ctx, meta_out, gammas)
      return ce + wfm, (ce, wfm, logits, nbs)

    grads, (ce, wfm, logits, nbs) = jax.grad(total_fn, has_aux=True)(state.theta)
    theta0, v0 = self._step_theta(state.theta, state.opt_state, grads)
    correct = (jnp.argmax(logits, -1) == y).astype(x.dtype)
    loss = ce + wfm
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    metrics = {"loss": loss, "ce": ce, "wfm": wfm, "accuracy": matching.batch_mean(correct, mask),
               "lr": lr, "nonfinite": 1.0 - finite.astype(x.dtype)}
    for p in self.pairs:
      metrics[f"lambda/{p.key}"] = matching.batch_mean(meta_out[p.key]["lam"], mask)
    return theta0, v0, nbs, metrics

  def iteration(self, state: KTState, batch: Mapping[str, jax.Array], key: jax.Array,
                source_variables: Any = None):
    """Un-jitted body of `l2t_iteration` (see module docstring)."""
    # L2T: the target is differentiated twice (its CPU convs are chosen for that, vgg.VGG9)
    with jax.default_matmul_precision(self.config.matmul_precision), \
        second_order(self.config.method in META_METHODS):
      return self._iteration(state, batch, key, source_variables)

  def _iteration(self, state, batch, key, source_variables):
    ctx, k_drop, k_meta = self.prepare(state, batch, key, source_variables)
    theta0, v0, bs0, metrics = self.real_step(state, ctx, k_drop)
    meta_params, meta_opt_state = state.meta_params, state.meta_opt_state
    if self.config.method in META_METHODS:
      meta_loss, meta_grad, aux = self.meta_gradient(meta_params, theta0, v0, bs0, ctx, k_meta)
      updates, meta_opt_state = self.meta_tx.update(meta_grad, meta_opt_state, meta_params)
      meta_params = optax.apply_updates(meta_params, updates)
      metrics["meta_loss"] = meta_loss
      metrics["meta_grad_norm"] = optax.tree.norm(meta_grad)
      if self.config.bn_updates == "reference" and not self.config.bn_frozen:
        bs0 = aux["bn_theta0"]  # the reference's second update, at θ_0 (module docstring)
    else:
      metrics["meta_loss"] = jnp.zeros((), metrics["ce"].dtype)
      metrics["meta_grad_norm"] = jnp.zeros((), metrics["ce"].dtype)
    new_state = state.replace(step=state.step + 1, params=theta0["target"], batch_stats=bs0,
                              regressors=theta0["regressors"], opt_state=v0,
                              meta_params=meta_params, meta_opt_state=meta_opt_state)
    # a non-finite loss skips the whole update (the engine then stops with the epoch and step)
    new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(metrics["nonfinite"] > 0, o, n),
                                       new_state, state)
    return new_state, metrics

  # ---------------------------------------------------------------- inspection (plots)
  def _meta_outputs(self, state: KTState, images: jax.Array,
                    source_variables: Any) -> dict[str, dict[str, jax.Array]]:
    """Per pair: 'w' (B, C_s) channel weights, 'lam' (B,) pair weights and, for L2T-www,
    'gamma' (B, H, W, C_s) per-pixel weights at the pair's map size, for float images."""
    if not self.pairs:
      return {}
    src = self.source_features(source_variables, images.astype(jnp.float32))
    out, gammas = self.meta_forward(state.meta_params, matching.pooled_sources(src),
                                    images.shape[0], src)
    res = {}
    for p in self.pairs:
      res[p.key] = {"w": out[p.key]["w"], "lam": out[p.key]["lam"]}
      if gammas[p.key] is not None:
        res[p.key]["gamma"] = gammas[p.key]
    return res


def num_params(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))
