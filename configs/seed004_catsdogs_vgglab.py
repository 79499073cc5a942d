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

Numbers it produced (results/seed004/README.md; 2-core shared CPU, 182 s, seed 0): test accuracy
0.920 (macro-F1 0.920, loss 0.255), validation 0.890, train 0.938; best epoch 43 of 100.
"""

import ml_collections

from tl_jax.config import base_config
import tl_jax.scenarios  # noqa: F401  (registers 'efficientnet_lite0_cut')


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.name = "seed004_catsdogs_vgglab"
  c.data.source = "image_folder"
  c.data.train = "shared://data/cats_vs_dogs/train"
  c.data.test = "shared://data/cats_vs_dogs/test"
  c.data.size = (96, 96)
  c.data.val_per_class = 50
  c.data.split_seed = 0
  c.input.augment = "none"
  c.input.normalize = "efficientnet"
  c.model.name = "efficientnet_lite0_cut"
  c.model.kwargs = ml_collections.ConfigDict({"frozen_blocks": 17})
  c.model.head = "dense256"
  c.optimizer.name = "sgd"
  c.optimizer.lr = 1e-4
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.train.num_epochs = 100
  c.train.batch_size = 100
  c.train.eval_batch_size = 100
  c.train.checkpoint_every = 0
  c.train.progress = False
  c.transfer.strategy = "feature_extraction"
  c.transfer.init_kind = "efficientnet_lite0"
  c.transfer.init_from = "shared://data/efficientnet_lite0_imagenet/weights.npz"
  return c
