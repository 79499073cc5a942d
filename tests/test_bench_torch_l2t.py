"""The PyTorch L2T iteration (tl_jax/bench/torch_l2t.py) computes the same numbers as tl_jax's
`KnowledgeTransfer.iteration` from the same weights, so launch/bench_l2t.py times equal work.

Tiny setting: ResNet-32 twin source of widths (4, 8, 8), VGG-9-layout target with 8-channel convs
(both the real architectures, narrow), 32x32 inputs, batch 2, identity preprocess, 4 pairs that
cover the three resize cases (same size, 16->8 down, 8->16 up, 8->2 down), T = 2, non-zero
initial momentum and perturbed φ (so a transposed kernel or a wrong momentum port shows).

The twin updates BN running statistics once per iteration (at the real step), so the tl_jax side
runs with `bn_updates='single'`; the reference's second update at θ_0 (the default) is tested in
tests/test_kt_fidelity.py. θ's weight decay is 0.05 here (default 1e-4) so that a decay mistake is larger than the
tolerance (lr·ω·|θ| is then ~1e-3..2e-2 of a step); everything else is KTConfig's defaults.

Tolerances (float32 on both sides, different conv / reduction orders):
- θ after the real step and the momentum buffers, per leaf: |Δθ_torch - Δθ_jax| <= 2e-3 ·
  max|Δθ_jax| (the update compared at its own scale). Most leaves agree to ~1e-6 of their step;
  the loosest are the conv biases in front of BN (observed 6e-4): their gradient is analytically
  0 (BN removes the mean) and in float32 is cancellation noise of a sum over B·H·W terms;
- losses (ce, wfm): atol 1e-5, rtol 1e-5; meta loss rtol 1e-4 (observed 1.3e-5 in iteration 2);
- meta-gradient: atol 1e-4 · max|g|, rtol 1e-3 (second order through 4 unrolled
  forward/backward passes accumulates more rounding; observed ~6e-6 · max|g|). L2T-www: atol
  1e-2 · max|g|, rtol 0.1: this draw is worse conditioned in float32 (observed 3e-3 · max|g|);
  the same comparison run in float64 on both sides (JAX x64, torch double; not part of this file,
  it would need a third compile) agreed to 1e-13 relative, so the gap is float32 rounding;
- φ after Adam, on Δφ = φ_new - φ_old: atol 1e-2 · meta_lr where |g + ωφ| > 1e-6 (Adam's first
  step ≈ lr · sign(g + ωφ) there; observed ~1e-5 · meta_lr); where |g + ωφ| is within 100x of
  Adam's eps = 1e-8 the step lr·g'/(|g'|+eps) magnifies g's float32 rounding, so only the bound
  |Δφ| <= lr is shared there.
"""

from __future__ import annotations

import functools

import chex
import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

torch = pytest.importorskip("torch")

from tl_jax import models  # noqa: E402
from tl_jax.bench import torch_l2t as tl  # noqa: E402
from tl_jax.kt import (KTConfig, KnowledgeTransfer, momentum_of, pairs_for_models,  # noqa: E402
                       with_momentum)
from tl_jax.weights import torch_twins as tt  # noqa: E402

WIDTHS = (4, 8, 8)
CFG = (8, "M", 8, "M", 8, 8, "M", 8, 8, "M", 8, 8, "M")
PAIRS = "4-0,9-2,14-1,14-4"
B, NC, LR = 2, 3, 0.1
TOL = dict(atol=1e-5, rtol=1e-5)
STEP_TOL = 2e-3


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
  """Numerics only: 1 thread avoids OpenMP spin-wait stalls on the shared, busy cores (a tiny
  step took ~30x longer with 2 spinning threads while other jobs ran)."""
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)


def _np(d):
  return {k: np.asarray(v) for k, v in d.items()}


@functools.lru_cache(maxsize=None)
def _models(pairs_spec: str = PAIRS):
  src = models.create_model("resnet32", 5, widths=WIDTHS)
  tgt = models.create_model("vgg9", NC, cfg=CFG)
  x0 = jnp.zeros((1, 32, 32, 3))
  sv, tv = src.init(jax.random.key(0), x0), tgt.init(jax.random.key(1), x0)
  rng = np.random.default_rng(0)
  # "pretrained" source: non-trivial running stats (eval-mode BN must use them) that keep
  # most channels alive (pooled inputs != 0, so the meta-net kernels get gradients)
  bs = {"mean": lambda s: rng.normal(0.0, 0.05, s), "var": lambda s: rng.uniform(0.5, 1.5, s)}
  stats = jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.asarray(bs[p[-1].key](a.shape), jnp.float32), sv["batch_stats"])
  sv = {"params": sv["params"], "batch_stats": stats}
  pairs = pairs_for_models(pairs_spec, src, sv, tgt, tv, (32, 32, 3))
  return src, tgt, sv, tv, pairs


def _capture_meta_grad(kt):
  """Wraps kt.meta_tx so the jitted `kt.iteration` also hands back the meta-gradient it fed to
  Adam (the very array, not a recomputation)."""
  inner, seen = kt.meta_tx, []

  def update(g, s, p=None):
    seen.append(g)
    return inner.update(g, s, p)
  kt.meta_tx = optax.GradientTransformation(inner.init, update)

  @jax.jit
  def run(state, batch, key, source_variables):
    seen.clear()
    new, metrics = kt.iteration(state, batch, key, source_variables)
    return new, metrics, (seen[0] if seen else {})
  return run


def _run(method, pairs_spec=PAIRS, weight_decay=0.05, **cfg):
  src, tgt, sv, tv, pairs = _models(pairs_spec)
  # the twin updates BN statistics once per iteration, at the real step
  cfg = {"bn_updates": "single", **cfg}
  kt = KnowledgeTransfer(src, tgt, pairs, KTConfig(method=method, weight_decay=weight_decay, **cfg), lambda s: jnp.asarray(LR))
  rng = np.random.default_rng(1)
  state = kt.init(jax.random.key(2), tv)
  noise = lambda s, a: jnp.asarray(a + rng.normal(0, s, a.shape), jnp.float32)  # noqa: E731
  velocity = jax.tree.map(functools.partial(noise, 0.01), momentum_of(state.opt_state))
  state = state.replace(meta_params=jax.tree.map(functools.partial(noise, 0.05), state.meta_params),
                        opt_state=with_momentum(state.opt_state, velocity))
  batch = {"image": jnp.asarray(rng.standard_normal((B, 32, 32, 3)), jnp.float32),
           "label": jnp.asarray([0, 2], jnp.int32)}
  tkt = tl.TorchKnowledgeTransfer(tt.ResNet32L2T(5, WIDTHS), tt.VGG9(NC, cfg=CFG), pairs, kt.config)
  tl.load_kt_state(tkt, state, sv)
  run = _capture_meta_grad(kt)
  new, metrics, meta_grad = run(state, batch, jax.random.key(3), sv)
  got = _torch_iteration(tkt, batch)
  return state, new, metrics, meta_grad, tkt, got, (kt, run, batch, sv)


def _torch_iteration(tkt, batch):
  return tkt.iteration(tt.nhwc_to_torch(batch["image"]),
                       torch.from_numpy(np.asarray(batch["label"]).astype(np.int64)), LR)


def _close_per_leaf(got, want, base=None, frac=STEP_TOL):
  """|got - want| <= frac · max|want - base| leaf by leaf (base: the pre-step values, so the
  update itself is compared at its own scale)."""
  for k, w in want.items():
    b = 0.0 if base is None else np.asarray(base[k])
    dw, dg = np.asarray(w) - b, np.asarray(got[k]) - b
    np.testing.assert_allclose(dg, dw, atol=frac * np.abs(dw).max() + 1e-12, rtol=0, err_msg=k)


def _check_real_step(state, new, metrics, tkt, got):
  _close_per_leaf(_np(tl.target_twin_state(tkt)), _np(tl.target_state_from_flax(new.params)),
                  _np(tl.target_state_from_flax(state.params)))
  _close_per_leaf(_np(tkt.regressors.state_dict()), _np(tl.regressor_state_from_flax(new.regressors)),
                  _np(tl.regressor_state_from_flax(state.regressors)))
  velocity = momentum_of(new.opt_state)
  want_v = {**{f"t.{k}": v for k, v in tl.target_state_from_flax(velocity["target"]).items()},
            **{f"r.{k}": v for k, v in tl.regressor_state_from_flax(velocity["regressors"]).items()}}
  _close_per_leaf(_np(tl.momentum_state(tkt)), _np(want_v))
  for k in ("ce", "wfm", "loss"):
    np.testing.assert_allclose(got[k], float(metrics[k]), **TOL)
  # BN: running means agree; running_var differs by design (torch: unbiased batch variance)
  sd = tkt.target.state_dict()
  for i in range(sum(1 for v in CFG if v != "M")):
    np.testing.assert_allclose(sd[f"bn{i}.running_mean"].numpy(),
                               np.asarray(new.batch_stats[f"bn{i}"]["mean"]), **TOL)
  # the step moved θ (so the comparison is not of two unchanged copies)
  moved = tl.target_state_from_flax(state.params)
  assert max(float((moved[k] - v).abs().max()) for k, v in tl.target_twin_state(tkt).items()) > 1e-3


def _check_meta(state, new, metrics, meta_grad, tkt, got, grad_tol=1e-4):
  assert float(metrics["nonfinite"]) == 0.0
  np.testing.assert_allclose(got["meta_loss"], float(metrics["meta_loss"]), rtol=1e-4, atol=1e-6)
  want_g = _np(tl.meta_state_from_flax(meta_grad))
  got_g = _np(tkt.last_meta_grad)
  gmax = max(np.abs(v).max() for v in want_g.values())
  assert gmax > 1e-4
  chex.assert_trees_all_close(got_g, want_g, atol=grad_tol * gmax, rtol=10 * grad_tol)
  # the twin's meta-gradient is non-zero, for the 'what' and 'where' kernels too (second order)
  for kind in ("what", "where"):
    assert max(np.abs(v).max() for k, v in got_g.items() if kind in k and k.endswith("weight")) > 1e-6
  old = _np(tl.meta_state_from_flax(state.meta_params))
  want_d = {k: v - old[k] for k, v in _np(tl.meta_state_from_flax(new.meta_params)).items()}
  got_d = {k: v.detach().numpy() - old[k] for k, v in tkt.meta.state_dict().items()}
  # Adam's first step is lr·g'/(|g'| + 1e-8) with g' = g + ωφ: where |g'| is near eps the step
  # amplifies g's own rounding (checked above), so Δφ is compared where |g'| > 100 eps.
  c = tkt.config
  lr, wd = c.meta_lr, c.meta_weight_decay
  sure = {k: np.abs(want_g[k] + wd * old[k]) > 1e-6 for k in want_d}
  assert sum(m.sum() for m in sure.values()) > 0.5 * sum(m.size for m in sure.values())
  assert max(np.abs(v).max() for v in want_d.values()) > 0.5 * lr  # Adam moved φ
  chex.assert_trees_all_close({k: np.where(sure[k], v, 0) for k, v in got_d.items()},
                              {k: np.where(sure[k], v, 0) for k, v in want_d.items()},
                              atol=1e-2 * lr, rtol=0)
  chex.assert_trees_all_close(got_d, want_d, atol=2 * lr, rtol=0)  # |Adam step| <= lr elsewhere


def test_l2t_ww_iteration_matches_tl_jax():
  state, new, metrics, meta_grad, tkt, got, (kt, run, batch, sv) = _run("l2t_ww")
  _check_real_step(state, new, metrics, tkt, got)
  _check_meta(state, new, metrics, meta_grad, tkt, got)
  assert "which" not in str(list(tkt.meta.state_dict()))
  # a second iteration from the ported post-iteration state: ports Adam's moments (count 1),
  # the updated BN statistics and momentum; reuses the compiled step
  tkt2 = tl.TorchKnowledgeTransfer(tt.ResNet32L2T(5, WIDTHS), tt.VGG9(NC, cfg=CFG), kt.pairs,
                                   kt.config)
  tl.load_kt_state(tkt2, new, sv)
  assert all(float(s["step"]) == 1.0 for s in tkt2.meta_opt.state.values())
  new2, metrics2, meta_grad2 = run(new, batch, jax.random.key(3), sv)
  got2 = _torch_iteration(tkt2, batch)
  _check_real_step(new, new2, metrics2, tkt2, got2)
  _check_meta(new, new2, metrics2, meta_grad2, tkt2, got2)


def test_ufm_iteration_matches_tl_jax():
  state, new, metrics, meta_grad, tkt, got, _ = _run("ufm")
  assert meta_grad == {} and tkt.meta_opt is None and "meta_loss" not in got
  _check_real_step(state, new, metrics, tkt, got)


def test_l2t_www_meta_gradient_matches_tl_jax():
  """T = 1 and two pairs (γ grid 3x3 resized up to 8x8 and 16x16) keep this compile short; the
  'which' grid (row-major 3x3, softplus, resize) must port and differentiate like tl_jax's."""
  state, new, metrics, meta_grad, tkt, got, _ = _run("l2t_www", "9-2,14-1", inner_steps=1)
  _check_real_step(state, new, metrics, tkt, got)
  _check_meta(state, new, metrics, meta_grad, tkt, got, grad_tol=1e-2)
  which = {k: v for k, v in tkt.last_meta_grad.items() if "which" in k}
  assert which and max(float(v.abs().max()) for v in which.values()) > 1e-6


def test_unknown_method_is_config_error():
  from tl_jax.errors import ConfigError
  _, _, _, _, pairs = _models()
  for cfg in (KTConfig(method="scratch"), KTConfig(first_order=True), KTConfig(bn_frozen=True)):
    with pytest.raises(ConfigError):
      tl.TorchKnowledgeTransfer(tt.ResNet32L2T(5, WIDTHS), tt.VGG9(NC, cfg=CFG), pairs, cfg)


def test_load_kt_state_rejects_an_lr_scale():
  """The twin takes its LR per call; a reduce-on-plateau scale in the optax state would be lost."""
  from tl_jax.errors import ConfigError
  from tl_jax.train import optim
  src, tgt, sv, tv, pairs = _models()
  kt = KnowledgeTransfer(src, tgt, pairs, KTConfig(method="ufm"), lambda s: jnp.asarray(LR))
  state = kt.init(jax.random.key(2), tv)
  tkt = tl.TorchKnowledgeTransfer(tt.ResNet32L2T(5, WIDTHS), tt.VGG9(NC, cfg=CFG), pairs, kt.config)
  tl.load_kt_state(tkt, state, sv)
  with pytest.raises(ConfigError):
    tl.load_kt_state(tkt, state.replace(opt_state=optim.set_lr_scale(state.opt_state, 0.5)), sv)


def _bench_l2t():
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parent.parent / "launch" / "bench_l2t.py"
  spec = importlib.util.spec_from_file_location("bench_l2t_under_test", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  return bench


def test_bench_flop_count_is_xlas_for_a_matmul():
  """The FLOP counts launch/bench_l2t.py and bench_sweep.py report (launch/benchmark.py's
  `xla_flops`) are XLA's: 2·m·k·n for a (m, k) @ (k, n) matmul (a wrong key would read 0)."""
  bench = _bench_l2t()
  a, b = jnp.ones((64, 96), jnp.float32), jnp.ones((96, 80), jnp.float32)
  compiled = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
  assert bench.bm.xla_flops(compiled) == pytest.approx(2 * 64 * 96 * 80, rel=1e-6)


def test_bench_torch_augment_is_pad4_crop_flip_normalise():
  """launch/bench_l2t.py's torch augmentation = the JAX pipeline's transforms: every output is a
  32x32 crop of the zero-padded (4 px) image, maybe h-flipped, ImageNet-normalised."""
  bench = _bench_l2t()
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  out = bench.torch_augment(torch.from_numpy(imgs), torch.Generator().manual_seed(0)).numpy()
  assert out.shape == (16, 3, 32, 32)
  mean, std = np.array(bench.IMAGENET_MEAN), np.array(bench.IMAGENET_STD)
  padded = np.pad(imgs.astype(np.float32), ((0, 0), (4, 4), (4, 4), (0, 0)))
  found = []
  for b in range(16):
    hits = [(r, c, f) for r in range(9) for c in range(9) for f in (False, True)
            if np.allclose(((padded[b, r:r + 32, c:c + 32][:, ::-1] if f else
                             padded[b, r:r + 32, c:c + 32]) / 255.0 - mean) / std,
                           out[b].transpose(1, 2, 0), atol=1e-5)]
    assert hits, b
    found.append(hits[0])
  assert len({h[:2] for h in found}) > 4 and {h[2] for h in found} == {False, True}
