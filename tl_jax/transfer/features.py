"""Feature extraction (seed 001): the frozen backbone runs once, features are cached, a dense head
trains on them. Far cheaper than running the backbone every epoch, and exactly a frozen backbone
without augmentation or BN updates.
"""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tl_jax.data import augment
from tl_jax.data.types import DataSplits
from tl_jax.train import loop, optim, steps
from tl_jax.train.state import TrainState
from tl_jax.transfer import heads


def extract(model, variables, images: np.ndarray, preprocess, batch_size: int = 128) -> np.ndarray:
  """Pooled backbone features of `images` (uint8 NHWC), one jitted call per fixed-size batch."""
  fn = jax.jit(lambda v, x: heads.backbone_features(model, v, preprocess(x)))
  n = len(images)
  out = []
  for i in range(0, n, batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(fn(variables, jnp.asarray(chunk)))[:batch_size - pad])
  return np.concatenate(out)


def cached_features(wd: pathlib.Path, name: str, model, variables, images, preprocess
                    ) -> np.ndarray:
  """Features from `wd/features_<name>.npz` when present (same image count), else computed."""
  path = wd / f"features_{name}.npz"
  if path.exists():
    f = np.load(path)["features"]
    if len(f) == len(images):
      return f
  f = extract(model, variables, images, preprocess)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, features=f)
  tmp.replace(path)
  return f


def run(config: ml_collections.ConfigDict, wd: pathlib.Path, splits: DataSplits, model,
        variables: dict[str, Any], stage, rng: jax.Array, copied: list[str]) -> dict[str, Any]:
  """Caches backbone features for every split, trains `config.model.head` on them, evaluates."""
  from tl_jax.experiment import _fit_cfg, finish
  t0 = time.time()
  pre = augment.make_preprocess(config.input)
  feats = {n: cached_features(wd, n, model, variables, ds.images, pre) for n, ds in splits.items()}
  logging.info("cached features: %s", {n: f.shape for n, f in feats.items()})
  head_name = config.model.head if config.model.head != "default" else "linear"
  head = heads.make_head(head_name, splits.num_classes, **config.model.head_kwargs.to_dict())
  dim = feats["train"].shape[1]
  hv = head.init({"params": rng, "dropout": rng}, jnp.zeros((1, dim)), train=False)
  feat_ds = {n: {"image": f[:, None, None, :].astype(np.float32), "label": ds.labels,
                 "num_classes": splits.num_classes}
             for (n, ds), f in zip(splits.items(), feats.values())}
  head_model = _FlatHead(head)
  ident = lambda key, x: x  # noqa: E731  (no augmentation on cached features)
  opt = ml_collections.ConfigDict(stage.optimizer.to_dict())
  opt.frozen = ()
  bs = min(int(config.train.batch_size), len(splits.train))
  spe = len(splits.train) // bs if config.train.drop_last else -(-len(splits.train) // bs)
  tx = optim.make_optimizer(opt, spe, stage.num_epochs, hv["params"])
  state = TrainState.create(head_model.apply, hv["params"], hv.get("batch_stats", {}), tx)
  cfg = _fit_cfg(config, stage.num_epochs, opt.lr)
  cfg["batch_size"] = bs
  eval_step = steps.make_eval_step(head_model, lambda x: x)
  state, hist = loop.fit(state, steps.make_train_step(head_model, ident), eval_step,
                         feat_ds["train"], feat_ds.get("val"), cfg, wd, rng,
                         num_classes=splits.num_classes)
  fsplits = _FeatureSplits(feat_ds, splits)
  return finish(config, wd, head_model, state, eval_step, fsplits, hist, copied, t0)


class _FlatHead:
  """Adapts a head to the (logits, features) model interface on [N,1,1,D] inputs."""

  def __init__(self, head):
    self.head = head

  def apply(self, variables, x, train=False, **kw):
    out = self.head.apply(variables, x.reshape((x.shape[0], -1)), train=train, **kw)
    if isinstance(out, tuple):  # mutable collections requested
      logits, mutated = out
      return (logits, {}), mutated
    return out, {}


class _FeatureSplits:
  """Duck-types DataSplits for `finish`: the cached feature arrays instead of images."""

  def __init__(self, feat_ds: dict, splits: DataSplits):
    self._d = feat_ds
    self.num_classes = splits.num_classes
    self.class_names = splits.class_names
    self.train = feat_ds["train"]

  def items(self):
    return list(self._d.items())

  def __len__(self):
    return len(self.train["label"])
