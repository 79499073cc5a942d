"""All seeds of one method as ONE vmapped program, with the same data, strategies and outputs as
`tl_jax.experiment.train_and_evaluate` (one summary.json per seed).

Used by tl_jax.compare when `compare.vmap_seeds` is on, for single-stage plain-step methods
(scratch, frozen_backbone, full_fine_tune). Per seed: its own N-per-class draw, init key (the same
one train_and_evaluate would use), shuffle and augmentation keys; the validation split is the
fixed carve, early stopping and best-on-validation tracking run inside the compiled loop
(tl_jax.sweep.vmapped). Other methods (two-stage fine-tuning, feature extraction, kt) fall back to
one run per seed.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tl_jax import experiment
from tl_jax.data import augment, sampling
from tl_jax.data.sources import load_dataset
from tl_jax.data.types import DataSplits
from tl_jax.errors import ConfigError, NonFiniteLossError
from tl_jax.sweep import vmapped
from tl_jax.train import jsonl, optim, steps
from tl_jax.train.state import TrainState
from tl_jax.transfer import strategies

VMAPPABLE = ("scratch", "frozen_backbone", "full_fine_tune")


def can_vmap(config: ml_collections.ConfigDict) -> bool:
  return (config.kt.method == "none" and config.transfer.strategy in VMAPPABLE and
          config.transfer.bn == "live" and config.train.reduce_lr.patience < 0 and
          not config.data.imbalance)


@flax.struct.dataclass
class _Eval:
  params: Any
  batch_stats: Any


def run_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int],
              workdirs: Sequence[pathlib.Path]) -> list[dict[str, Any]]:
  """Trains every seed of `config` in one vmapped program; writes and returns the summaries."""
  t0 = time.time()
  loaded = load_dataset(experiment.data_spec(config))
  splits = loaded if isinstance(loaded, DataSplits) else DataSplits(loaded)
  pool, val, test = splits.train, splits.val, splits.test
  if val is None:
    raise ConfigError("data.val_per_class", 0, hint="a validation split is needed")
  n = int(config.data.n_per_class)
  train_idx = np.stack([sampling.sample_per_class(pool.labels, n, int(s)) if n else
                        np.arange(len(pool)) for s in seeds]).astype(np.int32)
  images = np.concatenate([pool.images, val.images])
  labels = np.concatenate([pool.labels, val.labels]).astype(np.int32)
  val_idx = np.tile(np.arange(len(pool), len(labels), dtype=np.int32), (len(seeds), 1))

  model, head_rx = experiment.build_model(config, splits.num_classes)
  stage = strategies.make_stages(config, head_rx)[0]
  image_shape = pool.image_shape
  bs = min(int(config.train.batch_size), train_idx.shape[1])
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.train.batch_size = bs
  epochs = int(stage.num_epochs)
  spe = experiment.steps_per_epoch(cfg, train_idx.shape[1])
  states, copied = [], []
  tx = None
  for s in seeds:
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.seed = int(s)
    init_rng, _ = jax.random.split(jax.random.key(int(s)))
    variables, copied = experiment.init_variables(c, model, image_shape, init_rng)
    if tx is None:
      tx = optim.make_optimizer(stage.optimizer, spe, epochs, variables["params"])
    states.append(TrainState.create(model.apply, variables["params"],
                                    variables.get("batch_stats", {}), tx))
  keys = np.stack([np.stack([np.asarray(k) for k in vmapped.seed_keys(s)]) for s in seeds])
  data = {"train_idx": train_idx, "val_idx": val_idx, "shuffle_key": keys[:, 1],
          "aug_key": keys[:, 2]}
  mesh = vmapped.seed_mesh()
  carry = vmapped.shard_seed_axis(vmapped.stacked_carry(states, [False] * len(seeds)), mesh)
  data = vmapped.shard_seed_axis(data, mesh)
  images_d, labels_d = vmapped.replicate((images, labels), mesh)
  aug, pre = augment.make_augment(cfg.input), augment.make_preprocess(cfg.input)
  runner = vmapped.make_vmapped_runner(model, bs, int(cfg.train.eval_batch_size),
                                       bool(cfg.train.drop_last), aug, pre)
  patience = int(cfg.train.early_stopping.patience)
  carry, metrics = runner(carry, images_d, labels_d, data, jnp.int32(max(patience, 0)),
                          jnp.float32(cfg.train.early_stopping.min_delta), num_epochs=epochs)
  metrics = jax.device_get(metrics)
  if np.any(metrics["nonfinite"]):
    raise NonFiniteLossError("non-finite loss in the vmapped seed sweep")
  wall = time.time() - t0
  eval_step = steps.make_eval_step(model, pre)
  out = []
  for k, (s, wd) in enumerate(zip(seeds, workdirs)):
    wd = experiment.check_workdir(wd)
    pick = lambda t: jax.tree.map(lambda x: x[k], t)  # noqa: E731
    state = _Eval(pick(carry.best_params), pick(carry.best_batch_stats))
    history = [{"epoch": e, "train_loss": float(metrics["train_loss"][e, k]),
                "train_accuracy": float(metrics["train_accuracy"][e, k]),
                "val_accuracy": float(metrics["val_accuracy"][e, k]),
                "is_best": e == int(carry.best_epoch[k])}
               for e in range(epochs) if metrics["active"][e, k]]
    jsonl.write_jsonl_atomic(wd / "metrics.jsonl", history)
    seed_splits = DataSplits(pool.subset(train_idx[k]), val, test)
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.seed = int(s)
    summary = experiment.finish(c, wd, model, state, eval_step, seed_splits, history, copied,
                                t0)
    summary.update({"vmapped_seeds": len(seeds), "wall_s": wall / len(seeds),
                    "wall_time_s": wall / len(seeds)})
    jsonl.write_json_atomic(wd / experiment.SUMMARY_FILE, summary)
    out.append(summary)
  return out


__all__ = ["VMAPPABLE", "can_vmap", "run_seeds"]
