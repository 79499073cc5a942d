"""Feature extraction (seed 001): the frozen backbone runs once and its pooled features are what a
dense head trains on (tl_jax.experiment runs the head through the engine). Far cheaper than
running the backbone every epoch, and exactly a frozen backbone without augmentation or BN
updates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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
