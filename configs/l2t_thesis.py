"""`--config configs/l2t_thesis.py[:arg]` from the checkout. The config itself, with its command and
the numbers it produced, is tl_jax/configs/l2t_thesis.py (`tl_jax.configs.get("l2t_thesis")` from Python)."""

from tl_jax.configs.l2t_thesis import *  # noqa: F401,F403
from tl_jax.configs.l2t_thesis import get_config  # noqa: F401
