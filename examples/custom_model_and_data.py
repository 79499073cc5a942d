"""Your own Flax model and your own arrays in tl_jax, from Python (no config file, no checkout).

    python examples/custom_model_and_data.py --workdir /tmp/tl_jax_example            # ~1 min, CPU
    python examples/custom_model_and_data.py --workdir /tmp/x --epochs 2 --per_class 40   # tiny

It registers a small CNN (`register_model`) and a synthetic dataset (`register_dataset`: class c
is a faint band at row 2c + 1 in strong noise), trains the model from scratch with tl_jax's engine
(`train_and_evaluate`), reads the summary and plots the validation curve.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

import tl_jax
from tl_jax.data.types import ArrayDataset


class BandNet(nn.Module):
  """The tl_jax model contract: `num_classes` (None = no head), returns (logits, features)."""
  num_classes: int | None = 4
  width: int = 8
  head_name = "head"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(self.width, (3, 3), name="conv0")(x))
    feats = {"conv0": x}
    x = x.reshape((x.shape[0], -1))  # keep where the band is
    if self.num_classes is None:
      return x, feats
    return nn.Dense(self.num_classes, name=self.head_name)(x), feats


def bands(spec: dict, per_class: int = 60) -> ArrayDataset:
  """`data.source = 'bands'`: `spec` holds the run's data fields (unused here)."""
  del spec
  classes, hw = 4, 12
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(classes), per_class)
  images = rng.integers(0, 180, (len(labels), hw, hw, 3)).astype(np.int32)
  for i, c in enumerate(labels):
    images[i, 2 * c + 1, :, :] += 40  # a faint band in noise
  images = np.clip(images, 0, 255).astype(np.uint8)
  return ArrayDataset(images, labels.astype(np.int32), tuple(f"band{c}" for c in range(classes)))


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="/tmp/tl_jax_example")
  ap.add_argument("--epochs", type=int, default=15)
  ap.add_argument("--per_class", type=int, default=60)
  args = ap.parse_args(argv)

  tl_jax.register_model("band_net", BandNet, input_shape=(12, 12, 3))
  tl_jax.register_dataset("bands", functools.partial(bands, per_class=args.per_class))
  config = tl_jax.base_config()
  config.data.source, config.data.train, config.data.test = "bands", "", ""
  config.data.val_per_class, config.data.test_per_class = 10, 10
  config.model.name, config.input.augment, config.input.normalize = "band_net", "none", "zero_one"
  config.optimizer.name, config.optimizer.lr = "adam", 3e-3
  config.train.num_epochs, config.train.batch_size, config.train.progress = args.epochs, 16, False

  summary = tl_jax.train_and_evaluate(config, args.workdir)
  print(f"test accuracy {summary['test_accuracy']:.3f} (best epoch {summary['best_epoch']})")
  history = [json.loads(x) for x in pathlib.Path(args.workdir, "metrics.jsonl").read_text().splitlines()]
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.plot([h["epoch"] for h in history], [h["val_accuracy"] for h in history], "o-")
  ax.set(title="band_net on 'bands': validation accuracy", xlabel="epoch", ylabel="accuracy")
  fig.tight_layout()
  fig.savefig(pathlib.Path(args.workdir, "val_accuracy.png"), dpi=100)
  return summary


if __name__ == "__main__":
  main()
