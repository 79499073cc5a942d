"""AlexNet (single-tower, no LRN) in an ImageNet layout and a 'small' layout for 32x32 inputs.

'imagenet' (224x224): conv1 96@11x11/4 pad 2 -> maxpool 3/2 -> conv2 256@5x5 pad 2 -> maxpool 3/2
-> conv3 384@3x3 -> conv4 384@3x3 -> conv5 256@3x3 -> maxpool 3/2 (6x6x256) -> flatten 9216 ->
dropout -> fc1 4096 -> dropout -> fc2 4096 -> head. 62,378,344 params with 1000 classes.
'small' (32x32): same widths, conv1 5x5/1 SAME, 2x2 max pools after conv1, conv2 and conv5
(4x4x256 = 4096 flat), Dense widths `dense_features` (default 1024 for 'small').
Features 'block1'..'block5': each conv block's output (post-ReLU, after its pool if it has one).
`num_classes=None`: no Dense layers; `logits` is the flattened last block.
"""

from __future__ import annotations

from flax import linen as nn
import jax

from tl_jax.errors import check_choice
from tl_jax.models.layers import Conv, max_pool

VARIANTS = ("imagenet", "small")


class AlexNet(nn.Module):
  num_classes: int | None = 1000
  variant: str = "imagenet"
  dropout: float = 0.5
  dense_features: int | None = None  # default: 4096 ('imagenet'), 1024 ('small')
  head_name = "head"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    check_choice("model.variant", self.variant, VARIANTS)
    imagenet = self.variant == "imagenet"
    if imagenet:
      convs = [(96, 11, 4, 2, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False),
               (384, 3, 1, 1, False), (256, 3, 1, 1, True)]
      pool = lambda y: max_pool(y, (3, 3), (2, 2))
    else:
      convs = [(96, 5, 1, "SAME", True), (256, 5, 1, "SAME", True), (384, 3, 1, "SAME", False),
               (384, 3, 1, "SAME", False), (256, 3, 1, "SAME", True)]
      pool = lambda y: max_pool(y, (2, 2), (2, 2))
    feats = {}
    for i, (width, k, s, pad, has_pool) in enumerate(convs, start=1):
      x = nn.relu(Conv(width, (k, k), (s, s), padding=pad, name=f"conv{i}")(x))
      if has_pool:
        x = pool(x)
      feats[f"block{i}"] = x
    x = x.reshape(x.shape[0], -1)
    if self.num_classes is None:
      return x, feats
    width = self.dense_features or (4096 if imagenet else 1024)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    x = nn.relu(nn.Dense(width, name="fc1")(drop(x)))
    feats["fc1"] = x
    x = nn.relu(nn.Dense(width, name="fc2")(drop(x)))
    feats["fc2"] = x
    return nn.Dense(self.num_classes, name=self.head_name)(x), feats
