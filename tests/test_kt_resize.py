"""Bilinear resize = PyTorch interpolate(align_corners=False), no antialias."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from tl_jax.errors import ConfigError
from tl_jax.kt.resize import resize_bilinear


def _rand(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_downsample_32_to_2_reads_only_2x2_around_half_pixel_centre():
  x = _rand((2, 32, 32, 3))
  y = np.asarray(resize_bilinear(jnp.asarray(x), (2, 2)))
  assert y.shape == (2, 2, 2, 3)
  # Output j samples input coordinate (j + 0.5) * 16 - 0.5 = 16j + 7.5: mean of pixels 16j+7, 16j+8.
  for i in range(2):
    for j in range(2):
      r, c = 16 * i + 7, 16 * j + 7
      expect = x[:, r:r + 2, c:c + 2, :].mean(axis=(1, 2))
      np.testing.assert_allclose(y[:, i, j, :], expect, rtol=1e-6, atol=1e-6)
  # ... and NOT the antialiased cell average jax.image.resize would give.
  cell = x.reshape(2, 2, 16, 2, 16, 3).mean(axis=(2, 4))
  assert np.max(np.abs(y - cell)) > 0.1


def test_upsample_2_to_4_by_hand():
  x = jnp.asarray([[1.0, 3.0], [5.0, 11.0]]).reshape(1, 2, 2, 1)
  y = np.asarray(resize_bilinear(x, (4, 4)))[0, :, :, 0]
  row = lambda a, b: [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b]  # coords -0.25(clamp), .25, .75, 1.25(clamp)
  r0, r1 = row(1.0, 3.0), row(5.0, 11.0)
  expect = np.array([row(r0[k], r1[k]) for k in range(4)]).T
  np.testing.assert_allclose(y, expect, rtol=0, atol=1e-6)


def test_upsample_8_to_32_matches_formula():
  x = _rand((1, 8, 8, 2), seed=1)
  y = np.asarray(resize_bilinear(jnp.asarray(x), (32, 32)))

  def weights(n_in, n_out):  # PyTorch: src = max((j + .5) * in/out - .5, 0), neighbours floor / +1
    m = np.zeros((n_out, n_in))
    for j in range(n_out):
      s = max((j + 0.5) * n_in / n_out - 0.5, 0.0)
      i0 = int(np.floor(s)); i1 = min(i0 + 1, n_in - 1); f = s - i0
      m[j, i0] += 1 - f; m[j, i1] += f
    return m

  w = weights(8, 32)
  expect = np.einsum("ih,jw,bhwc->bijc", w, w, x)
  np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)


def test_same_size_is_identity_and_bad_input_raises():
  x = jnp.asarray(_rand((1, 4, 4, 2)))
  assert resize_bilinear(x, (4, 4)) is x
  with pytest.raises(ConfigError):
    resize_bilinear(x[0, 0], (2, 2))
  with pytest.raises(ConfigError):
    resize_bilinear(x, (0, 2))


@pytest.mark.parametrize("src,dst", [(32, 2), (32, 16), (16, 4), (8, 32), (8, 16), (3, 8), (3, 2), (6, 4)])
def test_matches_torch_interpolate(src, dst):
  torch = pytest.importorskip("torch")
  x = _rand((2, src, src, 3), seed=src * 100 + dst)
  y = np.asarray(resize_bilinear(jnp.asarray(x), (dst, dst)))
  t = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(dst, dst),
                                      mode="bilinear", align_corners=False)
  np.testing.assert_allclose(y, t.permute(0, 2, 3, 1).numpy(), rtol=0, atol=2e-6)
  if dst < src and src % dst == 0:  # the reference's scale_factor form gives the same values
    t2 = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=dst / src,
                                         mode="bilinear", align_corners=False)
    np.testing.assert_allclose(y, t2.permute(0, 2, 3, 1).numpy(), rtol=0, atol=2e-6)


def test_resize_is_differentiable():
  x = jnp.asarray(_rand((1, 3, 3, 1)))
  g = jax.grad(lambda a: jnp.sum(resize_bilinear(a, (8, 8))))(x)
  # Each output pixel's weights sum to 1 -> total gradient mass = number of output pixels.
  np.testing.assert_allclose(float(jnp.sum(g)), 64.0, rtol=1e-6)


@pytest.mark.parametrize("src,dst", [((32, 32), (2, 2)), ((8, 4), (32, 6)), ((3, 3), (7, 2))])
def test_matrix_form_equals_scale_and_translate(src, dst):
  x = jnp.asarray(_rand((2, *src, 3), seed=7))
  scale = jnp.array([dst[0] / src[0], dst[1] / src[1]], jnp.float32)
  ref = jax.image.scale_and_translate(x, (2, *dst, 3), (1, 2), scale, jnp.zeros(2), "linear",
                                      antialias=False, precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(np.asarray(resize_bilinear(x, dst)), np.asarray(ref), rtol=0, atol=1e-6)
  # inside jit (matrices are compile-time constants) and for HWC input
  np.testing.assert_allclose(np.asarray(jax.jit(lambda a: resize_bilinear(a, dst))(x[0])), np.asarray(ref[0]),
                             rtol=0, atol=1e-6)
