"""Test helpers: a `shared` marker that skips with a reason when ../shared is absent."""

import os

os.environ.setdefault("XLA_FLAGS", "")  # keep user flags; tests that need 4 devices spawn a subprocess

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
