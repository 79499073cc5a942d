"""Seed 003's CIFAR-100 regularisation lab: one baseline CNN with switchable dropout / BatchNorm.

The lab ("Laboratório de Otimização") starts from a plain Keras-style CNN and improves it step by
step with dropout, batch normalisation and data augmentation. Layout (3x3 'SAME' convs, ReLU):

  conv1_1 32, conv1_2 32, max-pool 2 [dropout]  -> 16x16x32   feature 'block1'
  conv2_1 64, conv2_2 64, max-pool 2 [dropout]  -> 8x8x64     feature 'block2'
  flatten 4096 -> fc1 512 ReLU [dropout 2x rate] -> head (num_classes)

`batch_norm=True` puts BatchNorm (Keras defaults: momentum 0.99, eps 1e-3) between every conv /
fc1 and its ReLU. `dropout` is the rate after each pooling (the seed: "normalmente 20 a 30%");
fc1's dropout is min(2 * rate, 0.5). With `num_classes=None` the flattened block2 map is returned.
Params (K classes): 896 + 9,248 + 18,496 + 36,928 + 2,097,664 + 513*K (K=100: 2,214,532), BN adds
2 * (32+32+64+64+512) scalars trained.
"""

from __future__ import annotations

from flax import linen as nn
import jax

from tl_jax.errors import ConfigError
from tl_jax.models.layers import Conv, batch_norm, max_pool

KERAS_BN = dict(momentum=0.99, epsilon=1e-3)  # Keras BatchNormalization defaults


class Seed003CNN(nn.Module):
  num_classes: int | None = 100
  dropout: float = 0.0
  batch_norm: bool = False
  width: int = 32
  fc: int = 512
  head_name = "head"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if x.ndim != 4:
      raise ConfigError("model.input_shape", x.shape, "[N, H, W, C]")
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError("model.dropout", self.dropout, "a rate in [0, 1)")
    feats = {}

    def unit(x, ch, name):
      x = Conv(ch, (3, 3), padding="SAME", use_bias=not self.batch_norm, name=name)(x)
      if self.batch_norm:
        x = batch_norm(train, name + "_bn", **KERAS_BN)(x)
      return nn.relu(x)

    for b, ch in ((1, self.width), (2, 2 * self.width)):
      x = unit(x, ch, f"conv{b}_1")
      x = unit(x, ch, f"conv{b}_2")
      x = max_pool(x, (2, 2), (2, 2))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      feats[f"block{b}"] = x
    x = x.reshape((x.shape[0], -1))
    if self.num_classes is None:
      return x, feats
    x = nn.Dense(self.fc, use_bias=not self.batch_norm, name="fc1")(x)
    if self.batch_norm:
      x = batch_norm(train, "fc1_bn", **KERAS_BN)(x)
    x = nn.relu(x)
    feats["fc1"] = x
    if self.dropout:
      x = nn.Dropout(min(2 * self.dropout, 0.5), deterministic=not train)(x)
    return nn.Dense(self.num_classes, name=self.head_name)(x), feats
