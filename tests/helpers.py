"""Shared test fixtures: a tiny on-disk npz dataset and a tiny run config (seconds on CPU)."""

from __future__ import annotations

import pathlib

import numpy as np

from tl_jax.config import base_config


def write_tiny_npz(root: pathlib.Path, n_per_class: int = 12, classes: int = 3, hw: int = 8,
                   seed: int = 0) -> dict[str, str]:
  """Learnable toy data: class c has a bright c-th horizontal band. Returns train/test paths."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in (("train", n_per_class), ("test", max(4, n_per_class // 2))):
    labels = np.repeat(np.arange(classes), n).astype(np.int32)
    images = rng.integers(0, 60, size=(len(labels), hw, hw, 3)).astype(np.uint8)
    band = hw // classes
    for i, c in enumerate(labels):
      images[i, c * band:(c + 1) * band] += 150
    p = root / f"{split}.npz"
    np.savez(p, image=images, label=labels)
    out[split] = str(p)
  (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(classes)) + "\n")
  return out


def tiny_config(paths: dict[str, str], **overrides):
  c = base_config()
  c.data.train = paths["train"]
  c.data.test = paths["test"]
  c.data.val_per_class = 3
  c.input.augment = "none"
  c.input.normalize = "zero_one"
  c.model.name = "tiny_cnn"
  c.model.kwargs.width = 4
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.05
  c.optimizer.schedule = "constant"
  c.train.num_epochs = 2
  c.train.batch_size = 8
  c.train.eval_batch_size = 16
  c.train.checkpoint_every = 0
  c.train.progress = False
  for k, v in overrides.items():
    node = c
    *head, last = k.split(".")
    for h in head:
      node = node[h]
    node[last] = v
  return c
