"""On-device augmentation (tl_jax.data.augment) and NumPy preprocessing (tl_jax.data.preprocess)."""

from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.data import augment as A
from tl_jax.data import preprocess as P
from tl_jax.errors import ConfigError


def _batch(b=4, h=8, w=8, c=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, h, w, c), dtype=np.uint8))


def test_crop_with_given_offsets_is_a_slice():
  x = _batch(2, 6, 6)
  out = A.crop(x, jnp.array([[0, 1], [2, 0]]), (3, 4))
  np.testing.assert_array_equal(out[0], x[0, 0:3, 1:5])
  np.testing.assert_array_equal(out[1], x[1, 2:5, 0:4])


def test_random_flip_hand_checked():
  x = _batch(16, 3, 5)
  out = A.random_flip(jax.random.key(1), x)
  flipped = [bool(jnp.all(o == xi[:, ::-1])) for o, xi in zip(out, x)]
  same = [bool(jnp.all(o == xi)) for o, xi in zip(out, x)]
  assert all(f or s for f, s in zip(flipped, same))
  assert 0 < sum(flipped) < 16  # both outcomes occur over 16 images


def test_random_crop_flip_is_a_padded_crop():
  pad = 2
  x = _batch(6, 5, 5)
  out = np.asarray(jax.jit(A.random_crop_flip, static_argnames="pad")(jax.random.key(0), x,
                                                                        pad=pad))
  assert out.shape == x.shape and out.dtype == np.uint8
  padded = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = set()
  for i in range(6):
    hits = [(r, c, f) for r in range(2 * pad + 1) for c in range(2 * pad + 1) for f in (0, 1)
            if np.array_equal((padded[i, r:r + 5, c:c + 5])[:, ::-1 if f else 1], out[i])]
    assert hits, f"image {i} is not a (flipped) crop of the padded image"
    offsets.add(hits[0][:2])
  assert len(offsets) > 1


def test_determinism_under_key():
  x = _batch()
  f = jax.jit(A.make_augment({"augment": "keras_seed000", "normalize": "zero_one"}))
  a, b = f(jax.random.key(3), x), f(jax.random.key(3), x)
  chex.assert_trees_all_equal(a, b)
  c = f(jax.random.key(4), x)
  assert float(jnp.abs(a - c).max()) > 1e-3
  g = jax.jit(A.make_augment({"augment": "crop_flip"}))
  chex.assert_trees_all_equal(g(jax.random.key(3), x), g(jax.random.key(3), x))


def test_keras_params_differ_per_image_and_stay_in_range():
  x = jnp.repeat(_batch(1, 12, 12), 4, axis=0)  # 4 copies of one image
  y = jax.jit(A.make_augment({"augment": "keras_seed000", "normalize": "zero_one"}))(
      jax.random.key(0), x)
  assert y.shape == (4, 12, 12, 3) and y.dtype == jnp.float32
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
  assert float(jnp.abs(y[0] - y[1]).max()) > 1e-2 and float(jnp.abs(y[2] - y[3]).max()) > 1e-2


def test_affine_identity_parameters_give_identity():
  x = _batch(3, 7, 9)
  out = A.random_affine(jax.random.key(0), x, rotation=0.0, width_shift=0.0, height_shift=0.0,
                        shear=0.0, zoom=(1.0, 1.0), hflip=False, vflip=False)
  np.testing.assert_allclose(out, np.asarray(x, np.float32), atol=1e-5)


def test_affine_rotation_by_90_is_rot90():
  x = _batch(1, 6, 6)
  m = A.affine_matrices(jnp.array([90.0]), 0.0, 0.0, 0.0, 1.0, 1.0)
  out = np.asarray(A.affine_transform(x, m))[0]
  rotated = [np.rot90(np.asarray(x[0], np.float32), k) for k in (1, 3)]
  assert min(np.abs(out - r).max() for r in rotated) < 1e-3


def test_affine_matches_keras_apply_affine_transform():
  os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras 3's default backend (TF) is not installed
  image_mod = pytest.importorskip("keras.src.legacy.preprocessing.image")
  x = np.asarray(_batch(1, 12, 12, 3, seed=5), np.float32)[0]
  p = dict(theta=20.0, tx=2.5, ty=-1.5, shear=10.0, zx=1.1, zy=0.9)
  ref = image_mod.apply_affine_transform(x, **p, row_axis=0, col_axis=1, channel_axis=2,
                                         fill_mode="nearest", order=1)
  out = A.affine_transform(jnp.asarray(x[None]),
                           A.affine_matrices(*[jnp.array([v]) for v in p.values()]))[0]
  np.testing.assert_allclose(out, ref, atol=2e-3)


def test_brightness_and_rotate_preset():
  x = jnp.full((2, 4, 4, 3), 200, jnp.uint8)
  y = A.random_affine(jax.random.key(0), x, brightness=(1.3, 1.4))
  np.testing.assert_allclose(y, 255.0)  # 200 * >=1.3 clips at 255
  z = A.random_affine(jax.random.key(0), x, brightness=(0.5, 0.5))
  np.testing.assert_allclose(z, 100.0, rtol=1e-6)
  w = A.random_affine(jax.random.key(0), x, brightness=(0.8, 1.2))
  f = np.asarray(w)[:, 0, 0, 0] / 200.0  # one factor per image, in range, constant over pixels
  assert np.all((f >= 0.8) & (f <= 1.2)) and f[0] != f[1]
  np.testing.assert_allclose(w, np.broadcast_to(200.0 * f[:, None, None, None], w.shape))
  r = A.make_augment({"augment": "rotate", "normalize": "none"})(jax.random.key(0), x)
  np.testing.assert_allclose(r, 200.0, rtol=1e-6)  # rotating a constant image changes nothing


def test_resize_shapes_and_values():
  ramp = jnp.tile(jnp.arange(8, dtype=jnp.float32)[None, None, :, None], (1, 4, 1, 1))
  half = A.resize(ramp, (4, 4), antialias=False)
  # bilinear, align_corners=False, 2x down: each output is the mean of a pixel pair.
  np.testing.assert_allclose(half[0, 0, :, 0], [0.5, 2.5, 4.5, 6.5], atol=1e-5)
  up = A.resize(jnp.full((2, 4, 4, 3), 7, jnp.uint8), (9, 11))
  assert up.shape == (2, 9, 11, 3) and up.dtype == jnp.float32
  np.testing.assert_allclose(up, 7.0, atol=1e-5)
  assert A.resize(ramp, None).shape == ramp.shape


def test_normalize_modes():
  x = jnp.array([[[[0, 255, 127]]]], jnp.uint8)
  np.testing.assert_allclose(A.normalize(x, "zero_one")[0, 0, 0], [0, 1, 127 / 255], rtol=1e-6)
  np.testing.assert_allclose(A.normalize(x, "minus_one_one")[0, 0, 0], [-1, 1, 127 / 127.5 - 1],
                             atol=1e-6)
  np.testing.assert_allclose(A.normalize(x, "efficientnet")[0, 0, 0], [-127 / 128, 1, 0],
                             atol=1e-6)
  expect = (np.array([0, 1, 127 / 255]) - np.array(A.IMAGENET_MEAN)) / np.array(A.IMAGENET_STD)
  np.testing.assert_allclose(A.normalize(x, "imagenet")[0, 0, 0], expect, rtol=1e-5)
  np.testing.assert_allclose(A.normalize(x, "none")[0, 0, 0], [0, 255, 127])
  with pytest.raises(ConfigError) as e:
    A.normalize(x, "bogus")
  assert "imagenet" in str(e.value)


def test_make_preprocess_and_config_errors():
  pre = jax.jit(A.make_preprocess({"resize": (16, 16), "normalize": "imagenet"}))
  out = pre(_batch(2, 8, 8))
  assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32
  aug = A.make_augment({"augment": "crop_flip", "augment_kwargs": {"pad": 0}, "normalize": "none",
                        "resize": None})
  x = _batch(8, 4, 4)
  y = aug(jax.random.key(0), x)
  for o, xi in zip(np.asarray(y), np.asarray(x, np.float32)):
    assert np.array_equal(o, xi) or np.array_equal(o, xi[:, ::-1])
  with pytest.raises(ConfigError) as e:
    A.make_augment({"augment": "mixup"})
  assert e.value.field == "augment" and "keras_seed000" in str(e.value)
  with pytest.raises(ConfigError, match="augment_kwargs"):
    A.make_augment({"augment": "rotate", "augment_kwargs": {"pad": 3}})
  with pytest.raises(ConfigError):
    A.make_preprocess({"resize": (16,)})


# ----------------------------------------------------------------------------- preprocess (numpy)


def test_to_grey_and_blur():
  img = np.zeros((1, 9, 9, 3), np.uint8)
  img[0, 4, 4] = [255, 0, 0]
  g = P.to_grey(img)
  assert g.shape == (1, 9, 9, 1) and int(g[0, 4, 4, 0]) == round(0.299 * 255)
  flat = np.full((2, 6, 6, 3), 90, np.uint8)
  np.testing.assert_array_equal(P.gaussian_blur(flat, 1.5), flat)
  rng = np.random.default_rng(0)
  noisy = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  blurred = P.gaussian_blur(noisy, 1.0)
  assert blurred.shape == noisy.shape and blurred.std() < 0.6 * noisy.std()
  np.testing.assert_allclose(blurred.mean(), noisy.mean(), atol=2.0)


def test_equalize_hist_flattens_the_cdf():
  rng = np.random.default_rng(0)
  narrow = np.clip(rng.normal(120, 8, (2, 32, 32, 1)), 0, 255).astype(np.uint8)
  eq = P.equalize_hist(narrow)
  assert eq.shape == narrow.shape and eq.dtype == np.uint8
  assert eq.min() == 0 and eq.max() == 255
  v = np.sort(eq[0].ravel()).astype(np.float64)
  ecdf = np.arange(1, v.size + 1) / v.size
  assert np.abs(ecdf - v / 255.0).max() < 0.08  # ~ uniform CDF after equalisation
  rgb = P.equalize_hist(np.repeat(narrow, 3, axis=-1))
  assert rgb.shape == (2, 32, 32, 3) and rgb.std() > 3 * narrow.std()
  const = np.full((1, 4, 4, 1), 50, np.uint8)
  np.testing.assert_array_equal(P.equalize_hist(const), const)


def test_standardize():
  x = np.random.default_rng(0).integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
  s = P.standardize(x)
  np.testing.assert_allclose(s.mean(axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(s.std(axis=(1, 2, 3)), 1, atol=1e-4)
  np.testing.assert_allclose(P.standardize(x, "centered"), (x - 128.0) / 128.0, atol=1e-6)
  with pytest.raises(ConfigError):
    P.standardize(x, "other")
