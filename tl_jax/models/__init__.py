"""Model zoo: Flax Linen modules returning `(logits, features)`; a name-based registry.

Every model: `__call__(x, train=False) -> (logits, features)` with NHWC float32 input and
`features` a dict of named intermediate maps (float64 input under jax_enable_x64: initialise with
`init_variables` for float64 params). jit/eval_shape return dicts with *sorted* keys, so
feature names are chosen such that `ordered_feature_names(features)` (natural sort: 'block2' <
'block10') gives forward order for every model here.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from flax import linen as nn

from tl_jax.errors import ConfigError
from tl_jax.models.alexnet import AlexNet
from tl_jax.models.cnn import Seed003CNN
from tl_jax.models.efficientnet import EfficientNetLite0
from tl_jax.models.layers import Conv, batch_norm_mask, count_params, init_variables
from tl_jax.models.lenet import LeNet5
from tl_jax.models.resnet import ResNet32, ResNet50
from tl_jax.models.tiny import TinyCNN, TinyMLP
from tl_jax.models.vgg import VGG9, VGG16

_REGISTRY: dict[str, type[nn.Module]] = {
    "lenet5": LeNet5,
    "alexnet": AlexNet,
    "vgg9": VGG9,
    "vgg16": VGG16,
    "resnet32": ResNet32,
    "resnet50": ResNet50,
    "efficientnet_lite0": EfficientNetLite0,
    "seed003_cnn": Seed003CNN,
    "tiny_cnn": TinyCNN,
    "tiny_mlp": TinyMLP,
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)  # the built-in models; see model_names()
# Older names still accepted (configs and run workdirs written before the rename).
_ALIASES = {"efficientnet_lite0_cut": "efficientnet_lite0"}

_INPUT_SHAPES = {
    "lenet5": (32, 32, 1),
    "alexnet": (224, 224, 3),
    "vgg9": (32, 32, 3),
    "vgg16": (224, 224, 3),
    "resnet32": (32, 32, 3),
    "resnet50": (224, 224, 3),
    "efficientnet_lite0": (224, 224, 3),
    "seed003_cnn": (32, 32, 3),
    "tiny_cnn": (16, 16, 3),
    "tiny_mlp": (8, 8, 1),
}
# kwargs the registry accepts but the module does not store (the input decides them).
_IGNORED_KWARGS = {"lenet5": ("in_channels",)}


def register_model(name: str, cls: type[nn.Module], input_shape: tuple[int, int, int],
                   head_name: str | None = None) -> None:
  """Makes `cls` available as `model.name = name` (configs, sweeps, weight grafting).

  The tl_jax model contract: a Flax Linen module with a `num_classes: int | None` field (None
  builds it without its classification layer), `__call__(x, train=False) -> (logits,
  features)` with `features` a dict of named intermediate maps, and the classification
  layer's submodule name in `head_name` (class attribute or this argument; default 'head').
  `input_shape` is the (H, W, C) it expects by default. Registering a built-in name again is
  an error; a user name may be re-registered (notebooks re-run cells).
  """
  if name in MODEL_NAMES:
    raise ConfigError("register_model.name", name, hint="a built-in model has that name")
  if "num_classes" not in getattr(cls, "__dataclass_fields__", {}):
    raise ConfigError("register_model.cls", getattr(cls, "__name__", cls),
                      hint="needs a `num_classes: int | None` field (the tl_jax model contract)")
  if head_name is not None:
    cls.head_name = head_name
  elif not hasattr(cls, "head_name"):
    cls.head_name = "head"
  _REGISTRY[name] = cls
  _INPUT_SHAPES[name] = tuple(int(x) for x in input_shape)


def model_names() -> tuple[str, ...]:
  """Every model name a config may use: the built-in ones, then registered ones."""
  return tuple(_REGISTRY)


def _check_name(name: str) -> str:
  name = _ALIASES.get(name, name)
  if name not in _REGISTRY:
    raise ConfigError("model.name", name, model_names())
  return name


def create_model(name: str, num_classes: int | None, **kwargs: Any) -> nn.Module:
  """Builds model `name`; `num_classes=None` builds it without its classification layer."""
  name = _check_name(name)
  cls = _REGISTRY[name]
  for k in _IGNORED_KWARGS.get(name, ()):
    kwargs.pop(k, None)
  if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
    raise ConfigError("model.num_classes", num_classes, "a positive int or None")
  fields = set(cls.__dataclass_fields__) - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ConfigError(f"model.{unknown[0]}", kwargs[unknown[0]],
                      sorted(fields - {"num_classes"}), hint=f"not an option of {name}")
  return cls(num_classes=num_classes, **kwargs)


def head_regex(name: str) -> str:
  """Regex matching the '/'-joined param paths of the classification layer of model `name`."""
  head = _REGISTRY[_check_name(name)].head_name
  return rf"^{re.escape(head)}/"


def default_input_shape(name: str, variant: str | None = None) -> tuple[int, int, int]:
  """(H, W, C) a model expects by default ('alexnet' variant 'small' -> (32, 32, 3))."""
  name = _check_name(name)
  if name == "alexnet" and variant == "small":
    return (32, 32, 3)
  return _INPUT_SHAPES[name]


def _natural_key(s: str) -> list:
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def ordered_feature_names(features: Iterable[str]) -> list[str]:
  """Feature names in forward order (natural sort), whatever order a dict came back in."""
  return sorted(features, key=_natural_key)


__all__ = [
    "AlexNet", "Conv", "EfficientNetLite0", "LeNet5", "MODEL_NAMES", "ResNet32", "ResNet50",
    "Seed003CNN", "TinyCNN", "TinyMLP", "VGG9", "VGG16", "batch_norm_mask", "count_params",
    "create_model", "default_input_shape", "head_regex", "init_variables", "ordered_feature_names",
]
