"""PyTorch reference twins of tl_jax models: numerical references for the weight loaders and a
like-for-like baseline for speed benchmarks. Import only where torch is installed.

- `ResNet32L2T`: the L2T-ww source network with the authors' state_dict names (conv1, bn1, block1,
  blocks2.{0..3}, block3, ..., fc), so `load_state_dict` takes the shared checkpoint as is.
- `EfficientNetLite0`: built from shared/data/efficientnet_lite0_imagenet/architecture.json with
  the PyTorch names of weights.npz (_conv_stem, _bn0, _blocks.i._expand_conv, ..., _fc), TF-"SAME"
  padding (extra pixel right/bottom), ReLU6, BN eps 1e-3.
- `VGG9`, `LeNet5`: parameter names equal the tl_jax param paths ('conv0', 'bn0', 'head', ...), so
  `state_dict_from_flax` fills them from tl_jax variables (LeNet flattens NHWC like tl_jax).
All twins return (logits, list of feature maps) and take NCHW input.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
  """torchvision post-activation basic block with optional 1x1 projection (downsample.0/1)."""

  def __init__(self, cin: int, cout: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet32L2T(nn.Module):
  """CIFAR ResNet-32 (16/32/64), projection shortcuts, global average pool, Linear head."""

  def __init__(self, num_classes: int = 200, widths=(16, 32, 64)):
    super().__init__()
    w = widths
    self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=True)
    self.bn1 = nn.BatchNorm2d(w[0])
    self.block1 = BasicBlock(w[0], w[0])
    self.blocks2 = nn.ModuleList([BasicBlock(w[0], w[0]) for _ in range(4)])
    self.block3 = BasicBlock(w[0], w[1], 2)
    self.blocks4 = nn.ModuleList([BasicBlock(w[1], w[1]) for _ in range(4)])
    self.block5 = BasicBlock(w[1], w[2], 2)
    self.blocks6 = nn.ModuleList([BasicBlock(w[2], w[2]) for _ in range(4)])
    self.fc = nn.Linear(w[2], num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    feats = []
    for first, rest in ((self.block1, self.blocks2), (self.block3, self.blocks4),
                        (self.block5, self.blocks6)):
      x = first(x)
      feats.append(x)
      for b in rest:
        x = b(x)
        feats.append(x)
    return self.fc(x.mean(dim=(2, 3))), feats


def _same_pad(x, k: int, s: int):
  """TensorFlow 'SAME': total pad max((ceil(n/s)-1)*s + k - n, 0), odd pixel right/bottom."""
  pads = []
  for n in (x.shape[3], x.shape[2]):  # F.pad order: W then H
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    pads += [total // 2, total - total // 2]
  return F.pad(x, pads)


class SameConv(nn.Conv2d):
  """Conv2d without bias and with TF-'SAME' padding computed from the input size."""

  def __init__(self, cin, cout, k, stride=1, groups=1):
    super().__init__(cin, cout, k, stride, 0, groups=groups, bias=False)

  def forward(self, x):
    return super().forward(_same_pad(x, self.kernel_size[0], self.stride[0]))


def _bn(c):
  return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
  def __init__(self, k, stride, expand, cin, cout):
    super().__init__()
    mid = cin * expand
    self.has_expand = expand != 1
    if self.has_expand:
      self._expand_conv = SameConv(cin, mid, 1)
      self._bn0 = _bn(mid)
    self._depthwise_conv = SameConv(mid, mid, k, stride, groups=mid)
    self._bn1 = _bn(mid)
    self._project_conv = SameConv(mid, cout, 1)
    self._bn2 = _bn(cout)
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    y = x
    if self.has_expand:
      y = F.relu6(self._bn0(self._expand_conv(y)))
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
  """EfficientNet-Lite0 from architecture.json (a dict or a path to the JSON file)."""

  def __init__(self, arch: Mapping[str, Any] | str, num_classes: int = 1000):
    super().__init__()
    if not isinstance(arch, Mapping):
      with open(arch) as f:
        arch = json.load(f)
    stem, head = arch["stem"], arch["head"]["out"]
    self._conv_stem = SameConv(3, stem["out"], stem["kernel"], stem["stride"])
    self._bn0 = _bn(stem["out"])
    blocks = []
    for b in arch["blocks"]:
      blocks.append(MBConv(b["kernel"], b["stride"], b["expand"], b["cin"], b["cout"]))
      assert blocks[-1].residual == b["residual"], b
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = SameConv(arch["blocks"][-1]["cout"], head, 1)
    self._bn1 = _bn(head)
    self._fc = nn.Linear(head, num_classes)

  def forward(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    feats = [x]
    for b in self._blocks:
      x = b(x)
      feats.append(x)
    x = F.relu6(self._bn1(self._conv_head(x)))
    feats.append(x)
    return self._fc(x.mean(dim=(2, 3))), feats


class VGG9(nn.Module):
  """L2T-ww `vgg9_bn` twin with tl_jax names: conv{i} (bias) -> bn{i} -> ReLU, 5 max-pools."""

  def __init__(self, num_classes: int = 100, cfg=(64, "M", 128, "M", 256, 256, "M", 512, 512, "M",
                                                  512, 512, "M"), in_channels: int = 3):
    super().__init__()
    self.cfg = cfg
    c, i = in_channels, 0
    for v in cfg:
      if v == "M":
        continue
      setattr(self, f"conv{i}", nn.Conv2d(c, v, 3, 1, 1))
      setattr(self, f"bn{i}", nn.BatchNorm2d(v))
      c, i = v, i + 1
    self.head = nn.Linear(c, num_classes)

  def forward(self, x):
    feats, i = [], 0
    for v in self.cfg:
      if v == "M":
        feats.append(x)
        x = F.max_pool2d(x, 2)
        continue
      x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
      i += 1
    return self.head(x.mean(dim=(2, 3))), feats


class LeNet5(nn.Module):
  """LeNet-5 twin with tl_jax names; flattens in NHWC order like tl_jax, so fc1 maps 1:1."""

  def __init__(self, num_classes: int = 10, in_channels: int = 1, variant: str = "classic"):
    super().__init__()
    self.classic = variant == "classic"
    self.conv1 = nn.Conv2d(in_channels, 6, 5)
    self.conv2 = nn.Conv2d(6, 16, 5)
    self.fc1 = nn.Linear(400, 120)
    self.fc2 = nn.Linear(120, 84)
    self.head = nn.Linear(84, num_classes)

  def forward(self, x):
    act = torch.tanh if self.classic else F.relu
    pool = F.avg_pool2d if self.classic else F.max_pool2d
    x = pool(act(self.conv1(x)), 2)
    f1 = x
    x = pool(act(self.conv2(x)), 2)
    f2 = x
    x = x.permute(0, 2, 3, 1).flatten(1)
    x = act(self.fc1(x))
    x = act(self.fc2(x))
    return self.head(x), [f1, f2]


# --- tl_jax variables -> twin state_dict -------------------------------------------------------

def default_key_fn(path: tuple[str, ...]) -> str:
  """'blocks2_0' -> 'blocks2.0' (a list index joined with '_' becomes a torch ModuleList index)."""
  return ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in path)


def efficientnet_key_fn(path: tuple[str, ...]) -> str:
  """'blocks_3/bn0' -> '_blocks.3._bn0'."""
  return ".".join("_" + re.sub(r"_(\d+)$", r".\1", p) for p in path)


_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
         ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
         ("batch_stats", "var"): "running_var"}


def state_dict_from_flax(variables: Mapping[str, Any],
                         key_fn: Callable[[tuple[str, ...]], str] = default_key_fn
                         ) -> dict[str, torch.Tensor]:
  """tl_jax variables -> torch state_dict (HWIO -> OIHW, Dense [in,out] -> [out,in])."""
  out = {}
  for col in ("params", "batch_stats"):
    flat = _flatten(variables.get(col, {}))
    for path, arr in flat.items():
      a = np.asarray(arr, np.float32)
      if a.ndim == 4:
        a = a.transpose(3, 2, 0, 1)
      elif a.ndim == 2:
        a = a.T
      # np.array copies: arrays from JAX are read-only, which torch.from_numpy warns about.
      out[key_fn(path[:-1]) + "." + _LEAF[(col, path[-1])]] = torch.from_numpy(np.array(a, order="C"))
  return out


def _flatten(tree, prefix=()):
  flat = {}
  for k, v in tree.items():
    if hasattr(v, "items"):
      flat.update(_flatten(v, prefix + (k,)))
    else:
      flat[prefix + (k,)] = v
  return flat


def load_twin_from_flax(twin: nn.Module, variables, key_fn=default_key_fn) -> nn.Module:
  """Copies tl_jax variables into `twin` (strict) and puts it in eval mode."""
  state = state_dict_from_flax(variables, key_fn)
  res = twin.load_state_dict(state, strict=False)
  missing = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]
  if missing or res.unexpected_keys:
    raise KeyError(f"twin/flax mismatch: missing {missing[:5]}, extra {res.unexpected_keys[:5]}")
  return twin.eval()


def nhwc_to_torch(x) -> torch.Tensor:
  return torch.from_numpy(np.array(np.asarray(x, np.float32).transpose(0, 3, 1, 2), order="C"))


def num_params(m: nn.Module) -> int:
  return sum(p.numel() for p in m.parameters())


__all__ = ["ResNet32L2T", "EfficientNetLite0", "VGG9", "LeNet5", "state_dict_from_flax",
           "load_twin_from_flax", "default_key_fn", "efficientnet_key_fn", "nhwc_to_torch",
           "num_params"]
