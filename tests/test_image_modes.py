"""Image decoding by what the pixels mean: 16-bit, palette, CMYK, alpha; float rejected."""

import io

import numpy as np
import pytest
from PIL import Image

from tl_jax.data.sources_images import decode_image
from tl_jax.errors import ConfigError


def _bytes(img, fmt="PNG"):
  b = io.BytesIO()
  img.save(b, format=fmt)
  return b.getvalue()


def test_16bit_png_is_scaled_from_its_full_range_not_clipped():
  a = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
  out = decode_image(_bytes(Image.fromarray(a)))
  assert out.shape == (8, 8, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], np.round(a / 257.0).astype(np.uint8))
  assert (out == 255).mean() < 0.05  # clipping would make almost all of it white


def test_palette_and_cmyk_and_bilevel_convert_like_pil():
  rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
  pal = Image.fromarray(rgb).quantize(16)
  np.testing.assert_array_equal(decode_image(_bytes(pal)), np.asarray(pal.convert("RGB")))
  cmyk = Image.fromarray(rgb).convert("CMYK")
  np.testing.assert_array_equal(decode_image(_bytes(cmyk, "JPEG")).shape, (8, 8, 3))
  bw = Image.fromarray((rgb[..., 0] > 127).astype(np.uint8) * 255).convert("1")
  assert set(np.unique(decode_image(_bytes(bw)))) <= {0, 255}


def test_alpha_is_composited_over_black():
  la = np.zeros((4, 4, 2), np.uint8)
  la[..., 0] = 200
  la[..., 1] = 128  # half transparent
  la[0, 0, 1] = 0   # fully transparent
  out = decode_image(_bytes(Image.fromarray(la, "LA")))
  assert out[0, 0].tolist() == [0, 0, 0]
  assert abs(int(out[1, 1, 0]) - round(200 * 128 / 255)) <= 1


def test_float_image_is_rejected_clearly():
  f = Image.fromarray(np.random.default_rng(0).random((4, 4)).astype(np.float32), "F")
  with pytest.raises(ConfigError, match="image: got 'x.tif'; allowed: 8- or 16-bit integer"):
    decode_image(_bytes(f, "TIFF"), what="x.tif")
