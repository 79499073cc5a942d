"""Glue for the seed-document scenarios (configs/seed00*_*.py).

Importing this package registers the scenario models in the model registry (until the registry
lists them itself): 'seed003_cnn' (tl_jax.scenarios.cnn.Seed003CNN) and 'efficientnet_lite0_cut'
(tl_jax.scenarios.efficientnet_cut.EfficientNetLite0Cut). Other modules:
`gtsrb` (seed 004's load-time preprocessing, cached as npz), `tables` (train/val/test Markdown
tables from run summaries), `gradcam_panel` (seed 000's Grad-CAM panel from run workdirs).
"""

from __future__ import annotations

from tl_jax import models as _models
from tl_jax.scenarios.cnn import Seed003CNN
from tl_jax.scenarios.efficientnet_cut import EfficientNetLite0Cut

SCENARIO_MODELS = {"seed003_cnn": Seed003CNN, "efficientnet_lite0_cut": EfficientNetLite0Cut}
_SHAPES = {"seed003_cnn": (32, 32, 3), "efficientnet_lite0_cut": (224, 224, 3)}


def register() -> None:
  """Adds the scenario models to tl_jax.models' registry (idempotent)."""
  for name, cls in SCENARIO_MODELS.items():
    _models._REGISTRY.setdefault(name, cls)  # pylint: disable=protected-access
    _models._INPUT_SHAPES.setdefault(name, _SHAPES[name])  # pylint: disable=protected-access


register()

__all__ = ["EfficientNetLite0Cut", "SCENARIO_MODELS", "Seed003CNN", "register"]
