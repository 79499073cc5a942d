"""EfficientNet-Lite0 whose bottom part is frozen *in the forward pass*: inference-mode BatchNorm
and `stop_gradient` on its output, so backpropagation stops at the cut.

Why: freezing by optimiser rules (optax set_to_zero) gives frozen parameters zero updates but
`jax.grad` still backpropagates through the whole backbone. On a 2-core CPU a training step of
EfficientNet-Lite0 costs ~7x its forward pass (depthwise-conv gradients are slow in XLA:CPU), so
"transfer learning" (frozen backbone) and top-block fine-tuning cost as much as training from
scratch. Cutting the graph makes them cost about one forward pass (+ the unfrozen top).

Same parameter names and shapes as `EfficientNetLite0` (the ImageNet loader and weight grafting
work unchanged), same outputs in eval mode; in train mode the frozen part behaves as Keras's
`trainable=False` (BatchNorm uses its running statistics) and is excluded from differentiation.
Use it together with the strategy's freeze rules (which keep the frozen parameters bit-identical).

`frozen_blocks`: 0 = nothing cut (plain EfficientNet-Lite0); k in 1..16 = stem + MBConv blocks
0..k-1 frozen; 17 = the whole backbone (stem, 16 blocks, conv_head) frozen.
Seed 001's "top block" = blocks 11-15 (the 192- and 320-channel stages) + conv_head: 11.
`bn_momentum`: running-average momentum of every BatchNorm (default 0.99, TF/Keras; 0.9 =
PyTorch's 0.1, which lets short CPU runs from scratch reach usable running statistics).
"""

from __future__ import annotations

from flax import linen as nn
import jax
import jax.numpy as jnp

from tl_jax.errors import ConfigError
from tl_jax.models.efficientnet import BN, MBConv, EfficientNetLite0, _conv_init
from tl_jax.models.layers import Conv, batch_norm

ALL_FROZEN = 17


class _MBConv(MBConv):
  """MBConv with a configurable BatchNorm momentum (same parameter names)."""
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
      y = y + x
    return y


class EfficientNetLite0Cut(EfficientNetLite0):
  frozen_blocks: int = 0
  bn_momentum: float = BN["momentum"]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    n_blocks = len(self.blocks)
    k = int(self.frozen_blocks)
    if not 0 <= k <= n_blocks + 1:
      raise ConfigError("model.frozen_blocks", k, f"0..{n_blocks + 1}")
    feats = {}

    def part_train(i):  # i: -1 stem, 0..n-1 blocks, n conv_head
      return train and not (k > 0 and i < k)

    def cut_after(i, x):
      return jax.lax.stop_gradient(x) if k > 0 and i == k - 1 else x

    x = Conv(self.stem_features, (3, 3), (2, 2), padding="SAME", use_bias=False,
             kernel_init=_conv_init, name="conv_stem")(x)
    bn = dict(BN, momentum=self.bn_momentum)
    x = nn.relu6(batch_norm(part_train(-1), "bn0", **bn)(x))
    feats["stage0"] = x
    stage = 0
    for i, (ks, s, e, _, cout) in enumerate(self.blocks):
      x = _MBConv(ks, s, e, cout, bn_momentum=self.bn_momentum, name=f"blocks_{i}")(
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
