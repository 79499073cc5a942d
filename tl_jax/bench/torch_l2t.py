"""A PyTorch implementation of exactly the iteration `tl_jax.kt.bilevel.KnowledgeTransfer` runs,
so one UFM / L2T-ww / L2T-www iteration can be timed against PyTorch on the same machine (the
authors' code is not available offline). Written from tl_jax's spec, not from any public code.

One iteration (see tl_jax/kt/bilevel.py):
  1. frozen source twin (eval mode, no grad) -> pooled maps (meta-net input) and maps bilinearly
     resized (align_corners=False) to each paired target map;
  2. real step: `torch.optim.SGD` (momentum, coupled weight decay, no dampening == tl_jax's
     default θ optimiser `sgd_tx`) on θ = target twin + 1x1-conv regressors, loss CE + L_wfm,
     with the meta-net outputs computed under no_grad (φ constant);
  3. look-ahead from θ_0 (post-real-step) and v_0 (SGD's momentum buffers), both detached: T
     momentum-SGD steps on L_wfm only, then one on CE only, all at the real step's LR (tl_jax
     holds its schedule count there), via `torch.func.functional_call` and
     `torch.autograd.grad(..., create_graph=True)` (second order: the meta-gradient flows only
     through ∂²L_wfm/∂θ∂φ); BN in train mode on cloned buffers, so the look-ahead's running-stat
     updates are discarded like tl_jax's;
  4. meta loss = CE(θ_{T+1}); its gradient w.r.t. φ by reverse mode; `torch.optim.Adam` with
     `weight_decay` (coupled L2 == optax.chain(add_decayed_weights, adam)).

Known difference: PyTorch's BN updates running_var with the *unbiased* batch variance, flax with
the biased one, so the target's running variances after the real step differ by a factor
n/(n-1) in the update term. Losses and gradients only use batch statistics (train mode), so
every other number of the iteration is the same.

Models: the twins of `tl_jax.weights.torch_twins` (NCHW, return (logits, list of maps)); the map
list is named with `twin_feature_names` so the tl_jax `PairSpec`s apply unchanged.

The twin mirrors tl_jax with its default θ optimiser only (`KnowledgeTransfer(tx=None)`, i.e.
`sgd_tx(lr_schedule, config.momentum, config.weight_decay)`); the LR is passed to `iteration`.
As in tl_jax, the frozen source is not part of the state: `load_kt_state` takes it separately.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from torch.func import functional_call

from tl_jax.errors import ConfigError, check_choice
from tl_jax.kt.bilevel import META_METHODS, KTConfig, momentum_of
from tl_jax.kt.pairs import PairSpec
from tl_jax.train import optim
from tl_jax.weights import torch_twins

TORCH_METHODS = ("ufm", "l2t_ww", "l2t_www")
WHICH_GRID = 3
WHICH_BIAS_INIT = math.log(math.e - 1.0)  # softplus(b) == 1: γ ≡ 1 at init, as tl_jax


def twin_feature_names(twin: nn.Module) -> list[str]:
  """tl_jax feature names of the twin's map list, in forward order (why: pairs name maps)."""
  if isinstance(twin, torch_twins.ResNet32L2T):
    return [f"block{i}" for i in range(15)]
  if isinstance(twin, torch_twins.VGG9):
    return [f"pool{i}" for i in range(sum(1 for v in twin.cfg if v == "M"))]
  raise ConfigError("torch_l2t.twin", type(twin).__name__, ["ResNet32L2T", "VGG9"],
                    hint="pass source_names / target_names explicitly")


def resize_bilinear(x: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
  """NCHW bilinear resize, half-pixel centres, no antialias; identity when the size matches."""
  if tuple(x.shape[-2:]) == tuple(hw):
    return x
  return F.interpolate(x, size=tuple(int(v) for v in hw), mode="bilinear", align_corners=False)


class MetaNets(nn.Module):
  """φ: per pair 'what' Linear(C_s, C_s) + softmax, 'where' Linear(C_s, 1) + relu6 and, for
  L2T-www, 'which' Linear(C_s, 9 C_s) + softplus -> (C_s, 3, 3) grids. Same inits as tl_jax."""

  def __init__(self, pairs: Sequence[PairSpec], which: bool):
    super().__init__()
    self.pairs, self.which = tuple(pairs), which
    self.nets = nn.ModuleDict()
    for p in self.pairs:
      c = p.source_channels
      what, where = nn.Linear(c, c), nn.Linear(c, 1)
      nn.init.zeros_(what.weight)
      nn.init.zeros_(what.bias)
      nn.init.constant_(where.bias, 1.0)
      self.nets[f"what_{p.key}"], self.nets[f"where_{p.key}"] = what, where
      if which:
        h = nn.Linear(c, c * WHICH_GRID * WHICH_GRID)
        nn.init.zeros_(h.weight)
        nn.init.constant_(h.bias, WHICH_BIAS_INIT)
        self.nets[f"which_{p.key}"] = h

  def forward(self, pooled: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for p in self.pairs:
      x = pooled[p.source]
      o = {"w": torch.softmax(self.nets[f"what_{p.key}"](x), dim=-1),
           "lam": F.relu6(self.nets[f"where_{p.key}"](x)[:, 0])}
      if self.which:
        g = F.softplus(self.nets[f"which_{p.key}"](x))
        o["gamma"] = g.view(x.shape[0], p.source_channels, WHICH_GRID, WHICH_GRID)
      out[p.key] = o
    return out


class TorchKnowledgeTransfer:
  """PyTorch twin of `KnowledgeTransfer` for methods 'ufm', 'l2t_ww', 'l2t_www'.

  `iteration(x, y, lr)` runs one iteration in place (target twin, regressors, φ and both
  optimisers change) and returns float metrics; after it `last_meta_grad` holds the raw
  meta-gradient {φ name: tensor} (before Adam's weight decay), for comparisons.
  The source twin is put in eval mode and its parameters frozen in place; the target twin is
  trained in place. Not covered (the benchmark does not need them): padding masks,
  `config.first_order` and `config.bn_frozen` (rejected), a non-default θ optimiser `kt.tx`, the
  non-finite-loss skip, `config.remat` (ignored: no memory/recompute trade-off here).
  """

  def __init__(self, source: nn.Module, target: nn.Module, pairs: Sequence[PairSpec],
               config: KTConfig, source_names: Sequence[str] | None = None,
               target_names: Sequence[str] | None = None, lr: float = 0.1):
    check_choice("kt.method", config.method, TORCH_METHODS)
    if not pairs:
      raise ConfigError("kt.pairs", pairs, "at least one pair")
    if config.first_order:
      raise ConfigError("kt.first_order", True, [False], hint="the torch twin is second order only")
    if config.bn_frozen:
      raise ConfigError("kt.bn_frozen", True, [False], hint="the torch twin trains BN in train mode")
    if config.inner_steps < 0:
      raise ConfigError("kt.inner_steps", config.inner_steps, ">= 0")
    self.config, self.pairs = config, tuple(pairs)
    self.source, self.target = source.eval(), target.train()
    for p in self.source.parameters():
      p.requires_grad_(False)
    self.source_names = list(source_names or twin_feature_names(source))
    self.target_names = list(target_names or twin_feature_names(target))
    self.regressors = nn.ModuleDict({p.key: nn.Conv2d(p.target_channels, p.source_channels, 1)
                                     for p in self.pairs})
    self.meta = MetaNets(self.pairs, which=config.method == "l2t_www")
    self._target_names_p = [n for n, _ in self.target.named_parameters()]
    self._reg_names_p = [n for n, _ in self.regressors.named_parameters()]
    self.theta_params = list(self.target.parameters()) + list(self.regressors.parameters())
    self.theta_opt = torch.optim.SGD(self.theta_params, lr=lr, momentum=config.momentum,
                                     weight_decay=config.weight_decay)
    self.meta_opt = None
    if config.method in META_METHODS:
      self.meta_opt = torch.optim.Adam(self.meta.parameters(), lr=config.meta_lr,
                                       weight_decay=config.meta_weight_decay)
    self.last_meta_grad: dict[str, torch.Tensor] = {}

  # ---------------------------------------------------------------- pieces
  def _named(self, maps: Sequence[torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    return dict(zip(names, maps))

  @torch.no_grad()
  def prepare(self, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Per-iteration constants: pooled source maps and the source maps resized per pair."""
    _, maps = self.source(x)
    src = self._named(maps, self.source_names)
    pooled = {k: v.mean(dim=(2, 3)) for k, v in src.items() if v.ndim == 4}
    resized = {p.key: resize_bilinear(src[p.source], p.target_hw) for p in self.pairs}
    return {"pooled": pooled, "resized": resized}

  def meta_forward(self, pooled: Mapping[str, torch.Tensor], batch: int):
    """φ -> ({pair: {'w', 'lam'[, 'gamma']}}, {pair: γ at map size or None})."""
    if self.config.method == "ufm":
      out = {p.key: {"w": torch.full((batch, p.source_channels), 1.0 / p.source_channels),
                     "lam": torch.ones(batch)} for p in self.pairs}
    else:
      out = self.meta(pooled)
    gammas = {p.key: (resize_bilinear(out[p.key]["gamma"], p.target_hw) if "gamma" in out[p.key]
                      else None) for p in self.pairs}
    return out, gammas

  def wfm(self, feats: Mapping[str, torch.Tensor], reg: Mapping[str, torch.Tensor],
          ctx: Mapping[str, Any], meta_out, gammas) -> torch.Tensor:
    """L_wfm = β Σ_pairs mean_b λ_b Σ_c w_bc mean_ij γ (Ŝ - R(T))²; `reg` = regressor tensors
    by name ('<pair>.weight' / '<pair>.bias'), so the look-ahead can pass its own θ."""
    total = 0.0
    for p in self.pairs:
      r = F.conv2d(feats[p.target], reg[f"{p.key}.weight"], reg[f"{p.key}.bias"])
      sq = (ctx["resized"][p.key] - r).square()
      if gammas[p.key] is not None:
        sq = sq * gammas[p.key]
      d = sq.mean(dim=(2, 3))
      o = meta_out[p.key]
      total = total + (o["lam"] * (o["w"] * d).sum(dim=1)).mean()
    return self.config.beta * total

  # ---------------------------------------------------------------- real step
  def real_step(self, x: torch.Tensor, y: torch.Tensor, lr: float, ctx) -> dict[str, float]:
    """θ ← SGD step on CE + L_wfm (φ held constant); BN running stats updated once."""
    with torch.no_grad():
      meta_out, gammas = self.meta_forward(ctx["pooled"], x.shape[0])
    logits, maps = self.target(x)
    ce = F.cross_entropy(logits, y)
    reg = dict(self.regressors.named_parameters())
    wfm = self.wfm(self._named(maps, self.target_names), reg, ctx, meta_out, gammas)
    for g in self.theta_opt.param_groups:
      g["lr"] = lr
    self.theta_opt.zero_grad(set_to_none=True)
    (ce + wfm).backward()
    self.theta_opt.step()
    ce, wfm = float(ce.detach()), float(wfm.detach())
    return {"ce": ce, "wfm": wfm, "loss": ce + wfm}

  # ---------------------------------------------------------------- look-ahead
  def _sgd(self, theta: list[torch.Tensor], v: list[torch.Tensor],
           grads: Sequence[torch.Tensor | None], lr: float):
    """Differentiable d = g + ωθ; v ← μv + d; θ ← θ − ηv (None gradient = 0)."""
    c = self.config
    new_theta, new_v = [], []
    for p, v_, g in zip(theta, v, grads):
      d = c.weight_decay * p if g is None else g + c.weight_decay * p
      v_ = c.momentum * v_ + d
      new_theta.append(p - lr * v_)
      new_v.append(v_)
    return new_theta, new_v

  def meta_objective(self, x: torch.Tensor, y: torch.Tensor, lr: float, ctx) -> torch.Tensor:
    """CE(θ_{T+1}) after T L_wfm-only + 1 CE-only steps from (θ_0, v_0); differentiable in φ."""
    c = self.config
    meta_out, gammas = self.meta_forward(ctx["pooled"], x.shape[0])
    n_t = len(self._target_names_p)
    theta = [p.detach().requires_grad_(True) for p in self.theta_params]
    v = []
    for p in self.theta_params:
      buf = self.theta_opt.state.get(p, {}).get("momentum_buffer")
      v.append(torch.zeros_like(p) if buf is None else buf.detach())
    # cloned BN buffers: the look-ahead's running-stat updates land here and are dropped
    buffers = {n: b.clone() for n, b in self.target.named_buffers()}

    def forward(th):
      tp = dict(zip(self._target_names_p, th[:n_t]))
      return functional_call(self.target, {**tp, **buffers}, (x,))

    for _ in range(c.inner_steps):
      _, maps = forward(theta)
      reg = dict(zip(self._reg_names_p, theta[n_t:]))
      loss = self.wfm(self._named(maps, self.target_names), reg, ctx, meta_out, gammas)
      grads = torch.autograd.grad(loss, theta, create_graph=True, allow_unused=True)
      theta, v = self._sgd(theta, v, grads, lr)
    # CE-only step: the regressors get no CE gradient and are not read again, so only the
    # target part of θ is stepped (tl_jax steps them too, with no effect on the meta loss).
    logits, _ = forward(theta)
    grads = torch.autograd.grad(F.cross_entropy(logits, y), theta[:n_t], create_graph=True,
                                allow_unused=True)
    tgt, _ = self._sgd(theta[:n_t], v[:n_t], grads, lr)
    logits, _ = forward(tgt + theta[n_t:])
    return F.cross_entropy(logits, y)

  # ---------------------------------------------------------------- one iteration
  def iteration(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, float]:
    """Real step, then (L2T methods) meta-gradient through the look-ahead and one Adam step."""
    ctx = self.prepare(x)
    metrics = self.real_step(x, y, lr, ctx)
    if self.meta_opt is not None:
      params = list(self.meta.parameters())
      meta_loss = self.meta_objective(x, y, lr, ctx)
      grads = torch.autograd.grad(meta_loss, params)
      for p, g in zip(params, grads):
        p.grad = g
      self.last_meta_grad = {n: g.detach().clone()
                             for (n, _), g in zip(self.meta.named_parameters(), grads)}
      self.meta_opt.step()
      metrics["meta_loss"] = float(meta_loss.detach())
      metrics["meta_grad_norm"] = float(torch.sqrt(sum((g * g).sum() for g in grads)))
    return metrics


# --- tl_jax state -> torch objects -------------------------------------------------------------

def _t(a: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(a, np.float32, order="C"))


def regressor_state_from_flax(regressors: Mapping[str, Any]) -> dict[str, torch.Tensor]:
  """tl_jax regressors {pair: {'kernel' (C_t, C_s), 'bias'}} -> ModuleDict state (1x1 conv
  weight (C_s, C_t, 1, 1)). Also converts a gradient / momentum tree of the same shape."""
  out = {}
  for key, leaf in regressors.items():
    out[f"{key}.weight"] = _t(np.asarray(leaf["kernel"]).T[:, :, None, None])
    out[f"{key}.bias"] = _t(leaf["bias"])
  return out


def meta_state_from_flax(meta_params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
  """tl_jax φ {'what_<k>'|'where_<k>'|'which_<k>': {'fc': {kernel, bias}}} -> `MetaNets` state
  ('nets.<name>.weight' = kernel^T; 'which' kernel (C, C, 9) flattened row-major to (C, 9C)).
  Also converts a meta-gradient tree."""
  out = {}
  for name, sub in meta_params.items():
    k, b = np.asarray(sub["fc"]["kernel"]), np.asarray(sub["fc"]["bias"])
    out[f"nets.{name}.weight"] = _t(k.reshape(k.shape[0], -1).T)
    out[f"nets.{name}.bias"] = _t(b.reshape(-1))
  return out


def target_state_from_flax(tree: Mapping[str, Any]) -> dict[str, torch.Tensor]:
  """A tl_jax target param-shaped tree (params, gradients or momentum) -> twin parameter names."""
  return torch_twins.state_dict_from_flax({"params": tree})


def load_kt_state(tkt: TorchKnowledgeTransfer, state: Any,
                  source_variables: Mapping[str, Any]) -> TorchKnowledgeTransfer:
  """Copies a tl_jax `KTState` and the frozen source's variables (not part of the state) into
  `tkt`: source, target params / batch_stats, regressors, SGD momentum (the TraceState inside
  `state.opt_state`, the optax state of the default `sgd_tx`), φ and, if it has taken steps, the
  Adam moments. The LR is not in the state (`iteration` takes it), so an LR scale other than 1
  (reduce-on-plateau) is rejected rather than silently dropped."""
  c = tkt.config
  scale = optim.get_lr_scale(state.opt_state)
  if scale != 1.0:
    raise ConfigError("opt_state.lr_scale", scale, [1.0],
                      hint="pass lr * scale to TorchKnowledgeTransfer.iteration instead")
  torch_twins.load_twin_from_flax(tkt.source, source_variables)
  tkt.source.eval()
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  torch_twins.load_twin_from_flax(tkt.target, variables)
  tkt.target.train()
  with torch.no_grad():
    tkt.regressors.load_state_dict(regressor_state_from_flax(state.regressors), strict=True)
    if c.method in META_METHODS:
      tkt.meta.load_state_dict(meta_state_from_flax(state.meta_params), strict=True)
  # momentum buffers (torch SGD: buf ← μ buf + d once a buffer exists == tl_jax from v); with
  # momentum 0, sgd_tx has no TraceState and torch SGD keeps no buffer
  tkt.theta_opt.state.clear()
  if c.momentum:
    velocity = momentum_of(state.opt_state)
    v = {**{f"t.{k}": t for k, t in target_state_from_flax(velocity["target"]).items()},
         **{f"r.{k}": t for k, t in regressor_state_from_flax(velocity["regressors"]).items()}}
    named = [(f"t.{n}", p) for n, p in tkt.target.named_parameters()] + \
            [(f"r.{n}", p) for n, p in tkt.regressors.named_parameters()]
    for n, p in named:
      tkt.theta_opt.state[p] = {"momentum_buffer": v[n].clone()}
  if tkt.meta_opt is not None:
    tkt.meta_opt.state.clear()
    adam = _find_adam_state(state.meta_opt_state)
    count = int(np.asarray(adam.count))
    if count > 0:
      mu, nu = meta_state_from_flax(adam.mu), meta_state_from_flax(adam.nu)
      for n, p in tkt.meta.named_parameters():
        tkt.meta_opt.state[p] = {"step": torch.tensor(float(count)), "exp_avg": mu[n].clone(),
                                 "exp_avg_sq": nu[n].clone()}
  return tkt


def _find_adam_state(opt_state: Any) -> Any:
  """The ScaleByAdamState inside optax.chain(add_decayed_weights, adam)'s nested tuples."""
  stack = [opt_state]
  while stack:
    s = stack.pop()
    if hasattr(s, "mu") and hasattr(s, "nu") and hasattr(s, "count"):
      return s
    if isinstance(s, (tuple, list)):
      stack.extend(s)
  raise ConfigError("meta_opt_state", type(opt_state).__name__, "an optax Adam state")


def from_tl_jax(kt: Any, state: Any, source_variables: Mapping[str, Any], source_twin: nn.Module,
                target_twin: nn.Module, lr: float = 0.1) -> TorchKnowledgeTransfer:
  """A `TorchKnowledgeTransfer` with `kt`'s pairs / config, `state`'s numbers and the source
  `source_variables` (the ones `kt.iteration` is called with)."""
  return load_kt_state(TorchKnowledgeTransfer(source_twin, target_twin, kt.pairs, kt.config,
                                              lr=lr), state, source_variables)


def target_twin_state(tkt: TorchKnowledgeTransfer) -> dict[str, torch.Tensor]:
  """Target parameters by twin name (for comparisons with `target_state_from_flax`)."""
  return {n: p.detach() for n, p in tkt.target.named_parameters()}


def momentum_state(tkt: TorchKnowledgeTransfer) -> dict[str, torch.Tensor]:
  """SGD momentum buffers keyed like `target_state_from_flax` ('t.') / regressors ('r.')."""
  out = {}
  for pre, mod in (("t.", tkt.target), ("r.", tkt.regressors)):
    for n, p in mod.named_parameters():
      out[pre + n] = tkt.theta_opt.state[p]["momentum_buffer"]
  return out


__all__ = ["TORCH_METHODS", "MetaNets", "TorchKnowledgeTransfer", "from_tl_jax", "load_kt_state",
           "meta_state_from_flax", "momentum_state", "regressor_state_from_flax", "resize_bilinear",
           "target_state_from_flax", "target_twin_state", "twin_feature_names"]
