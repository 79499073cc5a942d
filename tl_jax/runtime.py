"""What a command line sets up before JAX starts: `setup(config)`.

- the run's XLA:CPU flags (`train.xla_cpu_flags`, below);
- `jax.distributed.initialize()` on pod slices (TL_JAX_MULTIHOST=1: every host runs the command);
- the persistent compilation cache (TL_JAX_COMPILATION_CACHE, set by launch/env.sh: a cold start
  5.7 s -> 1.5 s on the 2-core CPU).

XLA:CPU flags, chosen by measurement. Why: XLA reads XLA_FLAGS once per process, when its CPU
backend starts, so a flag cannot be chosen per convolution from inside a model. On the 2-core
AVX2 CPU of results/benchmarks/README.md, XLA's YNNPACK convolutions were slower than its Eigen
ones for every model tl_jax has, while YNNPACK's dots and fused dots were faster where 1x1
convolutions are matmuls (ResNet-50, EfficientNet-Lite0: -32 % and -68 % with every YNNPACK
fusion off). Turning only the YNNPACK convolutions off (`NO_YNN_CONV`) made the train step inside
the engine's scan 10-50 % faster for LeNet-5, AlexNet, ResNet-32, ResNet-50, EfficientNet-Lite0
and VGG-16 and left VGG-9's (plain step and L2T iteration) as it was (`launch/bench_flags.py`,
one process per flag). On top of that, XLA's concurrency-optimised scheduler
(`CONCURRENCY_SCHEDULER`) made the small models' steps faster still (LeNet-5 +34 %, ResNet-32
+16 %: their ops are too small to keep two cores busy one at a time) and the others equal or
faster. So that is what 'auto' sets, and the command lines (`tl_jax.main`,
`launch/sweep.py`) call `setup` before anything starts the backend; a Python session that has
already computed something keeps the flags it started with.

The flags change how XLA:CPU computes, not what: values agree to float rounding either way. They
are part of a run's config (`train.xla_cpu_flags`), so a resumed run uses the same ones. GPU and
TPU ignore them.
"""

from __future__ import annotations

import os
from typing import Any

from tl_jax.errors import ConfigError

NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="  # every YNNPACK fusion off
# YNNPACK's convolutions off; its dots and dot fusions kept
NO_YNN_CONV = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# XLA's concurrency-optimised HLO schedule: lets independent ops of one step run on both cores
CONCURRENCY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
AUTO_FLAGS: tuple[str, ...] = (NO_YNN_CONV, CONCURRENCY_SCHEDULER)  # 'auto', for every model
ALLOWED = "'auto' (tl_jax's measured flags), 'none' (XLA's defaults) or XLA flags ('--xla_...')"


def parse_xla_cpu_flags(setting: Any, field: str = "train.xla_cpu_flags") -> tuple[str, ...]:
  """The XLA flags a setting ('auto', 'none' or '--xla_...' flags) stands for; anything else is a
  ConfigError naming `field`."""
  if not isinstance(setting, str):
    raise ConfigError(field, setting, ALLOWED)
  if setting == "auto":
    return AUTO_FLAGS
  if setting in ("none", ""):
    return ()
  flags = tuple(setting.split())
  bad = [f for f in flags if not f.startswith("--xla_")]
  if bad:
    raise ConfigError(field, setting, ALLOWED)
  return flags


def xla_cpu_flags(config: Any) -> tuple[str, ...]:
  """The XLA flags `config` asks for (`train.xla_cpu_flags` resolved)."""
  return parse_xla_cpu_flags(config.train.get("xla_cpu_flags", "auto"))


def merge_xla_flags(flags: tuple[str, ...]) -> str:
  """Puts `flags` in front of the XLA_FLAGS environment variable (the caller's own flags come
  after them, so they win) and returns the value now in force. Call it before the first JAX
  computation of the process."""
  own = os.environ.get("XLA_FLAGS", "")
  merged = " ".join([*(f for f in flags if f not in own.split()), own]).strip()
  os.environ["XLA_FLAGS"] = merged
  return merged


def apply_xla_cpu_flags(config: Any) -> str:
  """`merge_xla_flags(xla_cpu_flags(config))`: a run's flags in force for this process."""
  return merge_xla_flags(xla_cpu_flags(config))


def setup(config: Any | None = None) -> None:
  """The process setup of every command line (see the module docstring); `config` None: no
  XLA flags (a command without a run config)."""
  if config is not None:
    apply_xla_cpu_flags(config)
  import jax
  if os.environ.get("TL_JAX_MULTIHOST") == "1":
    jax.distributed.initialize()
  cache = os.environ.get("TL_JAX_COMPILATION_CACHE")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
