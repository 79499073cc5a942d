"""Pretrained-weight import into tl_jax variables.

- `load_resnet32_l2t(path)`: the L2T-ww Tiny ImageNet ResNet-32 (.npz, or .pth.tar with torch).
- `load_keras_h5(path, model)`: Keras ResNet-50 / VGG-16 `.h5` (legacy Keras-2 and Keras-3 files).
- `load_efficientnet_lite0(path)`: ImageNet EfficientNet-Lite0 (.npz or .pth, PyTorch names).
Every loader is strict: each tl_jax variable must be filled and each source array used, else a
ConfigError names the missing/extra keys. The shared PyTorch-layout mapping
and helpers live in `tl_jax.weights.common`.
"""

from tl_jax.weights.common import TORCH_IGNORED_SUFFIXES, TORCH_LEAF, Variables, \
    assign_from_torch, flatten, read_torch_state_dict, resolve_existing, template_variables, \
    torch_layout_to_flax, unflatten
from tl_jax.weights.efficientnet_lite0 import load_efficientnet_lite0
from tl_jax.weights.keras_h5 import load_keras_h5, read_keras_h5
from tl_jax.weights.resnet32_l2t import load_resnet32_l2t

__all__ = ["load_resnet32_l2t", "load_keras_h5", "read_keras_h5", "load_efficientnet_lite0",
           "read_torch_state_dict", "assign_from_torch", "template_variables", "flatten",
           "unflatten", "resolve_existing"]
