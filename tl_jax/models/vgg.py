"""VGG-9 (the L2T-ww target `vgg9_bn`) and VGG-16 in the Keras layout.

VGG9 (spec l2t-ww.md §1.2): cfg [64,M,128,M,256,256,M,512,512,M,512,512,M]; every conv 3x3, pad 1,
with bias, then BN (torch momentum 0.1 / eps 1e-5) then ReLU; global average pool; one Dense.
Init: convs Kaiming-normal fan-out (ReLU gain), biases 0, Dense N(0, 0.01) with bias 0.
Params: 'conv0'..'conv7', 'bn0'..'bn7', 'head' (9,277,284 with 100 classes; BN running stats not
counted). Features: the maps entering each max-pool, 'pool0'..'pool4' (post-BN-ReLU, pre-pool):
64x32x32, 128x16x16, 256x8x8, 512x4x4, 512x2x2 at 32x32 input. Convs whose output map has at
most `im2col_max_pixels` pixels run as im2col + matmul (layers.Conv). Default (None):
`default_im2col_max_pixels()`, chosen by measurement (results/benchmarks/README.md):
- GPU/TPU: layers.SMALL_MAP_PIXELS (2x2 maps), as every tl_jax Conv; their convolution libraries
  have no such trap (not measured here).
- CPU, traced for second order (`layers.second_order`: the L2T iterations) or with XLA's YNNPACK
  convolutions on (XLA's default flags): 256, i.e. every conv but the first at 32x32 input. The
  second-order backward of L2T's look-ahead is made of convolutions XLA:CPU computes slowly; as
  im2col they become matmuls (one L2T-ww iteration 31.7 s -> 16.6 s when this was introduced,
  still 4.9 s vs 7.1 s with 16 on 2026-12-02), and YNNPACK's convolutions lose to im2col too.
- CPU, first order, YNNPACK convolutions off (tl_jax.runtime's 'auto' flags of every command
  line): layers.SMALL_MAP_PIXELS. XLA's Eigen convolutions beat im2col on the 16x16..4x4 maps:
  the train step in the engine's scan went from 1.03x to 1.19x its speed under XLA's defaults.
Same parameters whatever the choice; outputs equal to float rounding.

VGG16: Keras `applications.VGG16` layer names, so Keras weights map 1:1 ('block1_conv1' ...
'block5_conv3', 'fc1', 'fc2', 'predictions'; kernels HWIO like Keras). `num_classes=None` is
`include_top=False`: `pooling` None returns the flattened block5 pool, 'avg'/'max' a global pool
(14,714,688 params). Features 'block1'..'block5': each block's last conv output (pre-pool).
"""

from __future__ import annotations

from flax import linen as nn
import jax
import jax.numpy as jnp

from tl_jax.errors import check_choice
from tl_jax.models.layers import (SMALL_MAP_PIXELS, Conv, batch_norm, he_fan_out, is_second_order,
                                   max_pool, ynn_convolutions)

VGG9_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
POOLINGS = (None, "avg", "max")
IM2COL_CPU_MAX_PIXELS = 256  # CPU, second order or YNNPACK convolutions on (module docstring)


def default_im2col_max_pixels(backend: str | None = None) -> int:
  """VGG-9's im2col threshold (output H*W) when `im2col_max_pixels` is None, for `backend`
  (default: jax's), the trace-time `layers.second_order` context and the XLA flags in force."""
  if (backend or jax.default_backend()) != "cpu":
    return SMALL_MAP_PIXELS
  if is_second_order() or ynn_convolutions():
    return IM2COL_CPU_MAX_PIXELS
  return SMALL_MAP_PIXELS


class VGG9(nn.Module):
  num_classes: int | None = 100
  cfg: tuple = VGG9_CFG
  im2col_max_pixels: int | None = None  # im2col for outputs of <= this H*W (see docstring)
  head_name = "head"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    im2col_px = self.im2col_max_pixels
    if im2col_px is None:
      im2col_px = default_im2col_max_pixels()
    feats = {}
    conv_i = pool_i = 0
    for v in self.cfg:
      if v == "M":
        feats[f"pool{pool_i}"] = x
        x = max_pool(x, (2, 2), (2, 2))
        pool_i += 1
        continue
      x = Conv(int(v), (3, 3), padding=1, kernel_init=he_fan_out,
               small_map_pixels=im2col_px, name=f"conv{conv_i}")(x)
      x = nn.relu(batch_norm(train, f"bn{conv_i}")(x))
      conv_i += 1
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x, feats
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                      bias_init=nn.initializers.zeros, name=self.head_name)(x)
    return logits, feats


class VGG16(nn.Module):
  """Keras-layout VGG-16 (no BN). Input: 224x224x3 with the top; any size >= 32 without it."""
  num_classes: int | None = 1000
  pooling: str | None = None
  head_name = "predictions"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    check_choice("model.pooling", self.pooling, POOLINGS)
    feats = {}
    for b, (width, n) in enumerate(VGG16_BLOCKS, start=1):
      for c in range(1, n + 1):
        x = nn.relu(Conv(width, (3, 3), padding="SAME", name=f"block{b}_conv{c}")(x))
      feats[f"block{b}"] = x
      x = max_pool(x, (2, 2), (2, 2))
    if self.num_classes is None:
      if self.pooling == "avg":
        return jnp.mean(x, axis=(1, 2)), feats
      if self.pooling == "max":
        return jnp.max(x, axis=(1, 2)), feats
      return x.reshape(x.shape[0], -1), feats
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(4096, name="fc1")(x))
    feats["fc1"] = x
    x = nn.relu(nn.Dense(4096, name="fc2")(x))
    feats["fc2"] = x
    return nn.Dense(self.num_classes, name=self.head_name)(x), feats
