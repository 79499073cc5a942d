"""LeNet-5 for 32x32 inputs (1 or 3 channels; the input decides).

Layout: conv1 6@5x5 VALID -> pool 2x2 -> conv2 16@5x5 VALID -> pool 2x2 -> flatten (5*5*16 = 400)
-> fc1 120 -> fc2 84 -> head. 'classic' uses tanh + average pooling (LeCun 1998 without the
sparse C3 table and RBF output); 'modern' uses ReLU + max pooling.

Parameter count (C input channels, K classes):
  conv1 5*5*C*6+6, conv2 5*5*6*16+16 = 2,416, fc1 400*120+120 = 48,120, fc2 120*84+84 = 10,164,
  head 84*K+K.  C=1, K=10: 61,706.  C=3, K=10: 62,006.
`dropout` (a rate, e.g. 0.3 for keep-prob 0.7) is applied to the input of every Dense layer in
train mode; it needs `rngs={'dropout': key}`. With `num_classes=None` the model has no fc/head
layers and returns the flattened 400-d conv features as `logits`.
"""

from __future__ import annotations

from flax import linen as nn
import jax
import jax.numpy as jnp

from tl_jax.errors import ConfigError, check_choice
from tl_jax.models.layers import Conv, avg_pool, max_pool

VARIANTS = ("classic", "modern")


class LeNet5(nn.Module):
  """LeNet-5; features: block1 (conv1+act+pool, 14x14x6), block2 (5x5x16), fc1, fc2."""
  num_classes: int | None = 10
  variant: str = "classic"
  dropout: float = 0.0
  head_name = "head"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    check_choice("model.variant", self.variant, VARIANTS)
    if x.ndim != 4 or x.shape[1:3] != (32, 32):
      raise ConfigError("model.input_shape", x.shape, "[N, 32, 32, C]")
    classic = self.variant == "classic"
    act = jnp.tanh if classic else nn.relu
    pool = avg_pool if classic else max_pool
    feats = {}
    x = act(Conv(6, (5, 5), padding="VALID", name="conv1")(x))
    x = pool(x, (2, 2), (2, 2))
    feats["block1"] = x
    x = act(Conv(16, (5, 5), padding="VALID", name="conv2")(x))
    x = pool(x, (2, 2), (2, 2))
    feats["block2"] = x
    x = x.reshape(x.shape[0], -1)
    if self.num_classes is None:
      return x, feats
    drop = nn.Dropout(self.dropout, deterministic=not train)
    x = act(nn.Dense(120, name="fc1")(drop(x)))
    feats["fc1"] = x
    x = act(nn.Dense(84, name="fc2")(drop(x)))
    feats["fc2"] = x
    logits = nn.Dense(self.num_classes, name=self.head_name)(drop(x))
    return logits, feats
