r"""Seed 004, "Ensaios - VGG16": transfer of an ImageNet network to Kaggle cats vs dogs with only
fully-connected layers trained on the convolutional base's output (the seed's
`classification_layers = [Flatten(input_shape=train_data.data.shape[1:]), Dense(256, relu),
Dropout(0.5), Dense(2, softmax)]` trained on the base's features) — i.e. feature extraction.

EfficientNet-Lite0 (ImageNet) stands in for VGG16: no ImageNet VGG16 weights are available
offline (shared/data/README.md). Its pooled 1280-d output replaces VGG16's 7x7x512 block5 map.

Seed settings kept: head Dense 256 relu + Dropout 0.5 + Dense 2 (softmax in the loss), SGD lr 1e-4
momentum 0.9, batch 100, 100 epochs, best epoch on validation. The seed's rotation/flip
augmentation cannot act on cached features and is not used (as in the seed, whose dense layers
train on precomputed base outputs).
Data: shared/data/cats_vs_dogs — 250 + 250 train, 50 + 50 val carved from train (fixed split),
100 + 100 test (the seed: train 2,000, valid 500).
CPU shortening: images 96x96 instead of 224x224; one seed.

    python -m tl_jax.main --config configs/seed004_catsdogs_vgglab.py \
        --workdir workdirs/seed004_catsdogs

Numbers it produced (results/seed004/README.md; commit 1c86d3a, 2-core CPU with no other jobs,
13 s, seed 0): test accuracy 0.875 (macro-F1 0.875, loss 0.305), validation 0.890, train 0.906;
best epoch 22 of 100.
"""

import pathlib
import runpy

import ml_collections

# Same data, ImageNet backbone, cut and head as seed 001's cats-vs-dogs comparison.
_SEED001 = runpy.run_path(str(pathlib.Path(__file__).with_name("seed001_catsdogs_effnet.py")))


def get_config() -> ml_collections.ConfigDict:
  c = _SEED001["get_config"]()
  del c["compare"]
  c.name = "seed004_catsdogs_vgglab"
  c.optimizer = ml_collections.ConfigDict({**c.optimizer.to_dict(), "name": "sgd",
                                           "momentum": 0.9})
  c.train.num_epochs = 100
  c.train.batch_size = 100
  c.transfer.strategy = "feature_extraction"
  return c
