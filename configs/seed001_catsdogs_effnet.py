"""`--config configs/seed001_catsdogs_effnet.py[:arg]` from the checkout. The config itself, with its command and
the numbers it produced, is tl_jax/configs/seed001_catsdogs_effnet.py (`tl_jax.configs.get("seed001_catsdogs_effnet")` from Python)."""

from tl_jax.configs.seed001_catsdogs_effnet import *  # noqa: F401,F403
from tl_jax.configs.seed001_catsdogs_effnet import get_config  # noqa: F401
