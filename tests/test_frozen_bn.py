"""transfer.bn='frozen_layers': the BatchNorms of frozen layers run in inference mode and keep
their statistics, those of trainable layers train (the Keras convention for a frozen base)."""

import chex
import jax
import numpy as np
import optax

from tl_jax import models
from tl_jax.models.layers import frozen_batch_norm
from tl_jax.train import masks, steps
from tl_jax.train.state import TrainState


def _setup():
  model = models.create_model("tiny_cnn", 3, width=4)
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 3))
  v = model.init(jax.random.PRNGKey(0), x, train=False)
  # non-trivial running statistics, so that inference mode differs from batch statistics
  v = {"params": v["params"],
       "batch_stats": jax.tree.map(lambda a: a + 0.3, v["batch_stats"])}
  return model, v, x


def _apply(model, v, x, frozen):
  with frozen_batch_norm(frozen):
    (logits, _), mutated = model.apply(v, x, train=True, mutable=["batch_stats"])
  return logits, mutated["batch_stats"]


def test_module_paths_select_which_batch_norms_run_in_inference_mode():
  model, v, x = _setup()
  live, bs_live = _apply(model, v, x, False)
  every, bs_every = _apply(model, v, x, True)
  both, bs_both = _apply(model, v, x, {"bn0", "bn1"})
  one, bs_one = _apply(model, v, x, {"bn0"})
  chex.assert_trees_all_equal(both, every)          # all paths == frozen everywhere
  chex.assert_trees_all_equal(bs_both, v["batch_stats"])
  chex.assert_trees_all_equal(bs_every, v["batch_stats"])
  assert not np.allclose(one, live) and not np.allclose(one, every)
  chex.assert_trees_all_equal(bs_one["bn0"], v["batch_stats"]["bn0"])  # kept
  # bn1 trains (its input differs from the live run's: bn0 upstream ran in inference mode)
  assert not np.allclose(bs_one["bn1"]["mean"], v["batch_stats"]["bn1"]["mean"])
  assert not np.allclose(bs_live["bn0"]["mean"], v["batch_stats"]["bn0"]["mean"])


def test_frozen_modules_are_those_whose_params_are_all_frozen():
  model, v, _ = _setup()
  frozen = masks.frozen_mask(v["params"], [r"^(?!head)"])
  assert masks.frozen_modules(v["params"], frozen) == {"conv0", "bn0", "conv1", "bn1"}
  frozen = masks.frozen_mask(v["params"], [r"conv0", r"bn0/scale"])
  assert masks.frozen_modules(v["params"], frozen) == {"conv0"}  # bn0/bias still trains


def test_k_steps_of_a_frozen_backbone_keep_params_and_bn_statistics_bit_identical():
  model, v, x = _setup()
  frozen = masks.frozen_mask(v["params"], [r"^(?!head)"])
  tx = optax.multi_transform({"train": optax.sgd(0.1, momentum=0.9), "frozen": optax.set_to_zero()},
                             jax.tree.map(lambda f: "frozen" if f else "train", frozen))
  state = TrainState.create(model.apply, v["params"], v["batch_stats"], tx)
  step = steps.make_train_step(model, None, bn_frozen=masks.frozen_modules(v["params"], frozen),
                               trainable=jax.tree.map(lambda f: not f, frozen))
  batch = {"image": (x * 255).astype(np.uint8), "label": np.array([0, 1, 2, 0, 1, 2, 0, 1])}
  start = jax.tree.map(np.asarray, {"params": v["params"], "batch_stats": v["batch_stats"]})
  for i in range(3):
    state, _ = step(state, batch, jax.random.PRNGKey(i))
  for name in ("conv0", "bn0", "conv1", "bn1"):
    chex.assert_trees_all_equal(state.params[name], start["params"][name])
  chex.assert_trees_all_equal(state.batch_stats, start["batch_stats"])
  assert not np.allclose(state.params["head"]["kernel"], start["params"]["head"]["kernel"])
