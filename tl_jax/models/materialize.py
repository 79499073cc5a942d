"""`materialize(x)`: an exact identity that XLA:CPU's fusion cannot see through.

Why: a residual stream is a chain of cheap elementwise ops (x_k = relu(bn(conv_k) + x_{k-1})).
XLA:CPU's instruction fusion duplicates such producers into every consumer instead of reading the
buffer that already holds x_k, so each consumer of x_k (the next block's residual add, the
transposed copy a kernel gradient needs, the ReLU mask of the backward pass) recomputes the whole
stream from every earlier block's conv output (in ResNet-32's backward pass the transposed
copies of the last blocks' inputs each read some 30 tensors; measured in results/benchmarks/,
`launch/bench_loop.py --materialize auto,off`). `jax.lax.optimization_barrier` does not help
on CPU (XLA removes it before fusion). A dot is never fused into a loop fusion on CPU, so writing
x_k as `x_k @ I` (an 8x8 identity over groups of channels: 8 multiply-adds per element, little
next to a 3x3 conv) makes XLA compute x_k once and read it everywhere; the cotangent goes
through the same identity dot in the backward pass.

Exact: every output is x * 1 plus zeros (float32 / float64 / bfloat16 alike), so values,
gradients and higher derivatives are bit-identical to `x` for finite inputs (a non-finite entry
would spread NaN to the other channels of its group of 8; a run with a non-finite activation has
diverged anyway). Only the 'cpu' backend uses it by default: elsewhere (GPU/TPU: not measured
there, and a TF32 matmul would not be exact) `materialize` returns `x` itself.
`materialize_mode('off' | 'on' | 'auto')` overrides the default at trace time (benchmarks,
tests); like `layers.conv_strategy` it is read while tracing.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator

import jax
import jax.numpy as jnp

from tl_jax.errors import check_choice

GROUP = 8  # channels per identity block: the dot costs GROUP multiply-adds per element
MODES = ("auto", "on", "off")
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("tl_jax_materialize", default="auto")


@contextlib.contextmanager
def materialize_mode(mode: str) -> Iterator[None]:
  """Within this context (at trace time) `materialize` is 'on' (every backend), 'off' (the plain
  identity) or 'auto' (on for the 'cpu' backend only, the default)."""
  token = _MODE.set(check_choice("materialize_mode", mode, MODES))
  try:
    yield
  finally:
    _MODE.reset(token)


def materialize_active(backend: str | None = None) -> bool:
  """Whether `materialize` computes the identity dot now (mode and `backend`, default jax's)."""
  mode = _MODE.get()
  return mode == "on" or (mode == "auto" and (backend or jax.default_backend()) == "cpu")


def materialize(x: jax.Array) -> jax.Array:
  """`x`, computed once into its own buffer on XLA:CPU (see the module docstring). The last axis
  is split into groups of `GROUP` (or of gcd(channels, GROUP)) channels, each multiplied by an
  identity matrix; with fewer than 2 channels per group nothing can stop the fusion (XLA would
  turn a 1x1 dot into a multiply), so `x` is returned."""
  if not materialize_active() or x.ndim == 0 or x.size == 0:
    return x
  g = math.gcd(x.shape[-1], GROUP)
  if g < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
    return x
  eye = jnp.eye(g, dtype=x.dtype)
  y = jnp.dot(x.reshape(-1, g), eye, precision=jax.lax.Precision.HIGHEST,
              preferred_element_type=x.dtype)
  return y.reshape(x.shape)
