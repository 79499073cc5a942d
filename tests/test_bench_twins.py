"""The PyTorch benchmark twins are the same networks as the tl_jax models: equal parameter counts
for every benchmarked model, and equal outputs once tl_jax weights are copied in."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tl_jax import models  # noqa: E402
from tl_jax.bench import torch_models  # noqa: E402
from tl_jax.weights import torch_twins  # noqa: E402

# (name, kwargs, num_classes, (H, W, C)) -- the shapes launch/benchmark.py times.
CASES = [
    ("lenet5", {}, 10, (32, 32, 1)),
    ("alexnet", {"variant": "small"}, 10, (32, 32, 3)),
    ("alexnet", {"variant": "imagenet"}, 1000, (224, 224, 3)),
    ("vgg9", {}, 100, (32, 32, 3)),
    ("vgg16", {}, 1000, (224, 224, 3)),
    ("resnet32", {}, 200, (32, 32, 3)),
    ("resnet50", {}, 1000, (224, 224, 3)),
    ("efficientnet_lite0", {}, 1000, (224, 224, 3)),
]


def _jax_params(name, kwargs, n, shape):
  model = models.create_model(name, n, **kwargs)
  x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]


@pytest.mark.parametrize("name,kwargs,n,shape", CASES,
                         ids=[c[0] + "_" + c[1].get("variant", "") for c in CASES])
def test_twin_has_same_param_count(name, kwargs, n, shape):
  twin = torch_models.create_twin(name, n, in_channels=shape[-1], **kwargs)
  assert torch_twins.num_params(twin) == models.count_params(_jax_params(name, kwargs, n, shape))
  assert torch_twins.num_params(twin) > 0


@pytest.mark.parametrize("name,kwargs,n,shape", [
    ("alexnet", {"variant": "small"}, 10, (32, 32, 3)),
    ("vgg16", {}, None, (32, 32, 3)),     # without top: any input >= 32
    ("resnet50", {}, None, (32, 32, 3)),  # 1x1 last map: exercises tl_jax's im2col path too
])
def test_twin_matches_tl_jax_outputs(name, kwargs, n, shape):
  model = models.create_model(name, n, **kwargs)
  x = np.random.default_rng(0).uniform(0, 1, (2,) + shape).astype(np.float32)
  variables = model.init(jax.random.key(1), jnp.asarray(x), train=False)
  if name == "resnet50":  # non-trivial BN statistics so a mis-mapped one shows
    rng = np.random.default_rng(2)
    variables = jax.tree.map(lambda a: a, variables)
    variables["batch_stats"] = jax.tree.map(
        lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32),
        variables["batch_stats"])
  want, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  twin = torch_models.create_twin(name, n, in_channels=shape[-1], **kwargs)
  torch_twins.load_twin_from_flax(twin, variables, key_fn=torch_models.flat_key_fn)
  with torch.no_grad():
    got, _ = twin(torch_twins.nhwc_to_torch(x))
  np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=2e-4, atol=2e-4 * float(
      np.abs(np.asarray(want)).max()))


def test_unknown_twin_is_config_error():
  from tl_jax.errors import ConfigError
  with pytest.raises(ConfigError):
    torch_models.create_twin("resnet18", 10)
