"""The L2T-ww source network: ResNet-32 trained on Tiny ImageNet at 32x32 (Jang et al., 2019).

tl_jax's `resnet32` mirrors the PyTorch names (see tl_jax/models/resnet.py): flax module
'blocks2_0' is torch 'blocks2.0', 'downsample_0' is 'downsample.0'. Conv OIHW -> HWIO,
Linear [out, in] -> [in, out], BN weight/bias -> params scale/bias, running_mean/var ->
batch_stats mean/var; num_batches_tracked is ignored. Input: 32x32 RGB, ImageNet mean/std
(Tiny ImageNet's 64x64 images resized with PIL bilinear, as the authors' torchvision `Resize`).
"""

from __future__ import annotations

import os
import re

from tl_jax.weights.common import Variables, assign_from_torch, read_torch_state_dict, \
    template_variables

DEFAULT_PATH = "shared://weights/resnet32_tinyimagenet_l2tww.npz"
TORCH_PATH = "shared://weights/resnet32_tinyimagenet_l2tww.pth.tar"
NUM_CLASSES = 200
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torch_key(path: tuple[str, ...]) -> str:
  """flax module path -> torch module name: ('blocks2_0', 'conv1') -> 'blocks2.0.conv1'."""
  return ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in path)


def load_resnet32_l2t(path: str | os.PathLike = DEFAULT_PATH, model=None) -> Variables:
  """{'params', 'batch_stats'} for `model` (default `create_model('resnet32', 200)`).

  `path`: the `.npz` (no torch needed) or the original `.pth.tar` (needs torch). A model built
  with `num_classes=None` takes everything but `fc.*` (dropped on purpose); otherwise strict.
  """
  from tl_jax.models import create_model
  if model is None:
    model = create_model("resnet32", NUM_CLASSES)
  state = read_torch_state_dict(path)
  template = template_variables(model, (32, 32, 3))
  drop = ("fc.",) if getattr(model, "num_classes", NUM_CLASSES) is None else ()
  return assign_from_torch(template, state, torch_key, str(path), drop_prefixes=drop)
