"""Classifier heads placed on a backbone built without its top (`num_classes=None`).

`Classifier(backbone, head)` keeps the backbone's param tree under 'backbone' and the head under
'head', so freezing rules are simply '^backbone/' vs '^head/'. The heads are those of the seed
documents: seed 001's Dense 256 + Dropout 0.5 and seed 000's CustomResNet head.
"""

from __future__ import annotations

from typing import Any

from flax import linen as nn
import jax

from tl_jax.errors import check_choice
from tl_jax.models.layers import batch_norm

HEADS = ("default", "linear", "dense256", "custom_resnet")


class Dense256Head(nn.Module):
  """Seed 001/004: Dense(hidden, relu) -> Dropout(rate) -> Dense(num_classes)."""
  num_classes: int
  hidden: int = 256
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="out")(x)


class CustomResNetHead(nn.Module):
  """Seed 000's head: Flatten, Dropout, BN, Dense 512 relu (+L2 via the optimiser rules),
  Dropout, BN, Dense 256 relu, Dense num_classes (softmax lives in the loss)."""
  num_classes: int
  dropout: float = 0.5
  bn_momentum: float = 0.99  # Keras default; 0.9 for short runs (few hundred steps)

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: batch_norm(train, name, momentum=self.bn_momentum,  # noqa: E731
                                 epsilon=1e-3)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = bn("bn1")(x)
    x = nn.relu(nn.Dense(512, name="fc1")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = bn("bn2")(x)
    x = nn.relu(nn.Dense(256, name="fc2")(x))
    return nn.Dense(self.num_classes, name="out")(x)


class LinearHead(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.num_classes, name="out")(x.reshape((x.shape[0], -1)))


class Classifier(nn.Module):
  """backbone (built with num_classes=None, returns (pooled, features)) + a head module."""
  backbone: nn.Module
  head: nn.Module
  head_name = "head"

  def __call__(self, x: jax.Array, train: bool = False):
    pooled, feats = self.backbone(x, train=train)
    return self.head(pooled, train=train), feats


def make_head(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  check_choice("model.head", name, HEADS[1:])
  cls = {"linear": LinearHead, "dense256": Dense256Head, "custom_resnet": CustomResNetHead}[name]
  return cls(num_classes=num_classes, **kwargs)


def backbone_features(model: nn.Module, variables: dict, images: jax.Array) -> jax.Array:
  """The pooled backbone output (no head), eval mode: what feature extraction caches."""
  if isinstance(model, Classifier):
    sub = {k: v["backbone"] for k, v in variables.items() if "backbone" in v}
    pooled, _ = model.backbone.apply(sub, images, train=False)
  else:
    pooled, _ = model.clone(num_classes=None).apply(_without_head(model, variables), images,
                                                    train=False)
  return pooled.reshape((pooled.shape[0], -1))


def _without_head(model: nn.Module, variables: dict) -> dict:
  head = type(model).head_name
  return {k: {n: p for n, p in v.items() if n != head} for k, v in variables.items()}


__all__ = ["Classifier", "CustomResNetHead", "Dense256Head", "HEADS", "LinearHead",
           "backbone_features", "make_head"]
