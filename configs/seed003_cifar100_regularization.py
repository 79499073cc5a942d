"""`--config configs/seed003_cifar100_regularization.py[:arg]` from the checkout. The config itself, with its command and
the numbers it produced, is tl_jax/configs/seed003_cifar100_regularization.py (`tl_jax.configs.get("seed003_cifar100_regularization")` from Python)."""

from tl_jax.configs.seed003_cifar100_regularization import *  # noqa: F401,F403
from tl_jax.configs.seed003_cifar100_regularization import get_config  # noqa: F401
