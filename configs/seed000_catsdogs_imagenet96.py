"""`--config configs/seed000_catsdogs_imagenet96.py[:arg]` from the checkout. The config itself, with its command and
the numbers it produced, is tl_jax/configs/seed000_catsdogs_imagenet96.py (`tl_jax.configs.get("seed000_catsdogs_imagenet96")` from Python)."""

from tl_jax.configs.seed000_catsdogs_imagenet96 import *  # noqa: F401,F403
from tl_jax.configs.seed000_catsdogs_imagenet96 import get_config  # noqa: F401
