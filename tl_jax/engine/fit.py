"""The one training loop: K seeds of a learner as one compiled epoch program.

Why one loop: a thesis cell is n = 30 runs that differ only in their seed, and a number must not
depend on the code path that produced it. Every run - K = 1 included - goes through `fit`:

* the state of the K seeds is stacked on a leading axis; an epoch is ONE jitted call: per seed,
  `lax.scan` over the epoch's steps, validation, early stopping, best-on-validation tracking and
  reduce-LR-on-plateau, all as [K] vectors; a stopped seed is frozen by `jnp.where` while the
  others go on;
* seeds run in parallel (`jax.vmap`) or one after another inside the same program (`lax.map`;
  XLA:CPU turns vmapped convolutions into slow grouped convolutions) - `FitConfig.seed_loop`;
* the seed axis is sharded over a ('seed', 'data') mesh; when there are fewer seeds than devices
  the batch axis is sharded too (data parallel), so one run uses every device;
* a seed's numbers depend on its seed alone: keys are `fold_in(PRNGKey(seed), purpose)`, the
  epoch-e order is `permutation(fold_in(shuffle_key, e))`, the step key is folded with the
  seed's global step, so seed s gives the same result alone or among 30, under vmap or map;
* a padded last batch carries a 0/1 mask that reaches the loss and BatchNorm (the learners run
  the model under `tl_jax.models.layers.batch_norm_mask`), so padding changes nothing;
* the host loop only runs epochs, writes per-seed metrics and orbax checkpoints of the stacked
  carry (resume is bit-identical); constants such as a frozen source network are an argument of
  the step, never part of the donated or checkpointed carry.

A learner is any object with `init(key, variables) -> state`, `step(state, batch, key, consts)
-> (state, metrics)` (pure; metrics hold scalar 'loss', 'accuracy', 'nonfinite'),
`eval_variables(state) -> {'params', 'batch_stats'}` (a field selection, so it also works on the
stacked state) and `eval_logits(variables, images)` (tl_jax.engine.learners). A later segment
starts from `learner.init` on the previous segment's best variables.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tl_jax import terminal
from tl_jax.errors import ConfigError, NonFiniteLossError, check_choice
from tl_jax.train import callbacks, jsonl, optim, tensorboard

METRICS_FILE = "metrics.jsonl"
SEED_LOOPS = ("vmap", "map")
MONITORS = ("val_accuracy", "val_loss", "val_macro_f1", "val_macro_recall", "train_loss",
            "train_accuracy")
# fold_in purposes of a seed's root key (stable: changing them changes every result)
PURPOSES = {"init": 0, "shuffle": 1, "step": 2, "learner": 3}


def seed_key(seed: int, purpose: str) -> jax.Array:
  """`fold_in(PRNGKey(seed), purpose)`: the only way a seed's randomness is drawn."""
  return jax.random.fold_in(jax.random.PRNGKey(int(seed)), PURPOSES[purpose])


def default_seed_loop(backend: str | None = None) -> str:
  """'map' on CPU (vmapped convolutions become slow grouped convolutions on XLA:CPU,
  results/benchmarks/README.md), 'vmap' on GPU/TPU."""
  return "map" if (backend or jax.default_backend()) == "cpu" else "vmap"


@dataclasses.dataclass(frozen=True)
class Segment:
  """One stretch of training with one learner (its optimiser, mask and LR).

  A two-stage method is two segments; the second starts from the best (on validation) variables
  of the first, with a fresh optimiser state. `base_lr` is the LR `reduce_lr.min_lr` refers to;
  `lr_fn(opt_step)` gives the scheduled base-group LR for the metrics (host side).
  """
  name: str
  num_epochs: int
  learner: Any
  base_lr: float = 1.0
  lr_fn: Optional[Callable[[int], float]] = None


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """What `fit` reads (from the config's `train` block, `tl_jax.experiment.fit_config`)."""
  batch_size: int
  eval_batch_size: int = 256
  drop_last: bool = False
  monitor: str = "val_accuracy"
  patience: int = -1            # early stopping; -1 = off (Keras semantics otherwise)
  min_delta: float = 0.0
  rl_patience: int = -1         # reduce-LR-on-plateau; -1 = off
  rl_factor: float = 0.1
  rl_min_lr: float = 0.0        # absolute LR (Keras), compared with scale * segment.base_lr
  rl_min_delta: float = 1e-4
  rl_cooldown: int = 0
  restore_best: bool = True
  checkpoint_every: int = 0     # epochs; 0 = off
  keep_checkpoints: int = 2
  seed_loop: str = "map"
  progress: bool = False

  def __post_init__(self):
    if self.batch_size < 1:
      raise ConfigError("train.batch_size", self.batch_size, "an int >= 1")
    if self.eval_batch_size < 1:
      raise ConfigError("train.eval_batch_size", self.eval_batch_size, "an int >= 1")
    check_choice("train.monitor", self.monitor, MONITORS)
    check_choice("train.seed_loop", self.seed_loop, SEED_LOOPS)
    if self.rl_patience >= 0 and not 0.0 < self.rl_factor < 1.0:
      raise ConfigError("train.reduce_lr.factor", self.rl_factor, "0 < factor < 1")


@dataclasses.dataclass
class SeedData:
  """The image pool on the host and each seed's draw into it.

  `images` uint8 NHWC (float32 for cached features), `labels` int32; `train_idx` [K, n_train]
  (each seed its own N-per-class draw, all of one size); `val_idx` [n_val] shared by the seeds
  (the fixed carve) or None.
  """
  images: np.ndarray
  labels: np.ndarray
  train_idx: np.ndarray
  val_idx: Optional[np.ndarray]
  num_classes: int


@flax.struct.dataclass
class Carry:
  """Everything the compiled epoch carries for one seed (leading axis K when stacked)."""
  state: Any
  best: Any                 # eval variables at the best epoch of this segment
  best_value: jax.Array     # monitored value at the best epoch (+-inf before)
  best_epoch: jax.Array     # segment epoch of best_value (-1 before)
  wait: jax.Array           # early stopping: epochs since the last improvement
  done: jax.Array           # stopped early in this segment
  rl_best: jax.Array        # reduce-LR: best value, wait, cooldown counter
  rl_wait: jax.Array
  rl_cooldown: jax.Array
  epoch: jax.Array          # epochs trained in this segment
  step: jax.Array           # steps trained in all segments (folds the step key)


# ----------------------------------------------------------------------------- batches

def epoch_batches(order: jax.Array, batch_size: int, drop_last: bool) -> tuple[jax.Array,
                                                                               jax.Array]:
  """[steps, B] positions and 0/1 masks; the last batch padded with position 0 / mask 0, or
  dropped with drop_last (unless it is the only one)."""
  n = order.shape[0]
  if drop_last and n >= batch_size:
    order = order[:(n // batch_size) * batch_size]
    n = order.shape[0]
  steps = max(1, math.ceil(n / batch_size))
  pad = steps * batch_size - n
  mask = jnp.concatenate([jnp.ones(n, jnp.float32), jnp.zeros(pad, jnp.float32)])
  order = jnp.concatenate([order, jnp.zeros(pad, order.dtype)])
  return order.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def steps_per_epoch(n_train: int, batch_size: int, drop_last: bool) -> int:
  if drop_last and n_train >= batch_size:
    return n_train // batch_size
  return max(1, -(-n_train // batch_size))


# ----------------------------------------------------------------------------- metrics

def confusion(labels: jax.Array, preds: jax.Array, mask: jax.Array, num_classes: int) -> jax.Array:
  """[C, C] (rows true, columns predicted) counts of the rows with mask 1."""
  return jnp.zeros((num_classes, num_classes), jnp.float32).at[labels, preds].add(mask)


def macro_scores(cm: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(macro F1, macro recall) over the classes present in labels or predictions (sklearn's
  default, zero_division=0), from a confusion matrix."""
  tp = jnp.diagonal(cm)
  rows, cols = cm.sum(1), cm.sum(0)
  present = (rows > 0) | (cols > 0)
  f1 = jnp.where(rows + cols > 0, 2 * tp / jnp.maximum(rows + cols, 1e-12), 0.0)
  rec = jnp.where(rows > 0, tp / jnp.maximum(rows, 1e-12), 0.0)
  n = jnp.maximum(present.sum(), 1)
  return (f1 * present).sum() / n, (rec * present).sum() / n


def make_split_eval(learner: Any, eval_batch_size: int, num_classes: int) -> Callable:
  """`eval(variables, images, labels, idx[n]) -> (loss_sum, count, preds[n], confusion)`, one
  `lax.scan` over fixed-size batches (the last padded and masked out)."""

  def run(variables, images, labels, idx):
    n = idx.shape[0]
    pos, mask = epoch_batches(jnp.arange(n, dtype=jnp.int32), eval_batch_size, False)

    def body(acc, xs):
      p, m = xs
      rows = idx[p]
      logits = learner.eval_logits(variables, images[rows])
      y = labels[rows]
      logp = jax.nn.log_softmax(logits.astype(jnp.float32))
      ce = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
      pred = jnp.argmax(logits, -1).astype(jnp.int32)
      loss, cm = acc
      return (loss + jnp.where(m > 0, ce, 0.0).sum(), cm + confusion(y, pred, m, num_classes)
              ), pred

    init = (jnp.zeros((), jnp.float32), jnp.zeros((num_classes, num_classes), jnp.float32))
    (loss, cm), preds = jax.lax.scan(body, init, (pos, mask))
    return loss, jnp.float32(n), preds.reshape(-1)[:n], cm

  return run


# ----------------------------------------------------------------------------- the epoch

def _tree_where(pred: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _mean_metrics(ms: dict[str, jax.Array], weights: jax.Array) -> dict[str, jax.Array]:
  w = weights / jnp.maximum(weights.sum(), 1e-12)
  out = {}
  for k, v in ms.items():
    if k in ("nonfinite", "count"):
      continue
    out[f"train_{k}"] = (v.astype(jnp.float32) * w).sum()
  return out


def make_seed_epoch(seg: Segment, cfg: FitConfig, n_train: int, num_classes: int,
                    data_sharding: Optional[NamedSharding]) -> Callable:
  """`epoch(carry, train_idx, seed_keys, images, labels, val_idx, consts) -> (carry, metrics)`
  for ONE seed (vmapped or mapped over K by `fit`)."""
  learner = seg.learner
  mode = callbacks.resolve_mode(cfg.monitor, "auto")
  sign = 1.0 if mode == "max" else -1.0   # compare sign * value: larger is better
  split_eval = make_split_eval(learner, cfg.eval_batch_size, num_classes)

  def epoch(c: Carry, train_idx, keys, images, labels, val_idx, consts):
    active = ~c.done
    order = jax.random.permutation(jax.random.fold_in(keys["shuffle"], c.step), n_train)
    pos, mask = epoch_batches(order.astype(jnp.int32), cfg.batch_size, cfg.drop_last)

    def body(sc, xs):
      state, step = sc
      p, m = xs
      rows = train_idx[p]
      batch = {"image": images[rows], "label": labels[rows], "mask": m}
      if data_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, data_sharding)
      state, met = learner.step(state, batch, jax.random.fold_in(keys["step"], step), consts)
      return (state, step + 1), met

    (state, step), ms = jax.lax.scan(body, (c.state, c.step), (pos, mask))
    state = _tree_where(active, state, c.state)
    step = jnp.where(active, step, c.step)
    counts = mask.sum(1)
    metrics = _mean_metrics(ms, counts)
    bad = (ms["nonfinite"] > 0) | ~jnp.isfinite(ms["loss"])
    metrics["nonfinite"] = active & bad.any()
    metrics["nonfinite_step"] = jnp.argmax(bad).astype(jnp.int32)
    variables = learner.eval_variables(state)
    if val_idx is not None:
      vloss, vcount, _, cm = split_eval(variables, images, labels, val_idx)
      f1, rec = macro_scores(cm)
      metrics.update(val_loss=vloss / vcount, val_accuracy=jnp.trace(cm) / vcount,
                     val_macro_f1=f1, val_macro_recall=rec)
    if cfg.monitor in metrics:
      value = sign * metrics[cfg.monitor].astype(jnp.float32)
    else:  # no validation split: nothing improves, the last state is the result
      value = jnp.float32(-jnp.inf)
    # early stopping + best tracking (tl_jax.train.callbacks.EarlyStopping, Keras semantics)
    improved = active & (value - cfg.min_delta > c.best_value)
    wait = jnp.where(improved, 0, jnp.where(active, c.wait + 1, c.wait))
    stop = active & ~improved & (cfg.patience >= 0) & (wait >= cfg.patience) & (c.epoch > 0)
    # reduce-LR-on-plateau (tl_jax.train.callbacks.ReduceLROnPlateau, Keras semantics)
    rl_best, rl_wait, rl_cool = c.rl_best, c.rl_wait, c.rl_cooldown
    if cfg.rl_patience >= 0:
      scale = optim.lr_scale_of(state)
      in_cool = rl_cool > 0
      rl_cool = jnp.where(active & in_cool, rl_cool - 1, rl_cool)
      rl_wait = jnp.where(active & in_cool, 0, rl_wait)
      better = value - cfg.rl_min_delta > rl_best
      rl_best = jnp.where(active & better, value, rl_best)
      counting = active & ~better & (rl_cool <= 0)
      rl_wait = jnp.where(active & better, 0, jnp.where(counting, rl_wait + 1, rl_wait))
      lr = scale * seg.base_lr
      reduce = counting & (rl_wait >= cfg.rl_patience) & (lr > cfg.rl_min_lr)
      new_scale = jnp.maximum(lr * cfg.rl_factor, cfg.rl_min_lr) / seg.base_lr
      state = optim.set_lr_scale(state, jnp.where(reduce, new_scale, scale))
      rl_cool = jnp.where(reduce, cfg.rl_cooldown, rl_cool)
      rl_wait = jnp.where(reduce, 0, rl_wait)
      metrics["lr_scale"] = scale
    metrics.update(active=active, improved=improved, stop=stop)
    new = Carry(state=state, best=_tree_where(improved, variables, c.best),
                best_value=jnp.where(improved, value, c.best_value),
                best_epoch=jnp.where(improved, c.epoch, c.best_epoch), wait=wait,
                done=c.done | stop, rl_best=rl_best, rl_wait=rl_wait, rl_cooldown=rl_cool,
                epoch=c.epoch + active.astype(jnp.int32), step=step)
    return new, metrics

  return epoch


# ----------------------------------------------------------------------------- devices

def make_mesh(num_seeds: int, batch_size: int, devices: Sequence[Any] | None = None) -> Mesh:
  """A ('seed', 'data') mesh: seeds over as many devices as divide K; the rest of the devices
  shard the batch (data parallel) when the batch divides evenly, else they stay idle."""
  devs = list(devices) if devices is not None else jax.devices()
  s = math.gcd(num_seeds, len(devs))
  d = len(devs) // s
  while d > 1 and batch_size % d:
    d -= 1
  return Mesh(np.asarray(devs[:s * d]).reshape(s, d), ("seed", "data"))


def _leading(mesh: Mesh, x: Any) -> NamedSharding:
  return NamedSharding(mesh, P("seed", *([None] * (np.ndim(x) - 1))))


def _replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _make_k_epoch(seed_epoch: Callable, mode: str, seed_shards: int) -> Callable:
  """Lifts the one-seed epoch to K seeds: vmap or lax.map over K/S local seeds, and a vmap with
  spmd_axis_name='seed' over the S device shards when S > 1."""

  def local(carry, idx, keys, images, labels, val_idx, consts):
    if mode == "vmap":
      return jax.vmap(seed_epoch, in_axes=(0, 0, 0, None, None, None, None))(
          carry, idx, keys, images, labels, val_idx, consts)
    return jax.lax.map(lambda a: seed_epoch(a[0], a[1], a[2], images, labels, val_idx, consts),
                       (carry, idx, keys))

  if seed_shards == 1:
    return local

  def sharded(carry, idx, keys, images, labels, val_idx, consts):
    split = lambda t: jax.tree.map(  # noqa: E731
        lambda x: x.reshape((seed_shards, x.shape[0] // seed_shards) + x.shape[1:]), t)
    merge = lambda t: jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), t)  # noqa: E731
    out = jax.vmap(local, in_axes=(0, 0, 0, None, None, None, None), spmd_axis_name="seed")(
        split(carry), split(idx), split(keys), images, labels, val_idx, consts)
    return merge(out)

  return sharded


# ----------------------------------------------------------------------------- fit

@dataclasses.dataclass
class FitResult:
  """Per seed: the final eval variables (best on validation when there is a validation split)
  stacked on the leading axis, and the per-epoch history records."""
  seeds: tuple[int, ...]
  variables: Any
  histories: list[list[dict[str, Any]]]
  wall_s: float


def _init_carry(learner: Any, keys: Sequence[jax.Array], variables: Any,
                prev_step: Any) -> Carry:
  """Stacked carry: learner.init per seed (jitted once, then stacked)."""
  init = jax.jit(learner.init)
  states = [init(k, jax.tree.map(lambda x, i=i: x[i], variables)) for i, k in enumerate(keys)]
  state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  k = len(keys)
  best = jax.tree.map(jnp.copy, learner.eval_variables(state))  # field selection: stacked too
  neg = lambda: jnp.full((k,), -jnp.inf, jnp.float32)  # noqa: E731 - distinct donated buffers
  i32 = lambda v: jnp.full((k,), v, jnp.int32)  # noqa: E731
  return Carry(state=state, best=best, best_value=neg(), best_epoch=i32(-1), wait=i32(0),
               done=jnp.zeros((k,), bool), rl_best=neg(), rl_wait=i32(0), rl_cooldown=i32(0),
               epoch=i32(0), step=jnp.array(prev_step, jnp.int32))


def _record(metrics: dict[str, np.ndarray], i: int, seg: Segment, seg_epoch: int,
            epoch_offset: int, step: int, opt_step: int) -> dict[str, Any]:
  r: dict[str, Any] = {"epoch": epoch_offset + seg_epoch, "stage": seg.name,
                       "stage_epoch": seg_epoch, "step": step}
  scale = float(metrics["lr_scale"][i]) if "lr_scale" in metrics else 1.0
  r["lr_scale"] = scale
  if seg.lr_fn is not None:
    r["lr"] = float(seg.lr_fn(max(opt_step - 1, 0))) * scale
  for k, v in metrics.items():
    if k.startswith(("train_", "val_")):
      r[k] = float(v[i])
  r["is_best"] = bool(metrics["improved"][i])
  return r


def _postfix(records: Sequence[Mapping[str, Any]]) -> str:
  """'loss 0.412 acc 0.875 val 0.800' (means over the seeds) for the epoch bar."""
  parts = []
  for key, name, fmt in (("train_loss", "loss", ".3f"), ("train_accuracy", "acc", ".3f"),
                         ("val_accuracy", "val", ".3f")):
    vals = [float(r[key]) for r in records if r.get(key) is not None]
    if vals:
      parts.append(f"{name} {np.mean(vals):{fmt}}")
  return " ".join(parts)


def fit(segments: Sequence[Segment], data: SeedData, seeds: Sequence[int], init_variables: Any,
        cfg: FitConfig, workdirs: Sequence[str | os.PathLike], *, consts: Any = None,
        checkpoint_dir: str | os.PathLike | None = None, mesh: Mesh | None = None,
        on_epoch_end: Optional[Callable[[int, Any, dict[str, Any]], None]] = None,
        desc: str = "") -> FitResult:
  """Trains K seeds through `segments`; returns their final (best-on-validation) variables.

  `init_variables`: the model variables of every seed stacked on a leading K axis. Each seed's
  records go to `workdirs[i]/metrics.jsonl` and, as TensorBoard scalars, to
  `workdirs[i]/tensorboard/` (tl_jax.train.tensorboard). With `checkpoint_dir` and
  `cfg.checkpoint_every > 0` the stacked carry is saved every that many epochs (and at the end
  of each segment) and a rerun resumes from the newest checkpoint bit-identically.
  `on_epoch_end(seed_index, state_of_that_seed, record)` is called for every active seed.
  """
  t0 = time.time()
  seeds = tuple(int(s) for s in seeds)
  k = len(seeds)
  if k < 1:
    raise ConfigError("seeds", list(seeds), "at least one seed")
  if data.train_idx.shape[0] != k:
    raise ConfigError("train_idx", data.train_idx.shape, f"a leading axis of {k} seeds")
  if cfg.monitor.startswith("val_") and data.val_idx is None and (
      cfg.patience >= 0 or cfg.rl_patience >= 0):
    raise ConfigError("train.monitor", cfg.monitor, hint="needs a validation split")
  monitor_ok = data.val_idx is not None or not cfg.monitor.startswith("val_")
  n_train = int(data.train_idx.shape[1])
  if n_train < 1:
    raise ConfigError("data.n_per_class", n_train, hint="the training sample is empty")
  mesh = mesh or make_mesh(k, cfg.batch_size)
  seed_shards, data_shards = mesh.devices.shape
  data_sharding = NamedSharding(mesh, P("data")) if data_shards > 1 else None
  workdirs = [pathlib.Path(w) for w in workdirs]
  keys = {p: np.stack([np.asarray(seed_key(s, p)) for s in seeds]) for p in ("shuffle", "step")}
  rep = _replicated(mesh)
  images = jax.device_put(np.asarray(data.images), rep)
  labels = jax.device_put(np.asarray(data.labels, np.int32), rep)
  val_idx = None if data.val_idx is None else jax.device_put(np.asarray(data.val_idx, np.int32),
                                                             rep)
  train_idx = jax.device_put(np.asarray(data.train_idx, np.int32), _leading(mesh,
                                                                            data.train_idx))
  keys = jax.device_put(keys, _leading(mesh, keys["step"]))
  consts = jax.device_put(consts, rep) if consts is not None else None
  learner_keys = [seed_key(s, "learner") for s in seeds]

  ckpt = None
  start_seg, start_epoch, histories = 0, 0, [[] for _ in seeds]
  restored = None
  if checkpoint_dir is not None and cfg.checkpoint_every > 0:
    from tl_jax.train.checkpoint import Checkpointer, abstract_like
    ckpt = Checkpointer(os.path.abspath(os.fspath(checkpoint_dir)),
                        max_to_keep=cfg.keep_checkpoints)
    meta = ckpt.newest_intact_meta()
    if meta is not None:
      if tuple(meta["seeds"]) != seeds:
        raise ConfigError("checkpoint", meta["seeds"], [list(seeds)],
                          hint=f"{checkpoint_dir} holds another seed group")
      start_seg, start_epoch = int(meta["segment"]), int(meta["next_epoch"])
      histories = [list(h) for h in meta["histories"]]
      restored = meta
  for w, h in zip(workdirs, histories):  # a fresh run must not append to an old run's log
    jsonl.write_jsonl_atomic(w / METRICS_FILE, h)

  variables = init_variables
  step0 = jnp.zeros((k,), jnp.int32)
  bar_total = sum(s.num_epochs for s in segments)
  from tqdm.auto import tqdm
  # no bar off a terminal (CI, log files): it would only add carriage returns
  bar = tqdm(total=bar_total, desc=desc or "epochs", leave=False,
             disable=not terminal.bars_wanted(cfg.progress))
  bar.update(sum(s.num_epochs for s in segments[:start_seg]) + start_epoch)
  # workdirs[i]/tensorboard/ rewritten from the restored history, like metrics.jsonl above
  boards = tensorboard.EpochBoards(workdirs, histories)
  interrupt = _GracefulInterrupt()
  try:
    for si, seg in enumerate(segments):
      if si < start_seg:
        continue
      epoch_offset = sum(s.num_epochs for s in segments[:si])
      carry = _init_carry(seg.learner, learner_keys, variables, step0)
      if si == start_seg and restored is not None:
        carry = ckpt.restore_state(int(restored["ckpt_step"]), abstract_like(carry))
        restored = None
      carry = jax.device_put(carry, jax.tree.map(lambda x: _leading(mesh, x), carry))
      seed_epoch = make_seed_epoch(seg, cfg, n_train, data.num_classes, data_sharding)
      k_epoch = _make_k_epoch(seed_epoch, cfg.seed_loop, seed_shards)
      run = jax.jit(k_epoch, donate_argnums=0)
      ep = start_epoch if si == start_seg else 0
      seg_start_step = np.asarray(jax.device_get(carry.step)) - _steps_done(carry, n_train,
                                                                          cfg)
      done = np.asarray(jax.device_get(carry.done))
      while ep < seg.num_epochs and not done.all():
        te = time.time()
        carry, m = run(carry, train_idx, keys, images, labels, val_idx, consts)
        m = jax.device_get(m)
        bad = np.asarray(m["nonfinite"])
        if bad.any():
          i = int(np.argmax(bad))
          raise NonFiniteLossError(
              f"non-finite loss for seed {seeds[i]} at epoch {epoch_offset + ep}, batch "
              f"{int(m['nonfinite_step'][i])} of the epoch; lower the LR or check inputs")
        steps_now = np.asarray(jax.device_get(carry.step))
        opt_steps = steps_now - seg_start_step
        for i in range(k):
          if not m["active"][i]:
            continue
          r = _record(m, i, seg, ep, epoch_offset, int(steps_now[i]), int(opt_steps[i]))
          r["time_s"] = time.time() - te
          if not monitor_ok:
            r["is_best"] = False
          histories[i].append(r)
          jsonl.append_jsonl(workdirs[i] / METRICS_FILE, r)
          boards.write(i, r)
          if on_epoch_end is not None:
            on_epoch_end(i, jax.tree.map(lambda x, i=i: x[i], carry.state), r)
        boards.flush()
        done = np.asarray(m["stop"]) | np.asarray(jax.device_get(carry.done))
        ep += 1
        if not bar.disable:
          bar.set_postfix_str(_postfix([h[-1] for h, a in zip(histories, m["active"]) if a]),
                              refresh=False)
        bar.update(1)
        last = ep >= seg.num_epochs or done.all()
        if ckpt is not None and (ep % cfg.checkpoint_every == 0 or last or interrupt.asked):
          ckpt_step = epoch_offset + ep
          # to_jsonable builds new containers: the save is asynchronous and `histories` grows
          # during the next epoch, so the checkpoint must not hold a reference to it
          meta = jsonl.to_jsonable({"seeds": list(seeds), "segment": si, "next_epoch": ep,
                                    "histories": histories, "ckpt_step": ckpt_step})
          ckpt.save(ckpt_step, carry, meta)
        if interrupt.asked:
          raise KeyboardInterrupt  # at an epoch boundary, its checkpoint written
      if done.all():
        bar.update(seg.num_epochs - ep)
      use_best = cfg.restore_best and monitor_ok
      if use_best:
        variables = carry.best
        # a seed that never improved (no validation epoch ran) keeps its last variables
        never = jax.device_get(carry.best_epoch) < 0
        if never.any():
          variables = _tree_where_stacked(~never, carry.best,
                                          seg.learner.eval_variables(carry.state))
      else:
        variables = seg.learner.eval_variables(carry.state)
      for i in range(k):  # mark the best epoch of the segment in each history
        be = int(jax.device_get(carry.best_epoch)[i])
        for r in histories[i]:
          if r["stage"] == seg.name:
            r["is_best"] = use_best and r["stage_epoch"] == be
      variables = jax.tree.map(jnp.copy, variables)
      step0 = carry.step
      start_epoch = 0
      if si + 1 < len(segments):
        # the next segment's carry is built from fresh learner state on these variables
        variables = jax.device_get(variables)
  except BaseException:
    if ckpt is not None:
      try:
        ckpt.close()
      except Exception:  # noqa: BLE001 - the first error is the one to report
        pass
      ckpt.remove_partial()
      ckpt = None
    raise
  finally:
    interrupt.restore()
    bar.close()
    boards.close()
    if ckpt is not None:
      ckpt.close()
  for i, w in enumerate(workdirs):
    jsonl.write_jsonl_atomic(w / METRICS_FILE, histories[i])
  return FitResult(seeds, variables, histories, time.time() - t0)


class _GracefulInterrupt:
  """Ctrl-C during `fit` stops at the end of the running epoch, after writing its checkpoint,
  by raising KeyboardInterrupt there (the command line exits 130: rerun to resume). A second
  Ctrl-C stops at once. Only in the main thread (signal handlers cannot be set elsewhere)."""

  def __init__(self):
    self.asked = False
    self._old = None
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    if self.asked:
      raise KeyboardInterrupt
    self.asked = True
    print("\n[tl_jax] Ctrl-C: stopping after this epoch and its checkpoint (Ctrl-C again to "
          "stop now)", file=sys.stderr, flush=True)

  def restore(self) -> None:
    if self._old is not None:
      signal.signal(signal.SIGINT, self._old)
      self._old = None


def _steps_done(carry: Carry, n_train: int, cfg: FitConfig) -> np.ndarray:
  """Steps each seed has trained in the current segment (its epochs x steps per epoch)."""
  spe = steps_per_epoch(n_train, cfg.batch_size, cfg.drop_last)
  return np.asarray(jax.device_get(carry.epoch)) * spe


def _tree_where_stacked(pred: np.ndarray, a: Any, b: Any) -> Any:
  def pick(x, y):
    p = jnp.asarray(pred).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(p, x, y)
  return jax.tree.map(pick, a, b)


@functools.lru_cache(maxsize=32)
def _eval_fn(learner: Any, eval_batch_size: int, num_classes: int, mode: str) -> Callable:
  split_eval = make_split_eval(learner, eval_batch_size, num_classes)
  if mode == "vmap":
    return jax.jit(jax.vmap(split_eval, in_axes=(0, None, None, 0)))
  return jax.jit(lambda v, im, lb, idx: jax.lax.map(lambda a: split_eval(a[0], im, lb, a[1]),
                                                    (v, idx)))


def evaluate(learner: Any, variables: Any, images: np.ndarray, labels: np.ndarray,
             idx: np.ndarray, num_classes: int, eval_batch_size: int = 256,
             seed_loop: str = "map") -> list[dict[str, Any]]:
  """Per seed: classification metrics (tl_jax.train.metrics) of `variables[i]` (stacked) on
  rows `idx[i]` of the pool (`idx` [K, n], or [n] shared by every seed)."""
  from tl_jax.train.metrics import classification_metrics
  k = jax.tree.leaves(variables)[0].shape[0]
  idx = np.asarray(idx, np.int32)
  if idx.ndim == 1:
    idx = np.broadcast_to(idx, (k, len(idx)))
  fn = _eval_fn(learner, int(eval_batch_size), int(num_classes), seed_loop)
  loss, count, preds, _ = jax.device_get(fn(variables, jnp.asarray(images),
                                            jnp.asarray(np.asarray(labels, np.int32)),
                                            jnp.asarray(idx)))
  lab = np.asarray(labels)
  return [classification_metrics(lab[idx[i]], preds[i], num_classes,
                                 loss=float(loss[i]) / max(float(count[i]), 1.0))
          for i in range(k)]
