"""`layers.max_pool`: the window-reshape formulation (XLA:CPU default for non-overlapping windows)
and the strided-slice one (overlapping windows) equal `nn.max_pool` in value, gradient (ties
included: each window's to its first maximum) and second order, and the dispatch keeps GPU/TPU
float32 on `nn.max_pool`; `layers.avg_pool` equals `nn.avg_pool` the same way."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from tl_jax.models import layers

CASES = [((2, 8, 8, 3), (2, 2)), ((3, 9, 7, 4), (2, 2)), ((2, 9, 9, 2), (3, 3)),
         ((1, 6, 6, 5), (1, 2))]


def _inputs(shape, ties):
  x = jax.random.normal(jax.random.key(0), shape)
  # small integers: most windows hold repeated maxima (ReLU zeros are the common case)
  return jnp.floor(2 * x).clip(0, None) if ties else x


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape, window", CASES)
def test_blocks_equal_nn_max_pool(shape, window, ties):
  x = _inputs(shape, ties)
  g = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // window[0],
                                            shape[2] // window[1], shape[3]))
  y, vjp = jax.vjp(lambda z: layers.max_pool(z, window, window, backend="cpu"), x)
  ref, ref_vjp = jax.vjp(lambda z: nn.max_pool(z, window, window), x)
  np.testing.assert_array_equal(y, ref)
  np.testing.assert_array_equal(vjp(g)[0], ref_vjp(g)[0])
  ys = jax.vmap(lambda z: layers.max_pool(z, window, window, backend="cpu"))(jnp.stack([x, -x]))
  np.testing.assert_array_equal(ys[1], nn.max_pool(-x, window, window))


# (input shape, window, strides, rtol): the window reshape, and the strided slices (overlapping
# windows, whose second order sums several windows' terms in another order)
SECOND_ORDER = [((2, 8, 8, 3), (2, 2), (2, 2), 1e-6), ((2, 11, 11, 3), (3, 3), (2, 2), 1e-5)]


@pytest.mark.parametrize("shape, window, strides, rtol", SECOND_ORDER)
def test_second_order_equals_nn_max_pool(shape, window, strides, rtol):
  """The L2T meta-gradient differentiates through the pool's backward."""
  x = _inputs(shape, False)

  def meta(pool):
    inner = jax.grad(lambda z: (pool(z) ** 3).sum())
    return jax.grad(lambda z: (inner(z) ** 2).sum())(x)

  got = meta(lambda z: layers.max_pool(z, window, strides, backend="cpu"))
  chex.assert_trees_all_close(got, meta(lambda z: nn.max_pool(z, window, strides)), rtol=rtol)


def test_dispatch_per_backend_and_window():
  x = jnp.ones((1, 8, 8, 2))
  prims = lambda backend, window, strides: str(jax.make_jaxpr(jax.grad(
      lambda z: layers.max_pool(z, window, strides, backend=backend).sum()))(x))
  assert "reduce_window" not in prims("cpu", (2, 2), (2, 2))   # blocks
  assert "reduce_window" in prims("gpu", (2, 2), (2, 2))       # nn.max_pool, as before
  assert "reduce_window" not in prims("cpu", (3, 3), (2, 2))   # overlapping: strided slices
  assert "reduce_window" in prims("gpu", (3, 3), (2, 2))
  avg = lambda backend: str(jax.make_jaxpr(jax.grad(
      lambda z: layers.avg_pool(z, (2, 2), (2, 2), backend=backend).sum()))(x))
  assert "reduce_window" not in avg("cpu") and "reduce_window" in avg("gpu")


# (input shape, window, strides): AlexNet's / ResNet-50's 3x3/2, inputs whose last row and column
# belong to no window (cropped), stride 1, unequal window sides
OVERLAP = [((2, 11, 11, 3), (3, 3), (2, 2)), ((2, 12, 10, 4), (3, 3), (2, 2)),
           ((1, 7, 8, 2), (2, 2), (1, 1)), ((2, 10, 9, 3), (3, 2), (2, 1))]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape, window, strides", OVERLAP)
def test_overlapping_slices_equal_nn_max_pool(shape, window, strides, ties):
  x = _inputs(shape, ties)
  ref, ref_vjp = jax.vjp(lambda z: nn.max_pool(z, window, strides), x)
  g = jax.random.normal(jax.random.key(1), ref.shape)
  y, vjp = jax.vjp(lambda z: layers.max_pool(z, window, strides, backend="cpu"), x)
  np.testing.assert_array_equal(y, ref)
  # an input position inside several windows sums their cotangents: the order may differ from
  # select-and-scatter's by a rounding; a cotangent sent to the wrong tap would differ by O(1)
  chex.assert_trees_all_close(vjp(g)[0], ref_vjp(g)[0], rtol=1e-6, atol=1e-6)
  hit = np.asarray(vjp(jnp.ones_like(g))[0]) != 0
  np.testing.assert_array_equal(hit, np.asarray(ref_vjp(jnp.ones_like(g))[0]) != 0)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 9, 7, 4)])
def test_avg_pool_equals_nn_avg_pool(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  y, vjp = jax.vjp(lambda z: layers.avg_pool(z, (2, 2), (2, 2), backend="cpu"), x)
  ref, ref_vjp = jax.vjp(lambda z: nn.avg_pool(z, (2, 2), (2, 2)), x)
  chex.assert_trees_all_close(y, ref, rtol=1e-6, atol=1e-7)
  g = jax.random.normal(jax.random.key(1), ref.shape)
  chex.assert_trees_all_close(vjp(g)[0], ref_vjp(g)[0], rtol=1e-6, atol=1e-7)
