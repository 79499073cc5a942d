"""PyTorch twins of every tl_jax benchmark model, so a train step can be timed like for like.

ResNet-32, VGG-9, LeNet-5 and EfficientNet-Lite0 come from `tl_jax.weights.torch_twins`; this
file adds AlexNet ('small' and 'imagenet'), Keras-layout VGG-16 and Keras-layout ResNet-50. Their
parameter names equal the tl_jax param paths with '/' -> '.', so
`torch_twins.load_twin_from_flax(twin, variables, key_fn=flat_key_fn)` fills them from tl_jax
variables; Dense inputs are flattened in NHWC order like tl_jax, so outputs agree numerically.
All twins take NCHW float input and return (logits, list of feature maps).
Import only where torch is installed (no torchvision needed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from tl_jax.errors import ConfigError
from tl_jax.models.efficientnet import LITE0_BLOCKS
from tl_jax.models.resnet import RESNET50_STAGES
from tl_jax.models.vgg import VGG16_BLOCKS
from tl_jax.weights import torch_twins

_ACT = {"relu": F.relu}


def _flatten_nhwc(x: torch.Tensor) -> torch.Tensor:
  """Flattens like tl_jax (NHWC order), so Dense weights map 1:1 between frameworks."""
  return x.permute(0, 2, 3, 1).flatten(1)


def flat_key_fn(path: tuple[str, ...]) -> str:
  """tl_jax param path -> twin parameter prefix for the twins defined here ('a/b' -> 'a.b')."""
  return ".".join(path)


class AlexNet(nn.Module):
  """tl_jax AlexNet twin ('imagenet': 224x224, 'small': 32x32), dropout before fc1/fc2."""

  def __init__(self, num_classes: int | None = 1000, variant: str = "imagenet",
               dropout: float = 0.5, dense_features: int | None = None, in_channels: int = 3):
    super().__init__()
    imagenet = variant == "imagenet"
    if imagenet:
      convs = [(96, 11, 4, 2, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False),
               (384, 3, 1, 1, False), (256, 3, 1, 1, True)]
      self.pool_k, self.pool_s, flat = 3, 2, 6 * 6 * 256
    else:  # stride-1 odd kernels: 'SAME' == symmetric k // 2
      convs = [(96, 5, 1, 2, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False),
               (384, 3, 1, 1, False), (256, 3, 1, 1, True)]
      self.pool_k, self.pool_s, flat = 2, 2, 4 * 4 * 256
    self.pools = []
    c = in_channels
    for i, (width, k, s, pad, has_pool) in enumerate(convs, start=1):
      setattr(self, f"conv{i}", nn.Conv2d(c, width, k, s, pad))
      self.pools.append(has_pool)
      c = width
    self.num_classes = num_classes
    if num_classes is not None:
      width = dense_features or (4096 if imagenet else 1024)
      self.drop = nn.Dropout(dropout)
      self.fc1 = nn.Linear(flat, width)
      self.fc2 = nn.Linear(width, width)
      self.head = nn.Linear(width, num_classes)

  def forward(self, x):
    feats = []
    for i, has_pool in enumerate(self.pools, start=1):
      x = F.relu(getattr(self, f"conv{i}")(x))
      if has_pool:
        x = F.max_pool2d(x, self.pool_k, self.pool_s)
      feats.append(x)
    x = _flatten_nhwc(x)
    if self.num_classes is None:
      return x, feats
    x = F.relu(self.fc1(self.drop(x)))
    x = F.relu(self.fc2(self.drop(x)))
    return self.head(x), feats


class VGG16(nn.Module):
  """Keras-layout VGG-16 twin (no BN); `num_classes=None` returns the flattened block5 pool."""

  def __init__(self, num_classes: int | None = 1000, in_channels: int = 3):
    super().__init__()
    self.names = []
    c = in_channels
    for b, (width, n) in enumerate(VGG16_BLOCKS, start=1):
      block = []
      for i in range(1, n + 1):
        name = f"block{b}_conv{i}"
        setattr(self, name, nn.Conv2d(c, width, 3, 1, 1))
        block.append(name)
        c = width
      self.names.append(block)
    self.num_classes = num_classes
    if num_classes is not None:
      self.fc1 = nn.Linear(7 * 7 * 512, 4096)
      self.fc2 = nn.Linear(4096, 4096)
      self.predictions = nn.Linear(4096, num_classes)

  def forward(self, x):
    feats = []
    for block in self.names:
      for name in block:
        x = F.relu(getattr(self, name)(x))
      feats.append(x)
      x = F.max_pool2d(x, 2)
    x = _flatten_nhwc(x)
    if self.num_classes is None:
      return x, feats
    x = F.relu(self.fc2(F.relu(self.fc1(x))))
    return self.predictions(x), feats


def _keras_bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, eps=1.001e-5, momentum=0.01)


class ResNet50(nn.Module):
  """Keras ResNet-50 v1 twin: biased convs, stride on the first 1x1 conv, BN eps 1.001e-5."""

  def __init__(self, num_classes: int | None = 1000, in_channels: int = 3):
    super().__init__()
    self.conv1_conv = nn.Conv2d(in_channels, 64, 7, 2, 3)
    self.conv1_bn = _keras_bn(64)
    self.blocks = []  # (prefix, stride, has shortcut conv)
    c = 64
    for stage, filters, blocks, stride in RESNET50_STAGES:
      for b in range(1, blocks + 1):
        p, s = f"conv{stage}_block{b}", (stride if b == 1 else 1)
        if b == 1:
          setattr(self, f"{p}_0_conv", nn.Conv2d(c, 4 * filters, 1, s))
          setattr(self, f"{p}_0_bn", _keras_bn(4 * filters))
        setattr(self, f"{p}_1_conv", nn.Conv2d(c, filters, 1, s))
        setattr(self, f"{p}_1_bn", _keras_bn(filters))
        setattr(self, f"{p}_2_conv", nn.Conv2d(filters, filters, 3, 1, 1))
        setattr(self, f"{p}_2_bn", _keras_bn(filters))
        setattr(self, f"{p}_3_conv", nn.Conv2d(filters, 4 * filters, 1))
        setattr(self, f"{p}_3_bn", _keras_bn(4 * filters))
        self.blocks.append((p, b == 1))
        c = 4 * filters
    self.num_classes = num_classes
    if num_classes is not None:
      self.predictions = nn.Linear(c, num_classes)

  def _unit(self, p, j, x):
    return getattr(self, f"{p}_{j}_bn")(getattr(self, f"{p}_{j}_conv")(x))

  def forward(self, x):
    x = F.relu(self.conv1_bn(self.conv1_conv(x)))
    feats = [x]
    x = F.max_pool2d(x, 3, 2, 1)  # -inf padding == tl_jax zero padding after ReLU
    for p, conv_shortcut in self.blocks:
      shortcut = self._unit(p, 0, x) if conv_shortcut else x
      y = F.relu(self._unit(p, 1, x))
      y = F.relu(self._unit(p, 2, y))
      x = F.relu(shortcut + self._unit(p, 3, y))
      if p.endswith("block1"):
        feats.append(x)
    x = x.mean(dim=(2, 3))
    if self.num_classes is None:
      return x, feats
    return self.predictions(x), feats


def lite0_architecture() -> dict[str, Any]:
  """The architecture dict `torch_twins.EfficientNetLite0` takes, built from tl_jax's table."""
  blocks = [dict(kernel=k, stride=s, expand=e, cin=ci, cout=co, residual=(s == 1 and ci == co))
            for k, s, e, ci, co in LITE0_BLOCKS]
  return {"stem": {"out": 32, "kernel": 3, "stride": 2}, "head": {"out": 1280}, "blocks": blocks}


TWIN_NAMES = ("lenet5", "alexnet", "vgg9", "vgg16", "resnet32", "resnet50", "efficientnet_lite0")


def create_twin(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
  """PyTorch twin of `tl_jax.models.create_model(name, num_classes, **kwargs)`."""
  if name == "lenet5":
    return torch_twins.LeNet5(num_classes, in_channels, kwargs.get("variant", "classic"))
  if name == "alexnet":
    return AlexNet(num_classes, in_channels=in_channels, **kwargs)
  if name == "vgg9":
    return torch_twins.VGG9(num_classes, in_channels=in_channels)
  if name == "vgg16":
    return VGG16(num_classes, in_channels)
  if name == "resnet32":
    return torch_twins.ResNet32L2T(num_classes)
  if name == "resnet50":
    return ResNet50(num_classes, in_channels)
  if name == "efficientnet_lite0":
    return torch_twins.EfficientNetLite0(lite0_architecture(), num_classes)
  raise ConfigError("model.name", name, TWIN_NAMES)


__all__ = ["AlexNet", "VGG16", "ResNet50", "TWIN_NAMES", "create_twin", "flat_key_fn",
           "lite0_architecture"]
