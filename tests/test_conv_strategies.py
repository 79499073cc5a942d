"""Conv formulations (layers.conv_depthwise_shifts / conv_1x1_matmul / conv_im2col /
conv_lax_loopsafe / conv_toeplitz) equal `conv_lax` in value, gradients and Hessian-vector
products; strategy selection (context, env var, backend defaults) and whole models (EfficientNet-
Lite0, LeNet-5) under the new strategies.

Why second order: the L2T meta-gradient differentiates through every conv twice, so a formulation
whose first derivative matches but whose second does not would silently corrupt it.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from tl_jax import models
from tl_jax.errors import ConfigError
from tl_jax.models import layers


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl="rbg")  # rbg: faster to compile on XLA:CPU (see test_models)


# (hw, k, stride, padding, cin, mult): depthwise cases, cin 8 unless noted.
DEPTHWISE = [
    ((7, 7), 3, 1, "SAME", 8, 1),
    ((7, 9), 3, 2, "SAME", 8, 1),        # odd sizes, TF 'SAME' (odd pad right/bottom)
    ((8, 8), 5, 2, "SAME", 8, 1),        # EfficientNet 5x5/2
    ((9, 6), 5, 1, "VALID", 8, 1),
    ((6, 7), 3, 2, ((2, 0), (1, 2)), 8, 1),  # explicit asymmetric pads
    ((5, 5), 1, 2, "VALID", 8, 1),       # 1x1 depthwise
    ((6, 6), 3, 1, 1, 4, 2),             # channel multiplier 2
]
# (hw, stride, padding, cin, cout): 1x1 cases.
POINTWISE = [
    ((7, 7), 1, "SAME", 8, 6),
    ((7, 9), 2, "SAME", 8, 6),           # odd sizes, stride 2 (ResNet shortcut)
    ((8, 8), 2, "VALID", 5, 12),
    ((5, 6), 1, ((1, 0), (0, 2)), 4, 3),  # explicit pads on a 1x1 conv
    ((6, 5), 3, 0, 3, 4),
]


def _case(kind: str, case, dtype=jnp.float32):
  """(x, kernel, strides, pads, groups) for one parametrised case, random values in `dtype`."""
  if kind == "depthwise":
    hw, k, s, padding, cin, mult = case
    kshape, groups = (k, k, 1, cin * mult), cin
  else:
    hw, s, padding, cin, cout = case
    k, kshape, groups = 1, (1, 1, cin, cout), 1
  x = jax.random.normal(_key(1), (2,) + hw + (cin,), dtype)
  kernel = jax.random.normal(_key(2), kshape, dtype)
  pads = layers.explicit_padding(padding, hw, (k, k), (s, s))
  return x, kernel, (s, s), pads, groups


def _derivatives(fn, x, kernel, strides, pads, groups):
  """value, grad of a scalar loss w.r.t. (x, kernel), and its Hessian-vector product along a
  fixed random direction (jvp of grad) - everything L2T's meta-gradient needs."""

  def loss(x, k):
    y = fn(x, k, strides, pads, groups)
    return jnp.sum(jnp.sin(y) * jnp.cos(0.5 * y))  # non-quadratic: the HVP depends on y

  vx = jax.random.normal(_key(3), x.shape, x.dtype)
  vk = jax.random.normal(_key(4), kernel.shape, kernel.dtype)
  grad = jax.grad(loss, argnums=(0, 1))
  _, hvp = jax.jvp(grad, (x, kernel), (vx, vk))
  return fn(x, kernel, strides, pads, groups), grad(x, kernel), hvp


def assert_close_scaled(actual, desired, rtol: float, scaled_atol: float) -> None:
  """Leafwise |a - d| <= rtol |d| + scaled_atol * max|d|. Why scaled: a conv output is a sum of
  many products, so its rounding error follows the size of the terms, not of the (possibly
  cancelling) result; a plain atol would be either meaningless on large leaves (HVPs ~1e3) or
  fail on entries near zero."""
  chex.assert_trees_all_equal_shapes_and_dtypes(actual, desired)
  for (path, a), d in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(desired)):
    scale = float(jnp.max(jnp.abs(d)))
    assert scale > 0, jax.tree_util.keystr(path)
    np.testing.assert_allclose(np.asarray(a), np.asarray(d), rtol=rtol, atol=scaled_atol * scale,
                               err_msg=jax.tree_util.keystr(path))


def _compare(impl, kind, case, dtype, tol):
  args = _case(kind, case, dtype)
  ref = jax.jit(lambda *a: _derivatives(layers.conv_lax, *a[:2], *args[2:]))(*args[:2])
  out = jax.jit(lambda *a: _derivatives(impl, *a[:2], *args[2:]))(*args[:2])
  assert out[0].dtype == dtype
  assert_close_scaled(out, ref, rtol=tol, scaled_atol=tol / 10)


@pytest.mark.parametrize("case", DEPTHWISE)
def test_depthwise_shifts_equals_lax(case):
  _compare(layers.conv_depthwise_shifts, "depthwise", case, jnp.float32, 1e-5)


@pytest.mark.parametrize("case", POINTWISE)
def test_1x1_matmul_equals_lax(case):
  _compare(layers.conv_1x1_matmul, "pointwise", case, jnp.float32, 1e-5)


@pytest.mark.parametrize("case", DEPTHWISE[1:3] + DEPTHWISE[4:5])
def test_im2col_depthwise_equals_lax(case):
  _compare(layers.conv_im2col, "depthwise", case, jnp.float32, 1e-5)


@pytest.mark.parametrize("impl,kind,case", [
    (layers.conv_depthwise_shifts, "depthwise", DEPTHWISE[1]),
    (layers.conv_depthwise_shifts, "depthwise", DEPTHWISE[4]),
    (layers.conv_depthwise_shifts, "depthwise", DEPTHWISE[6]),
    (layers.conv_1x1_matmul, "pointwise", POINTWISE[1]),
    (layers.conv_1x1_matmul, "pointwise", POINTWISE[3]),
])
def test_formulations_equal_lax_in_float64(impl, kind, case):
  with jax.enable_x64(True):
    _compare(impl, kind, case, jnp.float64, 1e-12)


# (hw, k, stride, padding, cin, cout): dense cases for the loop-safe derivatives.
DENSE = [
    ((7, 7), 3, 1, "SAME", 4, 6),
    ((7, 9), 3, 2, "SAME", 4, 6),        # odd sizes, TF 'SAME'
    ((9, 6), 5, 1, "VALID", 3, 5),
    ((6, 7), 3, 2, ((2, 0), (1, 2)), 4, 3),  # explicit asymmetric pads
    ((11, 11), 3, 2, "VALID", 3, 4),     # a stride that leaves the last row/column unread
    ((7, 7), 1, 2, "SAME", 4, 6),        # ResNet's strided 1x1 shortcut
]


def _dense_case(case, dtype):
  hw, k, s, padding, cin, cout = case
  x = jax.random.normal(_key(1), (2,) + hw + (cin,), dtype)
  kernel = jax.random.normal(_key(2), (k, k, cin, cout), dtype)
  return x, kernel, (s, s), layers.explicit_padding(padding, hw, (k, k), (s, s))


def _derivatives_reverse(fn, x, kernel, strides, pads):
  """value, gradient and a Hessian-vector product as reverse over reverse (the grad of <grad,
  v>), which is how the L2T meta-gradient differentiates twice; `conv_nhwc` has no forward
  mode (custom_vjp), so `_derivatives`' jvp does not apply."""

  def loss(x, k):
    y = fn(x, k, strides, pads, 1)
    return jnp.sum(jnp.sin(y) * jnp.cos(0.5 * y))

  v = (jax.random.normal(_key(3), x.shape, x.dtype),
       jax.random.normal(_key(4), kernel.shape, kernel.dtype))
  grad = jax.grad(loss, argnums=(0, 1))
  hvp = jax.grad(lambda x, k: sum(jnp.vdot(g, d) for g, d in zip(grad(x, k), v)),
                 argnums=(0, 1))
  return fn(x, kernel, strides, pads, 1), grad(x, kernel), hvp(x, kernel)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
@pytest.mark.parametrize("case", DENSE)
def test_loopsafe_equals_lax(case, dtype, tol):
  with jax.enable_x64(dtype == jnp.float64):
    x, kernel, strides, pads = _dense_case(case, dtype)
    ref = jax.jit(lambda x, k: _derivatives_reverse(layers.conv_lax, x, k, strides, pads))(
        x, kernel)
    out = jax.jit(lambda x, k: _derivatives_reverse(layers.conv_lax_loopsafe, x, k, strides,
                                                    pads))(x, kernel)
    assert out[0].dtype == dtype
    assert_close_scaled(out, ref, rtol=tol, scaled_atol=tol / 10)


# (hw, k, stride, padding, cin, cout, block): dense cases for the banded-matmul formulation.
TOEPLITZ = [
    ((12, 12), 5, 1, "VALID", 1, 6, None),     # LeNet-5's conv1 shape, default block (4 of 8)
    ((9, 11), 3, 1, "SAME", 3, 5, None),       # odd width: a prime (11) -> one block
    ((9, 11), 3, 1, "SAME", 3, 5, 4),          # a block that does not divide the width (4 of 11)
    ((7, 9), 3, 2, ((2, 0), (1, 2)), 4, 3, 2),  # strides and asymmetric pads
    ((8, 10), 5, (1, 2), "SAME", 2, 4, 3),     # different strides along h and w
]


def _toeplitz_case(case, dtype):
  hw, k, s, padding, cin, cout, block = case
  strides = s if isinstance(s, tuple) else (s, s)
  x = jax.random.normal(_key(1), (2,) + hw + (cin,), dtype)
  kernel = jax.random.normal(_key(2), (k, k, cin, cout), dtype)
  pads = layers.explicit_padding(padding, hw, (k, k), strides)
  fn = lambda x, k, s, p, g: layers.conv_toeplitz(x, k, s, p, g, block=block)  # noqa: E731
  return fn, (x, kernel, strides, pads, 1)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-4), (jnp.float64, 1e-12)])
@pytest.mark.parametrize("case", TOEPLITZ)
def test_toeplitz_equals_lax(case, dtype, tol):
  """Value, gradient and HVP both as jvp of grad and as reverse over reverse (the L2T way).
  float32 at 1e-4: the matmul sums the kh*kw*cin products in another order than XLA's conv, and
  the HVP of the oscillating loss amplifies that (up to 4e-5 relative on single entries); float64 at
  1e-12 is the strict check."""
  with jax.enable_x64(dtype == jnp.float64):
    fn, args = _toeplitz_case(case, dtype)
    x, kernel, strides, pads, _ = args
    ref = jax.jit(lambda x, k: _derivatives(layers.conv_lax, x, k, strides, pads, 1))(x, kernel)
    out = jax.jit(lambda x, k: _derivatives(fn, x, k, strides, pads, 1))(x, kernel)
    assert out[0].dtype == dtype
    assert_close_scaled(out, ref, rtol=tol, scaled_atol=tol / 10)
    ref = jax.jit(lambda x, k: _derivatives_reverse(layers.conv_lax, x, k, strides, pads))(
        x, kernel)
    out = jax.jit(lambda x, k: _derivatives_reverse(fn, x, k, strides, pads))(x, kernel)
    assert_close_scaled(out, ref, rtol=tol, scaled_atol=tol / 10)


def test_toeplitz_block_and_rejects_grouped():
  # largest divisor of the output width with block * cout <= 80 (1 if none)
  assert layers.toeplitz_block(28, 6) == 7      # LeNet-5 conv1: 7 x 6 = 42 columns
  assert layers.toeplitz_block(10, 16) == 5     # LeNet-5 conv2
  assert layers.toeplitz_block(32, 16) == 4     # ResNet-32's stem
  assert layers.toeplitz_block(7, 200) == 1
  with pytest.raises(ConfigError, match="conv_toeplitz"):
    layers.conv_toeplitz(jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 2, 4)), (1, 1), [(1, 1)] * 2, 2)


def _loop_conv_layouts(fn) -> list[str]:
  """dim_labels of every convolution XLA compiles for a lax.scan of SGD steps (first and second
  derivatives) through `fn`: what the engine's epoch loop looks like to XLA."""
  import re
  pads = ((1, 1), (1, 1))
  loss = lambda w, x: jnp.sum(jnp.tanh(fn(x, w, (1, 1), pads)))  # noqa: E731

  def step(w, x):
    g = jax.grad(loss)(w, x)
    return w - 0.1 * g - 0.01 * jax.grad(lambda w: jnp.vdot(jax.grad(loss)(w, x), g))(w), None

  w, xs = jnp.ones((3, 3, 4, 8)), jnp.ones((3, 2, 6, 6, 4))
  text = jax.jit(lambda w, xs: jax.lax.scan(step, w, xs)[0]).lower(w, xs).compile().as_text()
  return re.findall(r"convolution\(.*?dim_labels=(\S+?),", text)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU layout property")
def test_loopsafe_convs_stay_canonical_inside_a_scan():
  """Why `conv_lax_loopsafe` is the CPU default: inside a while loop XLA:CPU leaves jax's kernel
  gradient in a layout its fast kernels do not take (40-80x slower). Every convolution of the
  loop-safe version, to second order, is in the canonical NHWC/HWIO layout; plain `conv_lax`'s
  is not (so the check can fail)."""
  canonical = "b01f_01io->b01f"
  safe = _loop_conv_layouts(layers.conv_lax_loopsafe)
  assert len(safe) >= 3 and set(safe) == {canonical}, safe
  assert set(_loop_conv_layouts(layers.conv_lax)) != {canonical}


def test_comparison_detects_a_wrong_tap_order():
  """The tolerance above is tight enough to catch a plausible bug (a spatially flipped kernel,
  i.e. correlation vs convolution), so the equality tests can fail."""
  x, kernel, strides, pads, groups = _case("depthwise", DEPTHWISE[0])
  flipped = lambda x, k, *a: layers.conv_depthwise_shifts(x, k[::-1, ::-1], *a)
  ref = layers.conv_lax(x, kernel, strides, pads, groups)
  bad = flipped(x, kernel, strides, pads, groups)
  with pytest.raises(AssertionError):
    assert_close_scaled(bad, ref, rtol=1e-5, scaled_atol=1e-6)
  assert_close_scaled(layers.conv_depthwise_shifts(x, kernel, strides, pads, groups), ref,
                      rtol=1e-5, scaled_atol=1e-6)


def test_formulations_reject_other_shapes():
  x = jnp.zeros((1, 5, 5, 4))
  with pytest.raises(ConfigError, match="conv_depthwise_shifts"):
    layers.conv_depthwise_shifts(x, jnp.zeros((3, 3, 4, 4)), (1, 1), [(1, 1)] * 2, 1)
  with pytest.raises(ConfigError, match="conv_1x1_matmul"):
    layers.conv_1x1_matmul(x, jnp.zeros((3, 3, 4, 4)), (1, 1), [(1, 1)] * 2, 1)
  with pytest.raises(ConfigError, match="conv_1x1_matmul"):
    layers.conv_1x1_matmul(x, jnp.zeros((1, 1, 2, 4)), (1, 1), [(0, 0)] * 2, 2)


# ----------------------------------------------------------------------------- selection

def _impls_in_jaxpr(fn, *args) -> dict[str, int]:
  """Counts of XLA convs by kind, and of dot_generals, in the jaxpr of fn(*args)."""
  jaxpr = jax.make_jaxpr(fn)(*args)
  counts = {"conv_depthwise": 0, "conv_other": 0, "dot_general": 0}

  def walk(jx):
    for eqn in jx.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        g = eqn.params["feature_group_count"]
        counts["conv_depthwise" if g > 1 else "conv_other"] += 1
      elif eqn.primitive.name == "dot_general":
        counts["dot_general"] += 1
      for v in eqn.params.values():
        if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
          walk(v.jaxpr)
        elif hasattr(v, "eqns"):
          walk(v)

  walk(jaxpr.jaxpr)
  return counts


def test_conv_kind():
  assert layers.conv_kind((3, 3, 1, 8), 8) == "depthwise"
  assert layers.conv_kind((1, 1, 1, 8), 8) == "depthwise"
  assert layers.conv_kind((1, 1, 8, 16), 1) == "pointwise"
  assert layers.conv_kind((3, 3, 8, 16), 1) == "dense"
  assert layers.conv_kind((1, 1, 4, 16), 2) == "dense"  # grouped 1x1: neither formulation


def test_defaults_per_backend():
  """'auto': im2col on small maps; on CPU the measured table (depthwise as shifts, 1x1 as
  matmul, dense as XLA's conv); on GPU/TPU XLA's conv."""
  assert layers.CPU_CONV_DEFAULTS == {"depthwise": "shifts", "pointwise": "matmul",
                                      "dense": "lax_loopsafe"}
  assert layers.default_conv_impl("cpu", (3, 3, 1, 8), 8, (7, 7), (1, 1)) == "shifts"
  assert layers.default_conv_impl("cpu", (1, 1, 8, 8), 1, (7, 7), (1, 1)) == "matmul"
  assert layers.default_conv_impl("cpu", (1, 1, 8, 8), 1, (7, 7), (2, 2)) == "lax_loopsafe"
  assert layers.default_conv_impl("cpu", (3, 3, 16, 16), 1, (7, 7), (1, 1)) == "lax_loopsafe"
  # few channels (cin * cout <= 96), stride 1: the banded matmul; else XLA's conv
  assert layers.default_conv_impl("cpu", (5, 5, 1, 6), 1, (28, 28), (1, 1)) == "toeplitz"
  assert layers.default_conv_impl("cpu", (5, 5, 6, 16), 1, (10, 10), (1, 1)) == "toeplitz"
  assert layers.default_conv_impl("cpu", (3, 3, 3, 64), 1, (32, 32), (1, 1)) == "lax_loopsafe"
  assert layers.default_conv_impl("cpu", (3, 3, 3, 16), 1, (16, 16), (2, 2)) == "lax_loopsafe"
  assert layers.default_conv_impl("cpu", (3, 3, 2, 8), 2, (16, 16), (1, 1)) == "lax_loopsafe"
  for backend in ("gpu", "tpu"):
    assert layers.default_conv_impl(backend, (3, 3, 1, 8), 8, (7, 7), (1, 1)) == "lax"
    assert layers.default_conv_impl(backend, (1, 1, 8, 8), 1, (7, 7), (1, 1)) == "lax"
    assert layers.default_conv_impl(backend, (5, 5, 1, 6), 1, (28, 28), (1, 1)) == "lax"
  for backend in ("cpu", "gpu", "tpu"):
    assert layers.default_conv_impl(backend, (3, 3, 8, 8), 1, (2, 2), (1, 1)) == "im2col"
    assert layers.default_conv_impl(backend, (3, 3, 16, 16), 1, (2, 2), (1, 1), 0) == (
        "lax_loopsafe" if backend == "cpu" else "lax")
  assert layers.cpu_conv_impl((5, 5, 1, 8), 8, (1, 2), (2, 2)) == "im2col"


def test_cpu_table_is_used_on_cpu_only(monkeypatch):
  monkeypatch.setitem(layers.CPU_CONV_DEFAULTS, "depthwise", "shifts")
  assert layers.default_conv_impl("cpu", (3, 3, 1, 8), 8, (7, 7), (1, 1)) == "shifts"
  assert layers.default_conv_impl("cpu", (3, 3, 1, 8), 8, (2, 2), (1, 1)) == "im2col"
  assert layers.default_conv_impl("gpu", (3, 3, 1, 8), 8, (7, 7), (1, 1)) == "lax"


def test_context_env_and_precedence(monkeypatch):
  monkeypatch.delenv(layers.CONV_IMPL_ENV, raising=False)
  assert layers.conv_strategy_now() == dict.fromkeys(layers.CONV_KINDS, "auto")
  monkeypatch.setenv(layers.CONV_IMPL_ENV, "depthwise=shifts, pointwise=matmul")
  assert layers.conv_strategy_now() == {"depthwise": "shifts", "pointwise": "matmul",
                                        "dense": "auto"}
  with layers.conv_strategy(depthwise="lax"):  # the context wins over the env var
    assert layers.conv_strategy_now()["depthwise"] == "lax"
    with layers.conv_strategy("im2col"):          # nested: default for every kind
      assert set(layers.conv_strategy_now().values()) == {"im2col"}
    assert layers.conv_strategy_now()["pointwise"] == "matmul"
  monkeypatch.setenv(layers.CONV_IMPL_ENV, "lax")
  assert set(layers.conv_strategy_now().values()) == {"lax"}
  # an explicit choice wins over the small-map rule, 'auto' does not
  assert layers.select_conv_impl((3, 3, 8, 8), 1, (2, 2), (1, 1), backend="cpu") == "lax"
  monkeypatch.setenv(layers.CONV_IMPL_ENV, "")
  assert layers.select_conv_impl((3, 3, 8, 8), 1, (2, 2), (1, 1), backend="cpu") == "im2col"


@pytest.mark.parametrize("bad", ["shifts", "dense=matmul", "depthwise=fast", "conv=lax",
                                 "depthwise"])
def test_bad_env_var_is_a_config_error(monkeypatch, bad):
  monkeypatch.setenv(layers.CONV_IMPL_ENV, bad)
  with pytest.raises(ConfigError, match=layers.CONV_IMPL_ENV):
    layers.conv_strategy_now()


def test_bad_context_is_a_config_error():
  with pytest.raises(ConfigError, match="conv_strategy.pointwise"):
    with layers.conv_strategy(pointwise="shifts"):
      pass
  with pytest.raises(ConfigError, match="conv_strategy.depthwise"):
    with layers.conv_strategy("matmul"):
      pass


def test_conv_module_dispatches_on_strategy(monkeypatch):
  monkeypatch.delenv(layers.CONV_IMPL_ENV, raising=False)
  x = jax.ShapeDtypeStruct((1, 8, 8, 6), jnp.float32)
  dw = layers.Conv(6, (3, 3), feature_group_count=6)
  pw = layers.Conv(4, (1, 1), (2, 2))
  dw_p = jax.eval_shape(dw.init, _key(0), x)
  pw_p = jax.eval_shape(pw.init, _key(0), x)
  dw_fn = lambda: lambda *a: dw.apply(*a)  # a new function per trace (jax caches by identity)
  pw_fn = lambda: lambda *a: pw.apply(*a)
  with layers.conv_strategy(depthwise="lax", pointwise="lax"):
    assert _impls_in_jaxpr(dw_fn(), dw_p, x)["conv_depthwise"] == 1
    assert _impls_in_jaxpr(pw_fn(), pw_p, x)["conv_other"] == 1
  none = {"conv_depthwise": 0, "conv_other": 0}
  if jax.default_backend() == "cpu":  # the CPU defaults: shifts; a strided 1x1 stays a conv
    assert _impls_in_jaxpr(dw_fn(), dw_p, x) == dict(none, dot_general=0)
    assert _impls_in_jaxpr(pw_fn(), pw_p, x)["conv_other"] == 1
  with layers.conv_strategy(depthwise="shifts", pointwise="matmul"):
    assert _impls_in_jaxpr(dw_fn(), dw_p, x) == dict(none, dot_general=0)
    assert _impls_in_jaxpr(pw_fn(), pw_p, x) == dict(none, dot_general=1)
  monkeypatch.setenv(layers.CONV_IMPL_ENV, "depthwise=lax")
  assert _impls_in_jaxpr(dw_fn(), dw_p, x)["conv_depthwise"] == 1
  # the parameters are nn.Conv's whatever the strategy
  chex.assert_trees_all_equal_shapes(dw_p, jax.eval_shape(
      nn.Conv(6, (3, 3), feature_group_count=6).init, _key(0), x))


# ----------------------------------------------------------------------------- whole model

def test_efficientnet_lite0_same_logits_and_grads_under_new_strategy(monkeypatch):
  """Lite0 at 2x48x48x3 (maps 24, 12, 6, 3, 2: odd SAME pads at stride 2, and small maps that the
  explicit strategy takes from im2col too): logits and every parameter gradient under
  depthwise=shifts / pointwise=matmul equal XLA's convolutions' to float32 rounding, and the new
  strategy really leaves no depthwise or 1x1 XLA conv in the program."""
  monkeypatch.delenv(layers.CONV_IMPL_ENV, raising=False)
  model = models.create_model("efficientnet_lite0", 10)
  x = jax.random.normal(_key(5), (2, 48, 48, 3))
  labels = jnp.array([3, 7])
  variables = jax.jit(lambda k, x: model.init(k, x))(_key(6), x)

  def make_loss_and_grads():
    # A new function object per strategy: jax caches traces by function identity (make_jaxpr
    # and jax.jit of the same function reuse them), so the context would not be seen again.
    def loss_and_grads(params):
      def loss(p):
        logits, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(2), labels]), logits
      (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
      return logits, grads
    return loss_and_grads

  with layers.conv_strategy("lax"):  # XLA's convolutions everywhere: the reference
    ref = jax.jit(make_loss_and_grads())(variables["params"])
    assert _impls_in_jaxpr(make_loss_and_grads(), variables["params"])["conv_depthwise"] > 0
  with layers.conv_strategy(depthwise="shifts", pointwise="matmul"):
    counts = _impls_in_jaxpr(make_loss_and_grads(), variables["params"])
    new = jax.jit(make_loss_and_grads())(variables["params"])
  assert counts["conv_depthwise"] == 0
  # only the stem (3x3/2 -> 24x24) stays an XLA conv in the forward; its backward adds convs
  assert 1 <= counts["conv_other"] <= 3
  assert_close_scaled(new, ref, rtol=1e-4, scaled_atol=1e-5)


def test_lenet5_same_logits_and_grads_with_banded_convs(monkeypatch):
  """LeNet-5 (both convs have few channels): logits and every parameter gradient with its convs
  as banded matmuls (`dense=toeplitz`, the CPU default for them) equal XLA's convolutions' to
  float32 rounding, and that program has no XLA convolution left."""
  monkeypatch.delenv(layers.CONV_IMPL_ENV, raising=False)
  model = models.create_model("lenet5", 10)
  x = jax.random.normal(_key(5), (3, 32, 32, 1))
  labels = jnp.array([3, 7, 0])
  params = jax.jit(lambda k, x: model.init(k, x))(_key(6), x)["params"]

  def make_loss_and_grads():  # a new function per strategy (see the Lite0 test)
    def loss_and_grads(p):
      def loss(p):
        logits, _ = model.apply({"params": p}, x)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(3), labels]), logits
      (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(p)
      return logits, grads
    return loss_and_grads

  with layers.conv_strategy("lax"):
    ref = jax.jit(make_loss_and_grads())(params)
  with layers.conv_strategy(dense="toeplitz"):
    counts = _impls_in_jaxpr(make_loss_and_grads(), params)
    new = jax.jit(make_loss_and_grads())(params)
  assert counts["conv_other"] == 0 and counts["dot_general"] >= 2
  assert_close_scaled(new, ref, rtol=1e-4, scaled_atol=1e-5)
