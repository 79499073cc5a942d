"""`--config configs/l2t_cpu_mini.py[:arg]` from the checkout. The config itself, with its command and
the numbers it produced, is tl_jax/configs/l2t_cpu_mini.py (`tl_jax.configs.get("l2t_cpu_mini")` from Python)."""

from tl_jax.configs.l2t_cpu_mini import *  # noqa: F401,F403
from tl_jax.configs.l2t_cpu_mini import get_config  # noqa: F401
