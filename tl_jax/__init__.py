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
