"""Epoch loop: device-resident data, validation-driven callbacks, best-state tracking, resume.

`fit` is agnostic of the step internals: any `train_step(state, batch, key) -> (state, metrics)`
works (metrics need 'loss' and may carry 'accuracy', 'count', 'nonfinite'), and the state may be
any pytree; `get_eval_state(state)` maps it to what `eval_step` expects (`.params`,
`.batch_stats`). The LR scale for reduce-LR-on-plateau lives in the optimiser state
(`optim.LRScaleState`) anywhere inside the state tree, so changing it never recompiles.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from tl_jax.errors import ConfigError, NonFiniteLossError
from tl_jax.train import callbacks as cb
from tl_jax.train import jsonl, optim
from tl_jax.train.metrics import classification_metrics

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  if cfg is None:
    return default
  if hasattr(cfg, "get"):
    v = cfg.get(key, default)
  else:
    v = getattr(cfg, key, default)
  return default if v is None and default is not None else v


def _arrays(ds: Any) -> tuple[np.ndarray, np.ndarray, Optional[int]]:
  """(images uint8 NHWC, labels int32, num_classes) from an ArrayDataset or a dict."""
  if isinstance(ds, dict):
    return ds["image"], ds["label"], ds.get("num_classes")
  return ds.images, ds.labels, getattr(ds, "num_classes", None)


def _key_data(rng: jax.Array) -> np.ndarray:
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return np.asarray(jax.random.key_data(rng)).ravel()
  return np.asarray(rng).ravel()


def _make_gather(batch_size: int) -> Callable[..., dict[str, jax.Array]]:
  @jax.jit
  def gather(images, labels, order, valid, i):
    idx = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
    mask = jax.lax.dynamic_slice_in_dim(valid, i * batch_size, batch_size)
    return {"image": jnp.take(images, idx, axis=0), "label": jnp.take(labels, idx, axis=0),
            "mask": mask}
  return gather


def _padded_order(order: np.ndarray, batch_size: int, drop_last: bool) -> tuple[np.ndarray,
                                                                             np.ndarray, int]:
  n = len(order)
  if drop_last:
    steps = n // batch_size
    order = order[:steps * batch_size]
    return order.astype(np.int32), np.ones(len(order), np.float32), steps
  steps = -(-n // batch_size)
  pad = steps * batch_size - n
  valid = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  order = np.concatenate([order, np.zeros(pad, order.dtype)]).astype(np.int32)
  return order, valid, steps


class DeviceData:
  """Images/labels uploaded once; batches of a fixed size gathered on device."""

  def __init__(self, ds: Any, batch_size: int):
    images, labels, self.num_classes = _arrays(ds)
    if images.ndim != 4 or images.dtype not in (np.uint8, np.float32):
      raise ConfigError("dataset.images", f"{images.dtype}{images.shape}",
                        "uint8 [N,H,W,C] (float32 for cached features)")
    self.n = len(labels)
    self.batch_size = int(batch_size)
    self.images = jnp.asarray(images)
    self.labels = jnp.asarray(np.asarray(labels, np.int32))
    self.labels_np = np.asarray(labels, np.int64)
    self._gather = _make_gather(self.batch_size)

  def batches(self, order: np.ndarray, drop_last: bool):
    """Yields fixed-size batches (with a 0/1 'mask' for padding) in the order of `order`."""
    order, valid, steps = _padded_order(np.asarray(order), self.batch_size, drop_last)
    order_d, valid_d = jnp.asarray(order), jnp.asarray(valid)  # one small upload per epoch
    for i in range(steps):
      yield self._gather(self.images, self.labels, order_d, valid_d, jnp.int32(i))

  def num_batches(self, drop_last: bool) -> int:
    return self.n // self.batch_size if drop_last else -(-self.n // self.batch_size)


def evaluate(state: Any, eval_step: Callable[..., dict[str, jax.Array]], ds: Any,
             batch_size: int = 128, num_classes: Optional[int] = None,
             get_eval_state: Optional[Callable[[Any], Any]] = None,
             data: Optional[DeviceData] = None) -> dict[str, Any]:
  """loss, accuracy, macro_f1, macro_recall, per_class_accuracy, confusion_matrix on `ds`.

  The last batch is padded (one compiled shape) and masked out of every count.
  """
  data = data or DeviceData(ds, batch_size)
  num_classes = num_classes or data.num_classes or int(data.labels_np.max()) + 1
  s = get_eval_state(state) if get_eval_state else state
  outs = [eval_step(s, batch) for batch in data.batches(np.arange(data.n), drop_last=False)]
  outs = jax.device_get(outs)
  loss_sum = sum(float(o["loss_sum"]) for o in outs)
  count = sum(float(o["count"]) for o in outs)
  preds = np.concatenate([o["pred"][o["mask"] > 0] for o in outs])
  if len(preds) != data.n or int(count) != data.n:
    raise AssertionError(f"evaluated {len(preds)}/{count} of {data.n} examples")
  return classification_metrics(data.labels_np, preds, num_classes, loss=loss_sum / count)


def _epoch_summary(step_metrics: list[dict[str, Any]]) -> dict[str, float]:
  ms = jax.device_get(step_metrics)
  w = np.array([float(m.get("count", 1.0)) for m in ms])
  out = {}
  for k in ms[0]:
    if k in ("count", "nonfinite"):
      continue
    vals = np.array([float(m[k]) for m in ms])
    out[f"train_{k}"] = float((vals * w).sum() / max(w.sum(), 1e-12))
  return out


def _check_finite(step_metrics: list[dict[str, Any]], start: int, epoch: int,
                  first_step: int) -> int:
  """Raises NonFiniteLossError at the first flagged step in step_metrics[start:]."""
  for j, m in enumerate(jax.device_get(step_metrics[start:])):
    flag = float(m.get("nonfinite", 0.0))
    if flag or not math.isfinite(float(m["loss"])):
      step = first_step + start + j
      raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step {step} "
                               f"(batch {start + j} of the epoch); lower the LR or check inputs")
  return len(step_metrics)


def fit(state: Any, train_step: Callable[..., Any], eval_step: Optional[Callable[..., Any]],
        train_ds: Any, val_ds: Any, cfg: Any, workdir: Optional[str | os.PathLike],
        rng: jax.Array, *, get_eval_state: Optional[Callable[[Any], Any]] = None,
        on_epoch_end: Optional[Callable[[Any, dict[str, Any]], None]] = None,
        lr_fn: Optional[Callable[[int, float], float]] = None,
        num_classes: Optional[int] = None) -> tuple[Any, list[dict[str, Any]]]:
  """Trains for cfg.num_epochs; returns (best-on-validation state, per-epoch history).

  cfg fields (ConfigDict or dict): num_epochs, batch_size, eval_batch_size, drop_last (True),
  monitor ('val_accuracy'), monitor_mode ('auto'), early_stopping {patience (None = off),
  min_delta, restore_best (True)}, reduce_lr {patience (None = off), factor, min_delta, cooldown,
  min_lr, base_lr (the LR min_lr refers to; 1.0 = min_lr is a scale)}, checkpoint_every (epochs,
  0 = off), keep_checkpoints, progress, log_every. The input `state` is donated; use the return.
  Only the validation set drives callbacks and best-state selection.
  """
  num_epochs = int(_get(cfg, "num_epochs"))
  batch_size = int(_get(cfg, "batch_size", 32))
  drop_last = bool(_get(cfg, "drop_last", True))
  monitor = str(_get(cfg, "monitor", "val_accuracy"))
  log_every = int(_get(cfg, "log_every", 50))
  progress = bool(_get(cfg, "progress", True))
  ckpt_every = int(_get(cfg, "checkpoint_every", 0) or 0)
  es_cfg = _get(cfg, "early_stopping", None) or {}
  rl_cfg = _get(cfg, "reduce_lr", None) or {}
  mode = str(_get(cfg, "monitor_mode", "auto"))
  if val_ds is None and monitor.startswith("val_") and (_get(es_cfg, "patience") is not None or
                                                         _get(rl_cfg, "patience") is not None):
    raise ConfigError("val_ds", None, "a validation set", hint=f"callbacks monitor {monitor}")

  train = DeviceData(train_ds, batch_size)
  steps_per_epoch = train.num_batches(drop_last)
  if steps_per_epoch < 1:
    raise ConfigError("batch_size", batch_size, f"<= train size ({train.n}) with drop_last")
  val = DeviceData(val_ds, int(_get(cfg, "eval_batch_size", batch_size))) if val_ds is not None \
      else None
  n_cls = num_classes or train.num_classes or int(train.labels_np.max()) + 1

  stopper = cb.EarlyStopping(monitor, mode, patience=_get(es_cfg, "patience", None),
                             min_delta=float(_get(es_cfg, "min_delta", 0.0)))
  restore_best = bool(_get(es_cfg, "restore_best", True))
  reducer = None
  base_lr = float(_get(rl_cfg, "base_lr", 1.0))
  if _get(rl_cfg, "patience", None) is not None:
    reducer = cb.ReduceLROnPlateau(monitor, mode, factor=float(_get(rl_cfg, "factor", 0.1)),
                                   patience=int(_get(rl_cfg, "patience")),
                                   min_delta=float(_get(rl_cfg, "min_delta", 1e-4)),
                                   cooldown=int(_get(rl_cfg, "cooldown", 0)),
                                   min_lr=float(_get(rl_cfg, "min_lr", 0.0)))
    if not optim.has_lr_scale(state):
      raise ConfigError("reduce_lr.patience", _get(rl_cfg, "patience"),
                        hint="the state has no optim.LRScaleState; build the optimiser with "
                        "optim.make_optimizer or add optim.scale_by_lr_scale()")

  history: list[dict[str, Any]] = []
  best_state, start_epoch = None, 0
  metrics_path = os.path.join(os.fspath(workdir), METRICS_FILE) if workdir else None
  ckpt = None
  if workdir and ckpt_every > 0:
    from tl_jax.train.checkpoint import Checkpointer, abstract_like  # orbax only when needed
    ckpt = Checkpointer(os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_DIR),
                        max_to_keep=_get(cfg, "keep_checkpoints", 2))
    restored = ckpt.restore_latest(abstract_like(state))
    if restored is not None:
      state, meta, best_state = restored
      start_epoch = int(meta["epoch"]) + 1
      history = list(meta["history"])
      stopper.load_state_dict(meta["early_stopping"])
      if reducer is not None and meta.get("reduce_lr"):
        reducer.load_state_dict(meta["reduce_lr"])
      saved_rng = np.asarray(meta["rng"], np.uint32)
      if not np.array_equal(saved_rng, _key_data(rng)):
        logging.warning("resuming with the rng saved in the checkpoint, not the one passed")
        rng = jax.random.wrap_key_data(saved_rng) if jnp.issubdtype(
            rng.dtype, jax.dtypes.prng_key) else jnp.asarray(saved_rng)
      if metrics_path:
        jsonl.write_jsonl_atomic(metrics_path, history)
      logging.info("resumed from %s at epoch %d", ckpt.directory, start_epoch)
      if meta.get("stopped"):
        start_epoch = num_epochs
  if start_epoch == 0 and metrics_path and os.path.exists(metrics_path):
    os.unlink(metrics_path)  # a fresh run must not append to an old run's log

  rng_seed = [int(x) for x in _key_data(rng)]
  global_step = start_epoch * steps_per_epoch
  stopped = False
  try:
    for epoch in range(start_epoch, num_epochs):
      t0 = time.time()
      order = np.random.default_rng(rng_seed + [epoch]).permutation(train.n)
      step_metrics: list[dict[str, Any]] = []
      checked = 0
      bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{num_epochs}", leave=False,
                 disable=not progress)
      for i, batch in enumerate(train.batches(order, drop_last)):
        state, m = train_step(state, batch, rng)
        step_metrics.append(m)
        bar.update(1)
        if log_every and (i + 1) % log_every == 0:
          checked = _check_finite(step_metrics, checked, epoch, global_step)
          bar.set_postfix(loss=f"{float(m['loss']):.4f}")
      bar.close()
      _check_finite(step_metrics, checked, epoch, global_step)
      global_step += steps_per_epoch
      scale = optim.get_lr_scale(state)
      record = {"epoch": epoch, "step": global_step, "lr_scale": scale}
      if lr_fn is not None:
        record["lr"] = lr_fn(global_step - 1, scale)
      record.update(_epoch_summary(step_metrics))
      if val is not None:
        vm = evaluate(state, eval_step, None, num_classes=n_cls, get_eval_state=get_eval_state,
                      data=val)
        record.update({f"val_{k}": vm[k] for k in ("loss", "accuracy", "macro_f1",
                                                     "macro_recall")})
      if monitor not in record and (val is not None or not monitor.startswith("val_")):
        raise ConfigError("monitor", monitor, sorted(k for k in record if k != "epoch"))
      value = record.get(monitor)
      decision = stopper.update(epoch, value)
      if decision["improved"]:
        best_state = jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, state)
      record["is_best"] = bool(decision["improved"])
      if reducer is not None and value is not None:
        new_lr = reducer.update(value, scale * base_lr)
        if new_lr != scale * base_lr:
          state = optim.set_lr_scale(state, new_lr / base_lr)
          logging.info("epoch %d: reducing LR scale %.4g -> %.4g", epoch, scale,
                       new_lr / base_lr)
      record["time_s"] = time.time() - t0
      stopped = decision["stop"]
      history.append(record)
      if metrics_path:
        jsonl.append_jsonl(metrics_path, record)
      if on_epoch_end is not None:  # e.g. tl_jax.analysis.traces (weights / gamma over training)
        on_epoch_end(state, record)
      logging.info("epoch %d: %s", epoch, {k: v for k, v in record.items() if k != "epoch"})
      last = stopped or epoch == num_epochs - 1
      if ckpt is not None and ((epoch + 1) % ckpt_every == 0 or last):
        meta = {"epoch": epoch, "history": history, "early_stopping": stopper.state_dict(),
                "reduce_lr": reducer.state_dict() if reducer is not None else None,
                "rng": rng_seed, "stopped": stopped, "best_epoch": stopper.best_epoch,
                "best_value": stopper.state_dict()["best"]}
        ckpt.save(epoch, state, jsonl.to_jsonable(meta), best_state=best_state)
      if stopped:
        logging.info("early stopping at epoch %d (best epoch %s)", epoch, stopper.best_epoch)
        break
  finally:
    if ckpt is not None:
      ckpt.close()

  if val is None or not restore_best or best_state is None:
    return state, history
  return best_state, history
