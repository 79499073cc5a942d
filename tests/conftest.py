"""Test helpers: a `shared` marker that skips with a reason when ../shared is absent."""

import os

os.environ.setdefault("XLA_FLAGS", "")  # keep user flags; tests that need 4 devices spawn a subprocess

import pytest

from tl_jax import paths


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
