"""`--config configs/seed000_catsdogs_five_scenarios.py[:arg]` from the checkout. The config itself, with its command and
the numbers it produced, is tl_jax/configs/seed000_catsdogs_five_scenarios.py (`tl_jax.configs.get("seed000_catsdogs_five_scenarios")` from Python)."""

from tl_jax.configs.seed000_catsdogs_five_scenarios import *  # noqa: F401,F403
from tl_jax.configs.seed000_catsdogs_five_scenarios import get_config  # noqa: F401
