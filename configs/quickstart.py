"""`--config configs/quickstart.py[:arg]` from the checkout. The config itself, with its command and
the numbers it produced, is tl_jax/configs/quickstart.py (`tl_jax.configs.get("quickstart")` from Python)."""

from tl_jax.configs.quickstart import *  # noqa: F401,F403
from tl_jax.configs.quickstart import get_config  # noqa: F401
