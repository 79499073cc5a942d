"""Fidelity to the authors' L2T code: BN statistics updated as the reference does, PyTorch's
unbiased running variance, the L2T-www 'which' variants, the meta-gradient's precision."""

from __future__ import annotations

import json

import chex
import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

from tests.helpers import tiny_config, write_tiny_npz
from tests.test_kt_bilevel import (_add, _lookahead_inputs, _random_like, _setup,
                                   _with_random_momentum, assert_meta_gradient_matches_fd)
from tests.test_kt_experiment import _kt_config as _kt_experiment_config
from tl_jax import experiment
from tl_jax.errors import ConfigError
from tl_jax.kt import KTConfig, all_to_all, count_meta_params, init_meta_params, pairs_for_models
from tl_jax.kt.bilevel import cast_floating
from tl_jax.models.layers import BatchNorm, batch_norm_mask, bn_running_var


# ----------------------------------------------------------------------------- BN statistics

def test_reference_bn_updates_equal_real_step_then_one_forward_at_theta0():
  with jax.enable_x64(True):
    kt_ref, state, batch, sv = _setup("l2t_ww", dtype=jnp.float64)
    kt_one, _, _, _ = _setup("l2t_ww", dtype=jnp.float64, bn_updates="single")
    key = jax.random.PRNGKey(5)
    ref, _ = jax.jit(kt_ref.iteration)(state, batch, key, sv)
    one, _ = jax.jit(kt_one.iteration)(state, batch, key, sv)
    # θ, momentum and φ do not depend on the running statistics
    chex.assert_trees_all_equal(ref.params, one.params)
    chex.assert_trees_all_equal(ref.meta_params, one.meta_params)
    # 'single': the real step's update only; 'reference': then one train-mode forward at θ_0
    ctx, _, k_meta = jax.jit(kt_one.prepare)(state, batch, key, sv)
    r0 = jax.random.split(k_meta, kt_one.config.inner_steps + 2)[0]
    _, _, expected = jax.jit(kt_one.target_forward)(one.params, one.batch_stats, ctx["x"], r0,
                                                    ctx["mask"])
    chex.assert_trees_all_close(ref.batch_stats, expected, rtol=1e-12, atol=1e-14)
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref.batch_stats,
                        one.batch_stats)
    assert max(jax.tree.leaves(diff)) > 1e-4  # the two modes really differ


def test_ufm_has_one_bn_update_in_either_mode():
  kt_ref, state, batch, sv = _setup("ufm")
  kt_one, _, _, _ = _setup("ufm", bn_updates="single")
  a, _ = jax.jit(kt_ref.iteration)(state, batch, jax.random.PRNGKey(0), sv)
  b, _ = jax.jit(kt_one.iteration)(state, batch, jax.random.PRNGKey(0), sv)
  chex.assert_trees_all_equal(a.batch_stats, b.batch_stats)


@pytest.mark.parametrize("masked", [False, True])
def test_unbiased_running_var_matches_torch_batchnorm2d(masked):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  bn = BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  v = bn.init(jax.random.PRNGKey(0), jnp.zeros((6, 5, 5, 4)))
  tbn = torch.nn.BatchNorm2d(4, momentum=0.1, eps=1e-5)
  mask = np.array([1, 1, 1, 1, 0, 0], np.float32) if masked else None
  for i in range(3):
    x = (rng.standard_normal((6, 5, 5, 4)) * (i + 1) + i).astype(np.float32)
    with batch_norm_mask(None if mask is None else jnp.asarray(mask)), bn_running_var("unbiased"):
      y, upd = bn.apply(v, jnp.asarray(x), mutable=["batch_stats"])
    v = {"params": v["params"], "batch_stats": upd["batch_stats"]}
    real = x if mask is None else x[mask > 0]
    ty = tbn(torch.tensor(real).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(np.asarray(y)[:len(real)], ty, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(v["batch_stats"]["var"], tbn.running_var.numpy(), rtol=1e-5)
  np.testing.assert_allclose(v["batch_stats"]["mean"], tbn.running_mean.numpy(), rtol=1e-5,
                             atol=1e-6)
  with batch_norm_mask(None if mask is None else jnp.asarray(mask)):  # flax's biased update
    _, biased = bn.apply(v, jnp.asarray(x), mutable=["batch_stats"])
  assert not np.allclose(biased["batch_stats"]["var"], tbn.running_var.numpy(), rtol=1e-5)


def test_bn_running_var_rejects_unknown_kind():
  with pytest.raises(ConfigError, match="model.bn_running_var"):
    with bn_running_var("pytorch"):
      pass


# ----------------------------------------------------------------------------- L2T-www variants

@pytest.mark.parametrize("which_input,which_init", [("pooled", "torch"), ("map", "identity"),
                                                    ("map", "torch")])
def test_which_variants_meta_gradient_matches_finite_differences_float64(which_input, which_init):
  with jax.enable_x64(True):
    kt, state, batch, sv = _setup("l2t_www", dtype=jnp.float64, which_input=which_input,
                                  which_init=which_init)
    key = jax.random.PRNGKey(3)
    state = _with_random_momentum(state, 1, 0.05)
    phi = _add(state.meta_params, _random_like(state.meta_params, 4, 0.2))
    args = _lookahead_inputs(kt, state, batch, key, sv)
    g = assert_meta_gradient_matches_fd(kt, phi, args)
    which = [v for k, v in g.items() if k.startswith("which_")]
    assert float(optax.tree.norm(which)) > 0


def test_which_map_shapes_and_identity_start():
  kt, state, batch, sv = _setup("l2t_www", which_input="map")
  ww, _, _, _ = _setup("l2t_ww")
  # h of pair 0-2 reads source map 'a' (8x8, 4 channels): kernel (C, H*W, 9)
  shapes = jax.tree.map(jnp.shape, state.meta_params)
  assert shapes["which_a__t2"]["fc"]["kernel"] == (4, 64, 9)
  assert shapes["which_b__t0"]["fc"]["kernel"] == (6, 16, 9)
  out = kt.meta_outputs(state, batch["image"], sv)
  for v in out.values():  # identity init: γ ≡ 1, so L2T-www starts as L2T-ww
    np.testing.assert_allclose(v["gamma"], 1.0, rtol=1e-6)
  args = _lookahead_inputs(kt, state, batch, jax.random.PRNGKey(0), sv)
  phi_ww = {k: v for k, v in state.meta_params.items() if not k.startswith("which_")}
  np.testing.assert_allclose(kt.meta_objective(state.meta_params, *args),
                             ww.meta_objective(phi_ww, *args), rtol=1e-6)
  torch_init, _, _, _ = _setup("l2t_www", which_input="map", which_init="torch")
  st = torch_init.init(jax.random.PRNGKey(2), {"params": state.params,
                                                "batch_stats": state.batch_stats})
  k = np.asarray(st.meta_params["which_a__t2"]["fc"]["kernel"])
  assert 0 < np.abs(k).max() <= 1 / np.sqrt(64) and k.std() > 0.3 / np.sqrt(64)


def test_which_parameter_counts_for_the_thesis_pairs():
  from tl_jax import models
  src, tgt = models.create_model("resnet32", 200), models.create_model("vgg9", 10)
  x = jnp.zeros((1, 32, 32, 3))
  sv = jax.eval_shape(lambda k: src.init(k, x), jax.random.PRNGKey(0))
  tv = jax.eval_shape(lambda k: tgt.init(k, x), jax.random.PRNGKey(0))
  pairs = pairs_for_models(all_to_all([4, 9, 14], range(5)), src, sv, tgt, tv, (32, 32, 3))
  counts = {w: count_meta_params(jax.eval_shape(
      lambda k, w=w: init_meta_params(pairs, True, k, w), jax.random.PRNGKey(0)))["which"]
      for w in ("pooled", "map")}
  assert counts == {"pooled": 246_960, "map": 1_295_280}


# ----------------------------------------------------------------------------- precision

def test_meta_dtype_float64_is_the_float64_meta_gradient_and_keeps_state_float32():
  kt32, state, batch, sv = _setup("l2t_ww")
  kt64, _, _, _ = _setup("l2t_ww", meta_dtype="float64")
  key = jax.random.PRNGKey(1)
  state = _with_random_momentum(state, 1, 0.05)
  args = _lookahead_inputs(kt32, state, batch, key, sv)
  _, g64, _ = jax.jit(lambda *a: kt32.meta_gradient(*a, dtype="float64"))(state.meta_params, *args)
  _, g32, _ = jax.jit(kt32.meta_gradient)(state.meta_params, *args)
  assert jax.tree.leaves(g64)[0].dtype == jnp.float32
  with jax.enable_x64(True):  # the same point, all in float64
    a64 = cast_floating((state.meta_params,) + args[:-1], jnp.float64)
    expected = jax.jit(jax.grad(kt32.meta_objective))(*a64, args[-1])
  chex.assert_trees_all_close(g64, cast_floating(expected, jnp.float32), rtol=1e-6, atol=1e-10)
  err = float(optax.tree.norm(jax.tree.map(jnp.subtract, g32, g64)) / optax.tree.norm(g64))
  assert 0 < err < 0.5  # float32 differs from float64 (roundoff), yet points the same way
  new, m = jax.jit(kt64.iteration)(state, batch, key, sv)
  assert {x.dtype for x in jax.tree.leaves((new.params, new.meta_params, new.batch_stats))} == {
      jnp.dtype("float32")}
  assert np.isfinite(float(m["meta_grad_norm"]))


def test_kt_config_rejects_unknown_precision_choices():
  for field, value in (("meta_dtype", "float16"), ("matmul_precision", "tf32"),
                       ("bn_updates", "twice"), ("which_input", "image"), ("which_init", "he")):
    with pytest.raises(ConfigError, match=f"kt.{field}"):
      _setup("l2t_www", **{field: value})
  assert KTConfig().bn_updates == "reference" and KTConfig().matmul_precision == "highest"


# ----------------------------------------------------------------------------- the probe

@pytest.fixture(scope="module")
def kt_setup(tmp_path_factory):
  data = write_tiny_npz(tmp_path_factory.mktemp("data"))
  src = tmp_path_factory.mktemp("source")
  experiment.train_and_evaluate(tiny_config(data, **{"model.kwargs.width": 8}), src)
  return data, src


def _kt_config(data, src, **kw):
  return _kt_experiment_config(data, src, kw.pop("kt.method", "l2t_ww"),
                               **{"train.num_epochs": 2, **kw})


def test_precision_probe_records_and_changes_nothing(kt_setup, tmp_path):
  from tl_jax.analysis import meta_precision
  from tl_jax.transfer import init as tinit
  data, src = kt_setup
  plain = experiment.train_and_evaluate(_kt_config(data, src), tmp_path / "plain")
  probed = experiment.train_and_evaluate(
      _kt_config(data, src, **{"kt.precision_probe_every": 2}), tmp_path / "probed")
  assert plain["test_accuracy"] == probed["test_accuracy"]
  chex.assert_trees_all_equal(tinit.load_variables(tmp_path / "plain"),
                              tinit.load_variables(tmp_path / "probed"))
  rows = meta_precision.read_probe(tmp_path / "probed")
  assert [r["step"] for r in rows] == [3, 6]  # 3 iterations per epoch: each epoch end
  for r in rows:
    s = r["settings"]
    assert s["float64@highest"]["cosine"] == pytest.approx(1.0)
    assert s["float64@highest"]["rel_error"] == 0.0
    assert 0.5 < s["float32@highest"]["cosine"] <= 1.0 + 1e-9
    assert len(s["float32@highest"]["lookahead"]) == 4  # T = 2 wfm, 1 CE, the meta loss
    assert r["sensitivity"] > 0
  fig = meta_precision.plot([tmp_path / "probed"], tmp_path / "p.png", title="tiny")
  assert (tmp_path / "p.png").exists()
  assert fig.axes[0].get_title().startswith("cosine") and fig._suptitle.get_text() == "tiny"
  assert meta_precision.main(["--runs", str(tmp_path / "plain"), "--out",
                              str(tmp_path / "q.png")]) == 2
  with pytest.raises(ConfigError, match="kt.precision_probe_every"):
    experiment.check_honoured(_kt_config(data, src, **{"kt.method": "ufm",
                                                        "kt.precision_probe_every": 5}))
  assert json.loads((tmp_path / "probed" / "config.json").read_text())["kt"][
      "precision_probe_every"] == 2


def test_max_pool_float64_inside_a_float32_jit():
  """The float64 meta-gradient enables x64 inside a jit traced without it; XLA's reduce_window
  max gradient fails there, so float64 max pooling takes strided slices (same values)."""
  from flax import linen as nn
  from tl_jax.models.layers import max_pool
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 3))
  for window, strides in (((2, 2), (2, 2)), ((3, 3), (2, 2))):
    def g(x, window=window, strides=strides):
      with jax.enable_x64(True):
        x64 = x.astype(jnp.float64)
        y, vjp = jax.vjp(lambda z: max_pool(z, window, strides), x64)
        return y.astype(jnp.float32), vjp(jnp.ones_like(y))[0].astype(jnp.float32)
    y, dx = jax.jit(g)(x)
    ref, ref_vjp = jax.vjp(lambda z: nn.max_pool(z, window, strides), x)
    np.testing.assert_allclose(y, ref, rtol=1e-7)
    np.testing.assert_allclose(dx, ref_vjp(jnp.ones_like(ref))[0], rtol=1e-7)
