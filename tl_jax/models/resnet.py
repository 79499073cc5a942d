"""ResNet-32 (the L2T-ww CIFAR source network) and ResNet-50 in the Keras layout.

ResNet32 (spec l2t-ww.md §1.1): stem 3x3 conv 3->16 with bias, BN, ReLU; three stages of five
post-activation basic blocks (16/32/64 ch); the first block of stages 2 and 3 has stride 2 and a
1x1 conv (no bias, stride 2) + BN projection shortcut; global average pool (any input size); Dense.
479,272 params with 200 classes = the checkpoint's trainable arrays (spec §1.1 quotes 479,281,
which includes 9 unused `alphas` of the PyTorch model; they are not created here).
Param tree mirrors the PyTorch state_dict: torch key -> flax path by joining a list index onto the
preceding name with '_' and replacing '.' by '/':
  conv1.weight -> params/conv1/kernel (OIHW -> HWIO, transpose (2, 3, 1, 0)); conv1.bias -> .../bias
  bn1.weight/bias -> params/bn1/scale|bias; bn1.running_mean/var -> batch_stats/bn1/mean|var
  block1.*, blocks2.{0..3}.* -> block1/*, blocks2_{0..3}/*  (stage 1)
  block3.*, blocks4.{0..3}.* -> block3/*, blocks4_{0..3}/*  (stage 2; block3 has downsample)
  block5.*, blocks6.{0..3}.* -> block5/*, blocks6_{0..3}/*  (stage 3; block5 has downsample)
  <block>.conv1|conv2|bn1|bn2 -> <block>/conv1|conv2|bn1|bn2
  <block>.downsample.0.weight -> <block>/downsample_0/kernel; downsample.1.* -> downsample_1/*
  fc.weight ([out, in]) -> params/fc/kernel (transpose); fc.bias -> fc/bias
  num_batches_tracked and alphas: ignored.
Features 'block0'..'block14' = every block output (post-ReLU); stage outputs are
`ResNet32.stage_features` = ('block4', 'block9', 'block14') (the L2T-ww indices 4, 9, 14).
BN: torch momentum 0.1 == flax 0.9, eps 1e-5. Convs He-normal fan-out; fc PyTorch Linear default.

ResNet50: Keras `applications.ResNet50` (v1) layer names so Keras weights map 1:1: conv1_conv,
conv1_bn, conv{s}_block{b}_{0,1,2,3}_{conv,bn}, predictions (Keras BN gamma/beta ->
scale/bias, moving_mean/variance -> batch_stats mean/var). Stride on the first 1x1 conv of each
stage's first block; shortcut conv (with bias) + BN; all convs have bias; BN eps 1.001e-5, momentum
0.99. 25,636,712 values with top, 23,587,712 without (params + batch_stats, Keras' count).
Features: 'conv1' (stem after ReLU, before the pool), 'conv2'..'conv5' (stage outputs).
"""

from __future__ import annotations

from flax import linen as nn
import jax
import jax.numpy as jnp

from tl_jax.errors import check_choice
from tl_jax.models.layers import Conv, batch_norm, he_fan_out, max_pool, torch_linear_init
from tl_jax.models.materialize import materialize


class BasicBlock(nn.Module):
  """torchvision-style post-activation basic block with optional 1x1 projection shortcut."""
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    s = (self.stride, self.stride)
    y = Conv(self.features, (3, 3), s, padding=1, use_bias=False, kernel_init=he_fan_out,
             name="conv1")(x)
    y = nn.relu(batch_norm(train, "bn1")(y))
    y = Conv(self.features, (3, 3), padding=1, use_bias=False, kernel_init=he_fan_out,
             name="conv2")(y)
    y = batch_norm(train, "bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = Conv(self.features, (1, 1), s, padding=0, use_bias=False, kernel_init=he_fan_out,
               name="downsample_0")(x)
      x = batch_norm(train, "downsample_1")(x)
    return materialize(nn.relu(y + x))  # the residual stream: computed once (XLA:CPU)


def resnet32_block_names() -> list[str]:
  """PyTorch-mirroring names of the 15 blocks in forward order."""
  names = []
  for first, rest in (("block1", "blocks2"), ("block3", "blocks4"), ("block5", "blocks6")):
    names += [first] + [f"{rest}_{i}" for i in range(4)]
  return names


class ResNet32(nn.Module):
  num_classes: int | None = 200
  widths: tuple[int, int, int] = (16, 32, 64)
  head_name = "fc"
  stage_features = ("block4", "block9", "block14")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    x = Conv(self.widths[0], (3, 3), padding=1, use_bias=True, kernel_init=he_fan_out,
             name="conv1")(x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    feats = {}
    names = resnet32_block_names()
    for i, name in enumerate(names):
      stage = i // 5
      stride = 2 if (stage > 0 and i % 5 == 0) else 1
      x = BasicBlock(self.widths[stage], stride, name=name)(x, train)
      feats[f"block{i}"] = x
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x, feats
    k_init, b_init = torch_linear_init(x.shape[-1])
    logits = nn.Dense(self.num_classes, kernel_init=k_init, bias_init=b_init,
                      name=self.head_name)(x)
    return logits, feats


KERAS_BN = dict(momentum=0.99, epsilon=1.001e-5)
RESNET50_STAGES = ((2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2), (5, 512, 3, 2))
POOLINGS = (None, "avg", "max")


class ResNet50(nn.Module):
  """Keras-layout ResNet-50 v1. `num_classes=None` = include_top=False with `pooling`."""
  num_classes: int | None = 1000
  pooling: str | None = "avg"
  head_name = "predictions"

  def _bottleneck(self, x, filters, stride, conv_shortcut, prefix, train):
    bn = lambda n: batch_norm(train, f"{prefix}_{n}_bn", **KERAS_BN)
    if conv_shortcut:
      shortcut = Conv(4 * filters, (1, 1), (stride, stride), padding="VALID",
                      name=f"{prefix}_0_conv")(x)
      shortcut = bn(0)(shortcut)
    else:
      shortcut = x
    y = Conv(filters, (1, 1), (stride, stride), padding="VALID", name=f"{prefix}_1_conv")(x)
    y = nn.relu(bn(1)(y))
    y = Conv(filters, (3, 3), padding="SAME", name=f"{prefix}_2_conv")(y)
    y = nn.relu(bn(2)(y))
    y = Conv(4 * filters, (1, 1), padding="VALID", name=f"{prefix}_3_conv")(y)
    y = bn(3)(y)
    return materialize(nn.relu(shortcut + y))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    check_choice("model.pooling", self.pooling, POOLINGS)
    feats = {}
    x = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
    x = Conv(64, (7, 7), (2, 2), padding="VALID", name="conv1_conv")(x)
    x = nn.relu(batch_norm(train, "conv1_bn", **KERAS_BN)(x))
    feats["conv1"] = x
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # zeros are safe: post-ReLU values >= 0
    x = max_pool(x, (3, 3), (2, 2))
    for stage, filters, blocks, stride in RESNET50_STAGES:
      for b in range(1, blocks + 1):
        x = self._bottleneck(x, filters, stride if b == 1 else 1, b == 1,
                             f"conv{stage}_block{b}", train)
      feats[f"conv{stage}"] = x
    if self.num_classes is None:  # include_top=False: `pooling` decides the output
      if self.pooling == "max":
        return jnp.max(x, axis=(1, 2)), feats
      if self.pooling == "avg":
        return jnp.mean(x, axis=(1, 2)), feats
      return x.reshape(x.shape[0], -1), feats
    x = jnp.mean(x, axis=(1, 2))  # Keras 'avg_pool'
    return nn.Dense(self.num_classes, name=self.head_name)(x), feats
