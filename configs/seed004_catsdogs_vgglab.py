"""`--config configs/seed004_catsdogs_vgglab.py[:arg]` from the checkout. The config itself, with its command and
the numbers it produced, is tl_jax/configs/seed004_catsdogs_vgglab.py (`tl_jax.configs.get("seed004_catsdogs_vgglab")` from Python)."""

from tl_jax.configs.seed004_catsdogs_vgglab import *  # noqa: F401,F403
from tl_jax.configs.seed004_catsdogs_vgglab import get_config  # noqa: F401
