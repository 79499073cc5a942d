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
  # time_both_paths runs each path twice (warm-up + timed): also checks re-runs are repeatable
  out = vmapped.time_both_paths(model, tx, images, labels, data, _spec(), EPOCHS,
                                preprocess_train=_flip)
  vm, seq = out["vmapped"], out["sequential"]
  assert out["vmapped_s"] > 0 and out["sequential_s"] > 0 and out["backend"] == "cpu"
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
  import os, sys, json
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  import jax, numpy as np
  sys.path.insert(0, os.environ["TEST_DIR"])
  from test_sweep import _setup, _flip, _spec, EPOCHS
  from tl_jax.sweep import vmapped
  from tl_jax.errors import ConfigError
  assert jax.device_count() == 4, jax.devices()
  model, tx, images, labels, data = _setup(seeds=(0, 1, 2, 3))
  res = vmapped.run_vmapped(model, tx, images, labels, data, _spec(patience=2), EPOCHS,
                            preprocess_train=_flip)
  leaves = {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(res.carry))}
  np.savez(os.environ["OUT_NPZ"], **leaves)
  try:  # 3 seeds do not split over 4 devices
    vmapped.shard_seed_axis({"x": np.zeros((3, 2))}, vmapped.seed_mesh())
    raised = False
  except ConfigError:
    raised = True
  sh = res.carry.state.params["head"]["kernel"].sharding
  print(json.dumps({"raised": raised, "spec": str(sh.spec), "ndev": len(sh.device_set)}))
""")


def test_four_fake_devices_equal_sequential(tmp_path):
  """The seed axis sharded over 4 (fake CPU) devices gives each seed's sequential result."""
  out_npz = tmp_path / "carry.npz"
  env = dict(os.environ, TEST_DIR=str(ROOT / "tests"), OUT_NPZ=str(out_npz),
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], env=env, capture_output=True,
                        text=True, timeout=400, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads(proc.stdout.strip().splitlines()[-1])
  assert info["raised"] and info["ndev"] == 4 and "seed" in info["spec"]
  model, tx, images, labels, data = _setup(seeds=(0, 1, 2, 3))
  seq = vmapped.run_sequential(model, tx, images, labels, data, _spec(patience=2), EPOCHS,
                               preprocess_train=_flip)
  treedef = jax.tree.structure(seq.carry)
  with np.load(out_npz) as z:
    many = jax.tree.unflatten(treedef, [z[str(i)] for i in range(treedef.num_leaves)])
  _assert_carries_close(many, seq.carry, 4)


# ---------------------------------------------------------------- grid + launcher

import ml_collections  # noqa: E402

from tl_jax.config import base_config  # noqa: E402
from tl_jax.sweep import grid  # noqa: E402


def _grid_config(seeds=3):
  c = base_config()
  c.sweep = ml_collections.ConfigDict()
  c.sweep.methods = ("scratch", "l2t_www", "l2t_www_b1")
  c.sweep.n_per_class = (5, 10)
  c.sweep.seeds = seeds
  c.sweep.method_overrides = {"l2t_www_b1": {"kt": {"method": "l2t_www", "beta": 1.0}}}
  return c


class FakeRunCell:
  """Records calls and writes summary.json like the real training entry point."""

  def __init__(self, fail_on=None):
    self.calls = []
    self.fail_on = fail_on

  def __call__(self, config, workdir):
    self.calls.append((config.kt.method, config.transfer.strategy, config.kt.beta,
                       config.data.n_per_class, config.seed, workdir))
    if self.fail_on and self.fail_on in workdir:
      raise RuntimeError("boom")
    pathlib.Path(workdir, "summary.json").write_text(json.dumps(
        {"method": "x", "n_per_class": config.data.n_per_class, "seed": config.seed,
         "test_accuracy": 0.5}))


def test_expand_grid_sets_each_cells_fields(tmp_path):
  c = _grid_config()
  cells = grid.expand_grid(c, tmp_path)
  assert len(cells) == 3 * 2 * 3
  assert len({cell.workdir for cell in cells}) == len(cells)
  assert [cell.index for cell in cells] == list(range(len(cells)))
  by = {(cell.method, cell.n_per_class, cell.seed): cell for cell in cells}
  s = by["scratch", 10, 2].config
  assert (s.transfer.strategy, s.kt.method, s.data.n_per_class, s.seed) == ("scratch", "none",
                                                                           10, 2)
  w = by["l2t_www", 5, 0].config
  assert (w.kt.method, w.kt.beta, w.transfer.strategy) == ("l2t_www", 0.5, "scratch")
  b = by["l2t_www_b1", 5, 1].config
  assert (b.kt.method, b.kt.beta, b.seed) == ("l2t_www", 1.0, 1)
  assert by["l2t_www", 5, 0].workdir == tmp_path / "l2t_www" / "n5" / "seed0"
  assert c.seed == 0 and c.data.n_per_class == 0 and c.kt.method == "none"  # untouched
  assert [x.seed for x in grid.expand_grid(_grid_config(seeds=(7, 11)), tmp_path)][:2] == [7, 11]


def test_expand_grid_rejects_bad_grids(tmp_path):
  with pytest.raises(ConfigError, match="sweep"):
    grid.expand_grid(base_config(), tmp_path)
  for field, value in (("seeds", 0), ("methods", "scratch"), ("n_per_class", (5, 5)),
                       ("n_per_class", (0,)), ("seeds", (1.5,))):
    c = _grid_config()
    c.sweep = ml_collections.ConfigDict({**c.sweep.to_dict(), field: value})
    with pytest.raises(ConfigError):
      grid.expand_grid(c, tmp_path)
  c = _grid_config()
  c.sweep.method_overrides = {"l2t_www_b1": {"kt": {"betta": 1.0}}}  # typo
  with pytest.raises(ConfigError, match="betta"):
    grid.expand_grid(c, tmp_path)
  c.sweep.method_overrides = {"other": {"kt": {"beta": 1.0}}}
  with pytest.raises(ConfigError):
    grid.expand_grid(c, tmp_path)


def test_run_grid_skips_done_cells_and_resumes(tmp_path):
  c = _grid_config(seeds=2)
  cells = grid.expand_grid(c, tmp_path)
  done = cells[3].workdir
  done.mkdir(parents=True)
  (done / "summary.json").write_text("{}")
  interrupted = cells[5].workdir
  (interrupted / "checkpoints").mkdir(parents=True)  # started, no summary: must rerun
  fake = FakeRunCell()
  rep = grid.run_grid(c, tmp_path, fake)
  assert len(rep.skipped) == 1 and rep.skipped[0].workdir == done
  assert len(rep.ran) == len(cells) - 1 and not rep.failed
  ran_dirs = [call[-1] for call in fake.calls]
  assert str(done) not in ran_dirs and str(interrupted) in ran_dirs
  assert json.loads((cells[0].workdir / "cell.json").read_text())["config"]["seed"] == 0
  again = FakeRunCell()
  rep = grid.run_grid(c, tmp_path, again)
  assert not again.calls and len(rep.skipped) == len(cells)


def test_run_grid_hosts_partition_and_failures(tmp_path):
  c = _grid_config(seeds=2)
  n = len(grid.expand_grid(c, tmp_path))
  f0, f1 = FakeRunCell(), FakeRunCell()
  grid.run_grid(c, tmp_path / "a", f0, host_index=0, num_hosts=2)
  grid.run_grid(c, tmp_path / "a", f1, host_index=1, num_hosts=2)
  d0, d1 = {x[-1] for x in f0.calls}, {x[-1] for x in f1.calls}
  assert not d0 & d1 and len(d0 | d1) == n and len(d0) == n // 2
  with pytest.raises(ConfigError):
    grid.run_grid(c, tmp_path, f0, host_index=2, num_hosts=2)
  bad = FakeRunCell(fail_on="seed1")
  rep = grid.run_grid(c, tmp_path / "b", bad, keep_going=True)
  assert len(rep.failed) == n // 2 and len(rep.ran) == n // 2
  assert "boom" in rep.failed[0][1]
  with pytest.raises(RuntimeError):
    grid.run_grid(c, tmp_path / "b", FakeRunCell(fail_on="seed1"))
  dry = grid.run_grid(c, tmp_path / "b", None, dry_run=True)
  assert len(dry.pending) == n // 2 and len(dry.skipped) == n // 2


def test_launcher_prints_one_command_per_host_and_runs_a_share(tmp_path):
  cfg = tmp_path / "exp.py"
  cfg.write_text(textwrap.dedent("""
    import ml_collections
    from tl_jax.config import base_config
    def get_config():
      c = base_config()
      c.sweep = ml_collections.ConfigDict(dict(methods=("scratch", "ufm"), n_per_class=(5,),
                                               seeds=3))
      return c
  """))
  (tmp_path / "fake_cell.py").write_text(textwrap.dedent("""
    import json, pathlib
    def run(config, workdir):
      pathlib.Path(workdir, "summary.json").write_text(json.dumps(
          {"method": config.kt.method, "epochs": config.train.num_epochs}))
  """))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
  work = tmp_path / "runs"
  args = [sys.executable, "launch/sweep.py", f"--config={cfg}", f"--workdir={work}",
          "--config.train.num_epochs=3", "--run_cell=fake_cell:run"]
  proc = subprocess.run(args + ["--print_commands", "--num_hosts=3"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  cmds = proc.stdout.strip().splitlines()
  assert len(cmds) == 3
  for h, cmd in enumerate(cmds):
    assert f"--host_index={h}" in cmd and "--num_hosts=3" in cmd
    assert "--config.train.num_epochs=3" in cmd and str(work) in cmd
  # run host 1's command as printed (python -> this interpreter)
  cmd = cmds[1].split()
  proc = subprocess.run([sys.executable] + cmd[1:], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  done = sorted(p.relative_to(work).as_posix() for p in work.rglob("summary.json"))
  # cells: scratch s0,s1,s2, ufm s0,s1,s2 -> host 1 of 3 gets indices 1 and 4
  assert done == ["scratch/n5/seed1/summary.json", "ufm/n5/seed1/summary.json"]
  s = json.loads((work / "ufm/n5/seed1/summary.json").read_text())
  assert s == {"method": "ufm", "epochs": 3}


def test_batches_padding_drop_last_and_spec_from_config():
  key = jax.random.PRNGKey(0)
  pos, mask = vmapped.epoch_order(key, 1, 12, 5)
  assert pos.shape == (3, 5) and float(mask.sum()) == 12 and float(mask[2].sum()) == 2
  assert sorted(np.asarray(pos).reshape(-1)[np.asarray(mask).reshape(-1) > 0]) == list(range(12))
  pos_d, mask_d = vmapped.epoch_order(key, 1, 12, 5, drop_last=True)
  assert pos_d.shape == (2, 5) and bool(mask_d.all())
  np.testing.assert_array_equal(pos_d, pos[:2])  # same order, last batch dropped
  pos_s, mask_s = vmapped.epoch_order(key, 1, 3, 5, drop_last=True)  # only batch kept
  assert pos_s.shape == (1, 5) and float(mask_s.sum()) == 3
  assert not np.array_equal(vmapped.epoch_order(key, 2, 12, 5)[0], pos)  # reshuffled per epoch
  spec = vmapped.LoopSpec.from_config(base_config())
  assert (spec.batch_size, spec.patience_value, spec.drop_last) == (128, 0, True)
  with pytest.raises(ConfigError):
    vmapped.LoopSpec(batch_size=0)
