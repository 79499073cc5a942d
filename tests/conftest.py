"""Test helpers: a `shared` marker that skips with a reason when ../shared is absent."""

import os

# The suite compiles with LLVM's -O0 (`--xla_backend_optimization_level=0`, appended to the
# caller's own flags unless they set it): its tiny programs are compile-bound (an L2T-www K = 3
# engine test: 74 s at XLA's default -O2, 51 s at -O0). XLA's HLO passes (fusion, layouts, the
# conv rewrites tests/test_models.py checks) are the same at both levels; only machine code
# differs (the optimized HLO of the VGG-9, ResNet-32 and Lite0 steps is identical text), so
# numerics agree to rounding, which is what the tolerances allow. Benchmarks and the
# command lines keep XLA's default. Subprocesses inherit it; tests that need 4 devices spawn one.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import pathlib

import jax
import pytest

from tl_jax import paths

# Persistent XLA cache: the many tiny runs in the suite compile the same programs again and again.
_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax_tests"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_collection_modifyitems(config, items):
  root = paths.shared_root()
  if root is not None:
    return
  skip = pytest.mark.skip(reason="needs ../shared (real data/weights); set TL_JAX_SHARED or place "
                          "shared/ beside the checkout")
  for item in items:
    if "shared" in item.keywords:
      item.add_marker(skip)


@pytest.fixture
def shared_root():
  root = paths.shared_root()
  if root is None:
    pytest.skip("needs ../shared")
  return root
