"""EfficientNet-Lite0 (architecture only; weights come from a loader elsewhere).

Matches shared/data/efficientnet_lite0_imagenet/architecture.json: MBConv blocks (optional 1x1
expand, depthwise kxk, 1x1 project), ReLU6 after every BN except the projection BN, no
squeeze-excitation, identity residual where stride 1 and cin == cout, BN eps 1e-3 (TF momentum
0.99 == flax momentum 0.99), TensorFlow 'SAME' padding (stride 2: the odd pixel goes right/bottom,
computed explicitly by layers.explicit_padding), stem 32 ch 3x3/2, head 1x1 conv 1280, global
average pool, dropout, Dense 1000. 4,652,008 params (BN running stats not counted).
Input: 224x224 RGB, (pixel - 127) / 128.

Param naming = the PyTorch state_dict names with the leading '_' of every component removed, a
list index joined to its name with '_', and '.' -> '/':
  _conv_stem.weight -> params/conv_stem/kernel      _bn0.* -> bn0/*      (stem)
  _blocks.{i}._expand_conv.weight -> blocks_{i}/expand_conv/kernel   (absent in block 0)
  _blocks.{i}._bn0.* -> blocks_{i}/bn0/*  _depthwise_conv -> depthwise_conv  _bn1 -> bn1
  _blocks.{i}._project_conv.weight -> blocks_{i}/project_conv/kernel  _bn2 -> bn2
  _conv_head.weight -> conv_head/kernel   _bn1.* -> bn1/*   _fc.weight/.bias -> fc/kernel|bias
BN: weight -> params scale, bias -> params bias, running_mean/var -> batch_stats mean/var.
Layouts: conv OIHW -> HWIO transpose (2, 3, 1, 0); depthwise (C, 1, k, k) -> (k, k, 1, C) by the
same transpose (feature_group_count = C); fc [out, in] -> [in, out]. No conv has a bias.
Features (names sort in forward order): 'stage0' = stem output, 'stage1'..'stage7' = output of
the last block of each group of equal output width (16, 24, 40, 80, 112, 192, 320),
'stage8' = head conv output (1280 ch, after BN + ReLU6).

`frozen_blocks` cuts the bottom of the network *in the forward pass* (Keras `trainable=False`):
0 = nothing cut; k in 1..16 = stem + MBConv blocks 0..k-1 run BatchNorm in inference mode and their
output is `stop_gradient`ed; 17 = the whole backbone (stem, 16 blocks, conv_head). Why: the freeze
rules of the optimiser already keep frozen weights bit-identical and make XLA drop their weight
gradients, but BatchNorm would still run in train mode there, and the depthwise-conv backward to
the input (slow on XLA:CPU) would still run down to the lowest trainable layer. Seed 001's "top
block" = blocks 11-15 (the 192- and 320-channel stages) + conv_head: frozen_blocks=11. Same
parameters and the same eval outputs for every k.
`bn_momentum`: running-average momentum of every BatchNorm (0.99 = TF/Keras; 0.9 = PyTorch's 0.1,
which lets short CPU runs from scratch reach usable running statistics).
"""

from __future__ import annotations

from flax import linen as nn
import jax
import jax.numpy as jnp

from tl_jax.errors import ConfigError
from tl_jax.models.layers import Conv, batch_norm
from tl_jax.models.materialize import materialize

# (kernel, stride, expand, cin, cout); residual iff stride == 1 and cin == cout.
LITE0_BLOCKS = (
    (3, 1, 1, 32, 16),
    (3, 2, 6, 16, 24), (3, 1, 6, 24, 24),
    (5, 2, 6, 24, 40), (5, 1, 6, 40, 40),
    (3, 2, 6, 40, 80), (3, 1, 6, 80, 80), (3, 1, 6, 80, 80),
    (5, 1, 6, 80, 112), (5, 1, 6, 112, 112), (5, 1, 6, 112, 112),
    (5, 2, 6, 112, 192), (5, 1, 6, 192, 192), (5, 1, 6, 192, 192), (5, 1, 6, 192, 192),
    (3, 1, 6, 192, 320),
)
BN = dict(momentum=0.99, epsilon=1e-3)
# PyTorch-style init (the TF EfficientNet one): convs N(0, 2/fan_out); the loader overwrites it.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
ALL_FROZEN = 17  # frozen_blocks value that freezes stem + 16 blocks + conv_head


class MBConv(nn.Module):
  kernel: int
  stride: int
  expand: int
  cout: int
  bn_momentum: float = BN["momentum"]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    bn = dict(BN, momentum=self.bn_momentum)
    cin = x.shape[-1]
    y = x
    if self.expand != 1:
      y = Conv(cin * self.expand, (1, 1), use_bias=False, kernel_init=_conv_init,
               name="expand_conv")(y)
      y = nn.relu6(batch_norm(train, "bn0", **bn)(y))
    ch = y.shape[-1]
    y = Conv(ch, (self.kernel, self.kernel), (self.stride, self.stride), padding="SAME",
             use_bias=False, feature_group_count=ch, kernel_init=_conv_init,
             name="depthwise_conv")(y)
    y = nn.relu6(batch_norm(train, "bn1", **bn)(y))
    y = Conv(self.cout, (1, 1), use_bias=False, kernel_init=_conv_init, name="project_conv")(y)
    y = batch_norm(train, "bn2", **bn)(y)
    if self.stride == 1 and cin == self.cout:
      y = materialize(y + x)  # the residual stream: computed once (XLA:CPU)
    return y


class EfficientNetLite0(nn.Module):
  num_classes: int | None = 1000
  dropout: float = 0.2
  blocks: tuple = LITE0_BLOCKS
  stem_features: int = 32
  head_features: int = 1280
  frozen_blocks: int = 0
  bn_momentum: float = BN["momentum"]
  head_name = "fc"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    n_blocks, k = len(self.blocks), int(self.frozen_blocks)
    if not 0 <= k <= n_blocks + 1:
      raise ConfigError("model.frozen_blocks", k, f"0..{n_blocks + 1}")
    bn = dict(BN, momentum=self.bn_momentum)

    def part_train(i: int) -> bool:  # i: -1 stem, 0..n-1 blocks, n conv_head
      return train and not (k > 0 and i < k)

    def cut_after(i: int, y: jax.Array) -> jax.Array:
      return jax.lax.stop_gradient(y) if k > 0 and i == k - 1 else y

    feats = {}
    x = Conv(self.stem_features, (3, 3), (2, 2), padding="SAME", use_bias=False,
             kernel_init=_conv_init, name="conv_stem")(x)
    x = nn.relu6(batch_norm(part_train(-1), "bn0", **bn)(x))
    feats["stage0"] = x
    stage = 0
    for i, (ks, s, e, _, cout) in enumerate(self.blocks):
      x = MBConv(ks, s, e, cout, bn_momentum=self.bn_momentum, name=f"blocks_{i}")(
          x, part_train(i))
      x = cut_after(i, x)
      last_of_group = i + 1 == n_blocks or self.blocks[i + 1][4] != cout
      if last_of_group:
        stage += 1
        feats[f"stage{stage}"] = x
    x = Conv(self.head_features, (1, 1), use_bias=False, kernel_init=_conv_init,
             name="conv_head")(x)
    x = nn.relu6(batch_norm(part_train(n_blocks), "bn1", **bn)(x))
    x = cut_after(n_blocks, x)
    feats[f"stage{stage + 1}"] = x
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x, feats
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    return nn.Dense(self.num_classes, kernel_init=dense_init, name=self.head_name)(x), feats
