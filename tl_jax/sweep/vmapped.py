"""K seeds of one configuration as ONE compiled program (jax.vmap over a leading seed axis).

Why: a thesis cell is n = 30 repetitions that differ only in their seed. Stacking the K replicas
(params, BN statistics, optimiser state) on a leading axis and vmapping the whole run - epochs
(lax.scan), steps (lax.scan), per-seed validation, best-checkpoint tracking and early stopping -
turns K small programs into one big one, and the seed axis shards over devices with
`PartitionSpec('seed')`. On GPU/TPU that is the usual win; on XLA:CPU vmapped convolutions
become grouped convolutions and ran ~5x slower than a Python loop (docs/environment.md), so
`run_sequential` (same keys, same batches, a plain Python loop) is both the reference the tests
compare against and the path to use where vmap loses. Measure per backend.

Per seed s (an int):
  * data: `tl_jax.data.sampling.train_val_split(labels, n_per_class, n_val_per_class, seed=s)`;
  * keys: `init, shuffle, aug = jax.random.split(jax.random.PRNGKey(s), 3)`; the epoch-e order is
    `jax.random.permutation(fold_in(shuffle, e), n_train)`, padded to whole batches with
    mask = 0 (padded rows count in BatchNorm batch statistics, not in the loss/accuracy);
  * early stopping: after each epoch, validation accuracy > best + min_delta is an improvement
    (best params/batch_stats kept); `patience` epochs without one sets `done`, after which
    `jnp.where(done, old, new)` keeps that seed's state frozen while the others go on.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tl_jax.data import sampling
from tl_jax.errors import ConfigError
from tl_jax.train import steps as steps_lib
from tl_jax.train.state import TrainState

SEED_AXIS = "seed"


@flax.struct.dataclass
class SeedCarry:
  """Everything the compiled loop carries, per seed (leading axis K when stacked)."""
  state: TrainState
  best_params: Any
  best_batch_stats: Any
  best_val: jax.Array       # best validation accuracy so far (-inf before the first epoch)
  best_epoch: jax.Array     # epoch index of best_val (-1 before)
  bad_epochs: jax.Array     # epochs since the last improvement
  done: jax.Array           # bool: early-stopped (or disabled from the start)
  stop_epoch: jax.Array     # last epoch trained before stopping (-1 if still running)
  epoch: jax.Array          # epochs trained so far


@dataclasses.dataclass(frozen=True)
class SeedData:
  """Per-seed inputs stacked on the leading axis: index draws and PRNG keys."""
  seeds: tuple[int, ...]
  train_idx: np.ndarray   # [K, n_train] int32 into the shared image pool
  val_idx: np.ndarray     # [K, n_val]
  init_key: np.ndarray    # [K, 2] uint32
  shuffle_key: np.ndarray
  aug_key: np.ndarray

  def device_dict(self) -> dict[str, np.ndarray]:
    return {"train_idx": self.train_idx, "val_idx": self.val_idx,
            "shuffle_key": self.shuffle_key, "aug_key": self.aug_key}


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init, shuffle, aug) keys of one seed."""
  k = jax.random.split(jax.random.PRNGKey(int(seed)), 3)
  return k[0], k[1], k[2]


def draw_seed_data(labels: np.ndarray, seeds: Sequence[int], n_per_class: int,
                   n_val_per_class: int) -> SeedData:
  """Each seed's own N-per-class train draw and disjoint validation draw (numpy, seeded)."""
  if not seeds:
    raise ConfigError("sweep.seeds", list(seeds), "at least one seed")
  tr, va, keys = [], [], []
  for s in seeds:
    t, v = sampling.train_val_split(np.asarray(labels), n_per_class, n_val_per_class, seed=int(s))
    tr.append(t.astype(np.int32))
    va.append(v.astype(np.int32))
    keys.append(np.stack([np.asarray(k) for k in seed_keys(s)]))
  keys = np.stack(keys)  # [K, 3, 2]
  return SeedData(tuple(int(s) for s in seeds), np.stack(tr), np.stack(va), keys[:, 0],
                  keys[:, 1], keys[:, 2])


def _cached(fn):
  """lru_cache that falls back to no caching for unhashable arguments (e.g. lambdas in lists)."""
  cached = functools.lru_cache(maxsize=32)(fn)

  @functools.wraps(fn)
  def wrapper(*args):
    try:
      return cached(*args)
    except TypeError:
      return fn(*args)

  return wrapper


@_cached
def _init_fn(model: Any, tx: Any) -> Callable:
  """Jitted single-seed init, compiled once per (model, tx, input shape) and shared by both
  runners (seeds are stacked afterwards, so K does not trigger a recompilation)."""

  def init(key, sample):
    variables = model.init(key, sample, train=False)
    return TrainState.create(model.apply, variables["params"], variables.get("batch_stats"), tx)

  return jax.jit(init)


def init_state(model: Any, tx: Any, init_key: jax.Array, sample_input: jax.Array) -> TrainState:
  """One seed's TrainState from `model.init(init_key, sample_input, train=False)`."""
  return _init_fn(model, tx)(jnp.asarray(init_key), jnp.asarray(sample_input, jnp.float32))


def stacked_carry(states: Sequence[TrainState], done: Sequence[bool]) -> SeedCarry:
  """A fresh carry for K seeds: their states stacked on a leading axis."""
  k = len(states)
  state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  i32 = lambda v: jnp.full((k,), v, jnp.int32)  # noqa: E731
  copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731 - the run donates the state
  return SeedCarry(state=state, best_params=copy(state.params),
                   best_batch_stats=copy(state.batch_stats),
                   best_val=jnp.full((k,), -jnp.inf, jnp.float32), best_epoch=i32(-1),
                   bad_epochs=i32(0), done=jnp.asarray(done, bool), stop_epoch=i32(-1),
                   epoch=i32(0))


def _tree_where(pred: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def _batches(order: jax.Array, batch_size: int,
             drop_last: bool = False) -> tuple[jax.Array, jax.Array]:
  """[steps, B] positions and masks; the last batch padded with position 0, mask 0, or dropped
  with drop_last (unless it is the only one)."""
  if drop_last and order.shape[0] >= batch_size:
    order = order[: (order.shape[0] // batch_size) * batch_size]
  n = order.shape[0]
  steps = max(1, math.ceil(n / batch_size))
  pad = steps * batch_size - n
  mask = jnp.concatenate([jnp.ones(n, jnp.float32), jnp.zeros(pad, jnp.float32)])
  order = jnp.concatenate([order, jnp.zeros(pad, order.dtype)])
  return order.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def epoch_order(shuffle_key: jax.Array, epoch: jax.Array | int, n_train: int,
                batch_size: int, drop_last: bool = False) -> tuple[jax.Array, jax.Array]:
  """The batches of epoch `epoch` as positions into the seed's train_idx, plus masks."""
  order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n_train)
  return _batches(order.astype(jnp.int32), batch_size, drop_last)


@dataclasses.dataclass(frozen=True)
class LoopSpec:
  """What one epoch does; shared by the vmapped program and the sequential reference.

  Batch sizes are compile-time constants; `patience`/`min_delta` are passed to the compiled
  loop as values, so changing them does not recompile.
  """
  batch_size: int
  eval_batch_size: int = 256
  patience: Optional[int] = None  # None or <= 0: never stop early (the config uses -1)
  min_delta: float = 0.0
  drop_last: bool = False  # drop the incomplete last train batch (kept if it is the only one)

  def __post_init__(self):
    if self.batch_size < 1:
      raise ConfigError("train.batch_size", self.batch_size, ">= 1")
    if self.eval_batch_size < 1:
      raise ConfigError("train.eval_batch_size", self.eval_batch_size, ">= 1")

  @property
  def patience_value(self) -> int:
    return max(int(self.patience or 0), 0)

  @classmethod
  def from_config(cls, config: Any) -> "LoopSpec":
    """From the project config's `train` block (batch sizes, drop_last, early_stopping)."""
    t = config.train
    return cls(int(t.batch_size), int(t.eval_batch_size), int(t.early_stopping.patience),
               float(t.early_stopping.min_delta), bool(t.get("drop_last", False)))


def _make_epoch_fn(model: Any, batch_size: int, eval_batch_size: int, drop_last: bool,
                   preprocess_train, preprocess_eval, loss_fn) -> Callable:
  train_step = steps_lib.make_train_step(model, preprocess_train, loss_fn, jit=False)
  eval_step = steps_lib.make_eval_step(model, preprocess_eval, jit=False)

  def val_accuracy(state, images, labels, val_idx):
    pos, mask = _batches(jnp.arange(val_idx.shape[0], dtype=jnp.int32), eval_batch_size)

    def body(acc, xs):
      p, m = xs
      idx = val_idx[p]
      out = eval_step(state, {"image": images[idx], "label": labels[idx], "mask": m})
      return (acc[0] + out["correct"], acc[1] + out["count"]), None

    (correct, count), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)), (pos, mask))
    return correct / jnp.maximum(count, 1.0)

  def one_epoch(carry: SeedCarry, images, labels, data, patience, min_delta):
    """patience <= 0 disables early stopping."""
    active = ~carry.done
    pos, mask = epoch_order(data["shuffle_key"], carry.epoch, data["train_idx"].shape[0],
                            batch_size, drop_last)

    def step(state, xs):
      p, m = xs
      idx = data["train_idx"][p]
      return train_step(state, {"image": images[idx], "label": labels[idx], "mask": m},
                        data["aug_key"])

    new_state, ms = jax.lax.scan(step, carry.state, (pos, mask))
    state = _tree_where(active, new_state, carry.state)
    val = val_accuracy(state, images, labels, data["val_idx"])
    improved = active & (val > carry.best_val + min_delta)
    bad = jnp.where(improved, 0, jnp.where(active, carry.bad_epochs + 1, carry.bad_epochs))
    newly_done = active & (patience > 0) & (bad >= patience)
    count = ms["count"].sum()
    metrics = {"train_loss": (ms["loss"] * ms["count"]).sum() / count,
               "train_accuracy": (ms["accuracy"] * ms["count"]).sum() / count,
               "val_accuracy": val, "active": active, "nonfinite": ms["nonfinite"].max()}
    return SeedCarry(
        state=state,
        best_params=_tree_where(improved, state.params, carry.best_params),
        best_batch_stats=_tree_where(improved, state.batch_stats, carry.best_batch_stats),
        best_val=jnp.where(improved, val, carry.best_val),
        best_epoch=jnp.where(improved, carry.epoch, carry.best_epoch),
        bad_epochs=bad, done=carry.done | newly_done,
        stop_epoch=jnp.where(newly_done, carry.epoch, carry.stop_epoch),
        epoch=carry.epoch + active.astype(jnp.int32)), metrics

  return one_epoch


# ---------------------------------------------------------------- sharding

def seed_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D mesh named 'seed' over `devices` (default: all)."""
  devs = np.asarray(list(devices) if devices is not None else jax.devices())
  return Mesh(devs, (SEED_AXIS,))


def shard_seed_axis(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf's leading (seed) axis across the mesh; K must divide evenly."""
  ndev = mesh.devices.size
  for leaf in jax.tree.leaves(tree):
    k = np.shape(leaf)[0]
    if k % ndev:
      raise ConfigError("sweep.seeds", f"{k} seeds", f"a multiple of the {ndev} devices",
                        hint="add seeds or run on fewer devices (seed_mesh(devices[:n]))")
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(SEED_AXIS)))


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


# ---------------------------------------------------------------- the two runners

@dataclasses.dataclass
class SweepResult:
  """Final per-seed carry (stacked, leading axis K) and per-epoch metrics [epochs, K]."""
  seeds: tuple[int, ...]
  carry: SeedCarry
  history: dict[str, np.ndarray]

  def seed_carry(self, i: int) -> SeedCarry:
    return jax.tree.map(lambda x: x[i], self.carry)


@_cached
def make_vmapped_runner(model: Any, batch_size: int, eval_batch_size: int, drop_last: bool = False,
                        preprocess_train=None, preprocess_eval=None,
                        loss_fn=None) -> Callable:
  """`run(carry[K], images, labels, data[K], patience, min_delta, num_epochs)
  -> (carry, metrics[E, K])` as one jit (cached per model and batch sizes).

  The carry is donated; `num_epochs` is static (one compilation per chunk length), so callers
  may run a whole run at once or chunks between checkpoints.
  """
  one_epoch = _make_epoch_fn(model, batch_size, eval_batch_size, drop_last, preprocess_train,
                             preprocess_eval, loss_fn)
  vepoch = jax.vmap(one_epoch, in_axes=(0, None, None, 0, None, None))

  def run(carry, images, labels, data, patience, min_delta, num_epochs):
    def body(c, _):
      return vepoch(c, images, labels, data, patience, min_delta)
    return jax.lax.scan(body, carry, None, length=num_epochs)

  return jax.jit(run, static_argnames="num_epochs", donate_argnums=0)


def run_vmapped(model: Any, tx: Any, images: np.ndarray, labels: np.ndarray, seed_data: SeedData,
                spec: LoopSpec, num_epochs: int, preprocess_train=None, preprocess_eval=None,
                loss_fn=None, mesh: Mesh | None = None,
                initially_done: Sequence[bool] | None = None) -> SweepResult:
  """All seeds at once, the seed axis sharded over `mesh` (default: every device)."""
  k = len(seed_data.seeds)
  mesh = mesh or seed_mesh()
  sample = jnp.zeros((1,) + tuple(images.shape[1:]), jnp.float32)
  done = jnp.asarray(initially_done if initially_done is not None else [False] * k, bool)
  if done.shape != (k,):
    raise ConfigError("initially_done", done.shape, f"({k},)")
  carry = stacked_carry([init_state(model, tx, key, sample) for key in seed_data.init_key], done)
  carry = shard_seed_axis(carry, mesh)
  data = shard_seed_axis(seed_data.device_dict(), mesh)
  images_d, labels_d = replicate((np.asarray(images), np.asarray(labels, np.int32)), mesh)
  runner = make_vmapped_runner(model, spec.batch_size, spec.eval_batch_size, spec.drop_last,
                               preprocess_train, preprocess_eval, loss_fn)
  carry, metrics = runner(carry, images_d, labels_d, data, jnp.int32(spec.patience_value),
                          jnp.float32(spec.min_delta), num_epochs=int(num_epochs))
  return SweepResult(seed_data.seeds, carry, {n: np.asarray(v) for n, v in metrics.items()})


@_cached
def _sequential_steps(model, preprocess_train, preprocess_eval, loss_fn):
  return (steps_lib.make_train_step(model, preprocess_train, loss_fn, jit=True),
          steps_lib.make_eval_step(model, preprocess_eval, jit=True))


def run_sequential(model: Any, tx: Any, images: np.ndarray, labels: np.ndarray,
                   seed_data: SeedData, spec: LoopSpec, num_epochs: int, preprocess_train=None,
                   preprocess_eval=None, loss_fn=None) -> SweepResult:
  """Reference / CPU path: a Python loop per seed, epoch and step with the jitted train step,
  the same keys and batches, and early stopping by `break`."""
  train_step, eval_step = _sequential_steps(model, preprocess_train, preprocess_eval, loss_fn)
  sample = jnp.zeros((1,) + tuple(images.shape[1:]), jnp.float32)
  images = jnp.asarray(images)
  labels = jnp.asarray(labels, jnp.int32)
  carries, hist = [], []
  for i in range(len(seed_data.seeds)):
    state = init_state(model, tx, jnp.asarray(seed_data.init_key[i]), sample)
    best = dict(params=jax.tree.map(jnp.copy, state.params),
                bs=jax.tree.map(jnp.copy, state.batch_stats), val=-np.inf, epoch=-1)
    bad, stop, trained = 0, -1, 0
    rows = []
    tr_idx, va_idx = seed_data.train_idx[i], seed_data.val_idx[i]
    for e in range(num_epochs):
      pos, mask = epoch_order(jnp.asarray(seed_data.shuffle_key[i]), e, tr_idx.shape[0],
                              spec.batch_size, spec.drop_last)
      for p, m in zip(np.asarray(pos), np.asarray(mask)):
        idx = tr_idx[p]
        state, _ = train_step(state, {"image": images[idx], "label": labels[idx],
                                      "mask": jnp.asarray(m)}, jnp.asarray(seed_data.aug_key[i]))
      correct = count = 0.0
      vpos, vmask = _batches(jnp.arange(va_idx.shape[0], dtype=jnp.int32), spec.eval_batch_size)
      for p, m in zip(np.asarray(vpos), np.asarray(vmask)):
        idx = va_idx[p]
        out = eval_step(state, {"image": images[idx], "label": labels[idx],
                                "mask": jnp.asarray(m)})
        correct, count = correct + float(out["correct"]), count + float(out["count"])
      val = np.float32(correct / max(count, 1.0))
      trained = e + 1
      rows.append(val)
      if val > best["val"] + spec.min_delta:
        # copies: the next train_step donates (deletes) the state's buffers
        best = dict(params=jax.tree.map(jnp.copy, state.params),
                    bs=jax.tree.map(jnp.copy, state.batch_stats), val=val, epoch=e)
        bad = 0
      else:
        bad += 1
      if spec.patience_value and bad >= spec.patience_value:
        stop = e
        break
    carries.append(SeedCarry(
        state=state, best_params=best["params"], best_batch_stats=best["bs"],
        best_val=jnp.float32(best["val"]), best_epoch=jnp.int32(best["epoch"]),
        bad_epochs=jnp.int32(bad), done=jnp.asarray(stop >= 0), stop_epoch=jnp.int32(stop),
        epoch=jnp.int32(trained)))
    hist.append(rows + [np.nan] * (num_epochs - len(rows)))
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *carries)
  return SweepResult(seed_data.seeds, stacked,
                     {"val_accuracy": np.asarray(hist, np.float32).T})


@flax.struct.dataclass
class _EvalState:
  """The two fields `make_eval_step` reads."""
  params: Any
  batch_stats: Any


def evaluate_stacked(model: Any, params: Any, batch_stats: Any, images: np.ndarray,
                     labels: np.ndarray, preprocess_eval=None, batch_size: int = 256) -> np.ndarray:
  """Per-seed accuracy of stacked params on one shared set (e.g. the test split) -> [K]."""
  eval_step = steps_lib.make_eval_step(model, preprocess_eval, jit=False)
  pos, mask = _batches(jnp.arange(int(np.shape(labels)[0]), dtype=jnp.int32), batch_size)

  def one(p, bs, images, labels):
    def body(acc, xs):
      out = eval_step(_EvalState(p, bs), {"image": images[xs[0]], "label": labels[xs[0]],
                                          "mask": xs[1]})
      return acc + out["correct"], None

    correct, _ = jax.lax.scan(body, jnp.float32(0), (pos, mask))
    return correct / labels.shape[0]

  run = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)))
  return np.asarray(run(params, batch_stats, jnp.asarray(images), jnp.asarray(labels, jnp.int32)))


def time_both_paths(*args, repeats: int = 1, **kwargs) -> dict[str, Any]:
  """Wall seconds of `run_vmapped` and `run_sequential` (same arguments) after one warm-up
  call each, so compile time is excluded: the per-backend measurement that decides which path
  a sweep should use (vmap wins on GPU/TPU, lost 5x on the 2-core XLA:CPU host)."""
  import time
  out: dict[str, Any] = {"backend": jax.default_backend(), "devices": jax.device_count()}
  for name, fn in (("vmapped", run_vmapped), ("sequential", run_sequential)):
    res = fn(*args, **kwargs)
    jax.block_until_ready(res.carry)
    t0 = time.perf_counter()
    for _ in range(repeats):
      res = fn(*args, **kwargs)
      jax.block_until_ready(res.carry)
    out[f"{name}_s"] = (time.perf_counter() - t0) / repeats
    out[name] = res
  return out
