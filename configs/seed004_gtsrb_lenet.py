"""`--config configs/seed004_gtsrb_lenet.py[:arg]` from the checkout. The config itself, with its command and
the numbers it produced, is tl_jax/configs/seed004_gtsrb_lenet.py (`tl_jax.configs.get("seed004_gtsrb_lenet")` from Python)."""

from tl_jax.configs.seed004_gtsrb_lenet import *  # noqa: F401,F403
from tl_jax.configs.seed004_gtsrb_lenet import get_config  # noqa: F401
