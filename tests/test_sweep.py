"""Sweep engine: vmapped K-seed program == per-seed Python loop; masking; sharding; grid."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tl_jax.errors import ConfigError
from tl_jax.models import create_model
from tl_jax.sweep import vmapped

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _data(num_classes=3, per_class=20, size=8, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  centers = rng.uniform(40, 215, size=(num_classes, 1, 1, 3))
  images = centers[labels] + rng.normal(0, 40, size=(labels.size, size, size, 3))
  return np.clip(images, 0, 255).astype(np.uint8), labels


def _flip(key, x):
  """Per-example random horizontal flip: exercises the per-seed augmentation keys."""
  x = x.astype(jnp.float32) / 255.0
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1], x)


# One model, optimiser and batch geometry for every test: the compiled programs are cached and
# shared (patience/min_delta are runtime values), which keeps this file fast on 2 cores.
MODEL = create_model("tiny_cnn", 3, width=4)
TX = optax.sgd(0.1, momentum=0.9)
EPOCHS = 4


def _spec(patience=None):
  return vmapped.LoopSpec(batch_size=5, eval_batch_size=7, patience=patience)  # padded batches


def _setup(seeds=(0, 1, 2), n=4, n_val=4):
  images, labels = _data()
  data = vmapped.draw_seed_data(labels, seeds, n, n_val)
  return MODEL, TX, images, labels, data


def _assert_carries_close(a, b, k):
  for i in range(k):
    ca, cb = jax.tree.map(lambda x: x[i], a), jax.tree.map(lambda x: x[i], b)
    chex.assert_trees_all_close(ca.state.params, cb.state.params, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(ca.state.batch_stats, cb.state.batch_stats, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(ca.best_params, cb.best_params, atol=1e-5, rtol=1e-5)
    for f in ("best_epoch", "stop_epoch", "epoch", "done"):
      assert int(getattr(ca, f)) == int(getattr(cb, f)), (i, f)
    assert int(ca.state.step) == int(cb.state.step)
    np.testing.assert_allclose(float(ca.best_val), float(cb.best_val), rtol=1e-6)


def test_seed_draws_differ_and_are_reproducible():
  _, labels = _data()
  a = vmapped.draw_seed_data(labels, (0, 1), 4, 3)
  b = vmapped.draw_seed_data(labels, (0, 1), 4, 3)
  np.testing.assert_array_equal(a.train_idx, b.train_idx)
  assert not np.array_equal(a.train_idx[0], a.train_idx[1])
  assert not np.array_equal(a.init_key[0], a.init_key[1])
  for i in range(2):
    assert not set(a.train_idx[i]) & set(a.val_idx[i])
    np.testing.assert_array_equal(np.bincount(labels[a.train_idx[i]]), [4, 4, 4])
  with pytest.raises(ConfigError):
    vmapped.draw_seed_data(labels, (0,), 15, 10)  # 25 > 20 per class


def test_vmapped_equals_sequential_per_seed():
  model, tx, images, labels, data = _setup()
  spec = _spec()
  vm = vmapped.run_vmapped(model, tx, images, labels, data, spec, EPOCHS, preprocess_train=_flip)
  seq = vmapped.run_sequential(model, tx, images, labels, data, spec, EPOCHS,
                               preprocess_train=_flip)
  _assert_carries_close(vm.carry, seq.carry, 3)
  np.testing.assert_allclose(vm.history["val_accuracy"], seq.history["val_accuracy"], rtol=1e-6)
  assert vm.history["train_loss"].shape == (EPOCHS, 3)
  assert np.all(np.asarray(vm.carry.state.step) == 3 * EPOCHS)  # 12 examples / 5 -> 3 steps
  # the seeds really differ (own draw, init and augmentation)
  p = vm.carry.state.params["head"]["kernel"]
  assert not np.allclose(p[0], p[1])
  acc = vmapped.evaluate_stacked(model, vm.carry.state.params, vm.carry.state.batch_stats,
                                 images, labels, batch_size=16)
  assert acc.shape == (3,) and np.all((acc >= 0) & (acc <= 1))


def test_early_stopping_inside_compiled_loop_matches_sequential_break():
  model, tx, images, labels, data = _setup(seeds=(3, 4, 5))
  spec = _spec(patience=1)
  vm = vmapped.run_vmapped(model, tx, images, labels, data, spec, EPOCHS, preprocess_train=_flip)
  seq = vmapped.run_sequential(model, tx, images, labels, data, spec, EPOCHS,
                               preprocess_train=_flip)
  stop = np.asarray(vm.carry.stop_epoch)
  print("stop epochs", stop, vm.history["val_accuracy"])
  assert np.any((stop >= 0) & (stop < EPOCHS - 1)), stop  # some seed stopped early
  _assert_carries_close(vm.carry, seq.carry, 3)
  act = vm.history["active"]
  for i in range(3):
    if stop[i] >= 0:  # inactive after its stop epoch
      assert act[: stop[i] + 1, i].all() and not act[stop[i] + 1:, i].any()


def test_done_mask_freezes_a_seed_bit_identically():
  model, tx, images, labels, data = _setup()
  vm = vmapped.run_vmapped(model, tx, images, labels, data, _spec(), EPOCHS,
                           preprocess_train=_flip, initially_done=[False, True, False])
  init = vmapped.init_state(model, tx, jnp.asarray(data.init_key[1]),
                            jnp.zeros((1,) + images.shape[1:]))
  frozen = vm.seed_carry(1)
  chex.assert_trees_all_equal(frozen.state.params, init.params)
  chex.assert_trees_all_equal(frozen.state.batch_stats, init.batch_stats)
  chex.assert_trees_all_equal(frozen.state.opt_state, init.opt_state)
  assert int(frozen.state.step) == 0 and int(frozen.epoch) == 0
  moved = vm.seed_carry(0)
  assert int(moved.state.step) == 3 * EPOCHS
  assert not np.allclose(moved.state.params["head"]["kernel"],
                         vmapped.init_state(model, tx, jnp.asarray(data.init_key[0]),
                                            jnp.zeros((1,) + images.shape[1:])).params["head"]
                         ["kernel"])


_MULTI_DEVICE = textwrap.dedent("""
  import os, json
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  import jax, numpy as np, optax, chex
  import sys
  sys.path.insert(0, os.environ["TEST_DIR"])
  from test_sweep import _setup, _flip
  from tl_jax.sweep import vmapped
  from tl_jax.errors import ConfigError
  assert jax.device_count() == 4, jax.devices()
  model, tx, images, labels, data = _setup(seeds=(0, 1, 2, 3))
  spec = vmapped.LoopSpec(batch_size=5, eval_batch_size=7, patience=2)
  many = vmapped.run_vmapped(model, tx, images, labels, data, spec, 3, preprocess_train=_flip)
  spec_leaf = many.carry.state.step.sharding.spec
  ndev = len(many.carry.state.step.sharding.device_set)
  one = vmapped.run_vmapped(model, tx, images, labels, data, spec, 3, preprocess_train=_flip,
                            mesh=vmapped.seed_mesh(jax.devices()[:1]))
  chex.assert_trees_all_close(many.carry, one.carry, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(many.history["val_accuracy"], one.history["val_accuracy"], rtol=1e-6)
  try:
    vmapped.run_vmapped(model, tx, images, labels, vmapped.draw_seed_data(labels, (0, 1, 2), 4, 4),
                        spec, 1)
    raised = False
  except ConfigError:
    raised = True
  print(json.dumps({"ok": True, "spec": str(spec_leaf), "raised": raised,
                    "ndev": ndev}))
""")


def test_four_fake_devices_equal_one_device():
  env = dict(os.environ, TEST_DIR=str(ROOT / "tests"),
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], env=env, capture_output=True,
                        text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["ok"] and out["raised"] and out["ndev"] == 4
  assert "seed" in out["spec"]
