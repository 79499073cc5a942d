"""`tl_jax.models.materialize`: an exact identity (values and derivatives bit for bit) that stops
XLA:CPU from re-deriving a residual stream inside every consumer, and models that use it."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax import models
from tl_jax.errors import ConfigError
from tl_jax.models import layers
from tl_jax.models.materialize import materialize, materialize_active, materialize_mode


def _bits(a):
  return np.asarray(a).view(np.uint8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 5, 3, 16), (7, 24), (3, 6), (4, 5)])
def test_materialize_is_bit_exact_identity(dtype, shape):
  with jax.enable_x64(dtype == jnp.float64), materialize_mode("on"):
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(dtype) * 1e3
    x = x.at[..., 0].set(jnp.asarray(1e-30, dtype))  # tiny values and subnormals survive
    f = jax.jit(materialize)
    y, vjp = jax.vjp(f, x)
    (gx,) = vjp(-x)
    np.testing.assert_array_equal(_bits(y), _bits(x))
    np.testing.assert_array_equal(_bits(gx), _bits(-x))
    # second order: the Hessian-vector product of sum(f(x)**3) is 6 x v, as without it
    hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(lambda z: (f(z) ** 3).sum()), (x,), (v,))[1])
    ref = jax.jit(lambda x, v: jax.jvp(jax.grad(lambda z: (z ** 3).sum()), (x,), (v,))[1])
    np.testing.assert_array_equal(_bits(hvp(x, x)), _bits(ref(x, x)))
    ys = jax.vmap(f)(jnp.stack([x, 2 * x]))
    np.testing.assert_array_equal(_bits(ys[1]), _bits(2 * x))
    assert ("dot" in str(jax.make_jaxpr(materialize)(x))) == (shape[-1] % 2 == 0)


def test_materialize_modes_and_backends():
  assert materialize_active("cpu") and not materialize_active("gpu")
  with materialize_mode("on"):
    assert materialize_active("gpu")
  with materialize_mode("off"):
    assert not materialize_active("cpu")
    x = jnp.ones((2, 8))
    assert materialize(x) is x
  with pytest.raises(ConfigError, match="materialize_mode"):
    with materialize_mode("always"):
      pass


def _residual_chain_hlo(mode: str, blocks: int = 8) -> str:
  """Compiled HLO of the gradient of a chain of conv + BN + ReLU residual blocks."""
  def net(ws, x):
    for w in ws:
      y = layers.conv_nhwc(x, w, (1, 1), ((1, 1), (1, 1)))
      y = (y - y.mean((0, 1, 2))) * jax.lax.rsqrt(y.var((0, 1, 2)) + 1e-5)
      x = materialize(jax.nn.relu(y + x))
    return (x ** 2).mean()

  ws = [jax.random.normal(jax.random.key(i), (3, 3, 8, 8)) * 0.1 for i in range(blocks)]
  x = jax.random.normal(jax.random.key(99), (2, 8, 8, 8))
  with materialize_mode(mode):
    return jax.jit(jax.grad(net)).lower(ws, x).compile().as_text()


def _widest_fusion(hlo: str, operand: str = "f32[2,8,8,8]") -> int:
  """Most activation-shaped parameters of any fused computation."""
  heads = [c.split("\n", 1)[0] for c in re.split(r"\n(?=%|ENTRY)", hlo)]
  return max(h.count(operand) for h in heads if h.startswith("%fused"))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion property")
def test_materialize_stops_the_residual_stream_being_recomputed():
  """Without `materialize`, XLA:CPU fuses the whole residual stream (one conv output per earlier
  block) into a consumer; with it, no fusion reads more than a block's own few tensors."""
  assert _widest_fusion(_residual_chain_hlo("off")) >= 8  # the trap (so the check can fail)
  assert _widest_fusion(_residual_chain_hlo("on")) <= 4


def test_resnet32_equal_with_and_without_materialize():
  """Logits, BN statistics and gradients of a train-mode ResNet-32 (EfficientNet-Lite0 and
  ResNet-50 call the same `materialize` on their residual sums)."""
  shape = (2, 32, 32, 3)
  model = models.create_model("resnet32", 10)
  x = jax.random.normal(jax.random.key(1), shape)
  variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
  y = jax.nn.one_hot(jnp.arange(shape[0]) % 10, 10)

  def loss(params, stats):
    (logits, _), upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"])
    return -(jax.nn.log_softmax(logits) * y).sum(), (logits, upd)

  out = {}
  for mode in ("on", "off"):
    with materialize_mode(mode):  # a fresh function object per mode: a fresh trace
      f = jax.jit(jax.value_and_grad(lambda p, s: loss(p, s), has_aux=True))
      out[mode] = f(variables["params"], variables["batch_stats"])
  chex.assert_trees_all_close(out["on"], out["off"], rtol=2e-5, atol=2e-5)
