"""tl_jax: transfer learning of CNN image classifiers in JAX/Flax.

Importing tl_jax sets `jax_threefry_partitionable=False`: with the default (True) in jax 0.10,
XLA:CPU compiles random initialisers about 10x slower (a tiny CNN's `init` took 7.8 s to compile
vs 0.8 s), and every run pays that. It only changes which random numbers a key yields; set
TL_JAX_KEEP_JAX_RNG=1 to leave jax's default alone.
"""

import os as _os

import jax as _jax

if _os.environ.get("TL_JAX_KEEP_JAX_RNG") != "1":
  _jax.config.update("jax_threefry_partitionable", False)

__version__ = "0.1.0"

# The Python API, imported on first use (importing tl_jax stays cheap):
#   tl_jax.base_config(), tl_jax.configs.get(name), tl_jax.train_and_evaluate(config, workdir),
#   tl_jax.run_seeds(config, seeds, workdirs), tl_jax.register_model, tl_jax.register_dataset.
_API = {"base_config": ("tl_jax.config", "base_config"),
        "train_and_evaluate": ("tl_jax.experiment", "train_and_evaluate"),
        "run_seeds": ("tl_jax.experiment", "run_seeds"),
        "register_model": ("tl_jax.models", "register_model"),
        "register_dataset": ("tl_jax.data.sources", "register_dataset")}


def __getattr__(name):
  if name in _API:
    import importlib
    mod, attr = _API[name]
    return getattr(importlib.import_module(mod), attr)
  if name == "configs":
    import importlib
    return importlib.import_module("tl_jax.configs")
  raise AttributeError(f"module 'tl_jax' has no attribute {name!r}")


__all__ = sorted(_API) + ["configs"]
