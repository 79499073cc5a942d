"""Tiny models so tests of training/transfer code run in milliseconds on CPU.

tiny_cnn: conv0 (3x3, `width`) + BN + ReLU -> 2x2 max pool -> conv1 (3x3, 2*`width`) + BN + ReLU
-> global average pool -> Dense 'head'. Features 'conv0', 'conv1' (post-ReLU, conv1 at half res).
tiny_mlp: flatten -> fc0 -> ReLU -> fc1 -> ReLU -> Dense 'head'. Features 'fc0', 'fc1'.
"""

from __future__ import annotations

from flax import linen as nn
import jax
import jax.numpy as jnp

from tl_jax.models.layers import Conv, batch_norm, he_fan_out, max_pool


class TinyCNN(nn.Module):
  num_classes: int | None = 10
  width: int = 8
  head_name = "head"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    feats = {}
    x = Conv(self.width, (3, 3), padding=1, kernel_init=he_fan_out, name="conv0")(x)
    x = nn.relu(batch_norm(train, "bn0")(x))
    feats["conv0"] = x
    x = max_pool(x, (2, 2), (2, 2))
    x = Conv(2 * self.width, (3, 3), padding=1, kernel_init=he_fan_out, name="conv1")(x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    feats["conv1"] = x
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x, feats
    return nn.Dense(self.num_classes, name=self.head_name)(x), feats


class TinyMLP(nn.Module):
  num_classes: int | None = 10
  hidden: int = 32
  head_name = "head"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    feats = {}
    x = x.reshape(x.shape[0], -1)
    for i in range(2):
      x = nn.relu(nn.Dense(self.hidden, name=f"fc{i}")(x))
      feats[f"fc{i}"] = x
    if self.num_classes is None:
      return x, feats
    return nn.Dense(self.num_classes, name=self.head_name)(x), feats
