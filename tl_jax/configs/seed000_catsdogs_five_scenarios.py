r"""Seed 000 ("Comparação de técnicas de transferência de conhecimento em redes
convolucionais"): the five scenarios, on cats vs dogs, with one architecture for all of them as
in the seed.

  1 scratch            trained from random weights (6 epochs; 1_scratch_20ep: up to 20 epochs,
                       early-stopping patience 8, reduce-LR patience 4)
  2 tl_cifar10         transfer learning from a same-domain source (the seed: a HAM10000 network;
                       here: the same network trained on CIFAR-10, which holds cats and dogs):
                       feature layers copied and frozen, new head trained
  3 ft_cifar10         fine-tuning from that source: head warm-up, then the top block unfrozen
  4 tl_imagenet        transfer learning from ImageNet (frozen base, new head)
  5 ft_imagenet        fine-tuning from ImageNet (head warm-up, then the top block unfrozen)

Seed settings kept: one architecture for every scenario (the seed: ResNet50; here the ImageNet
network available offline, EfficientNet-Lite0 — no ImageNet ResNet50 weights offline), the
seed's CustomResNet head (Flatten, Dropout, BN, Dense 512 relu, Dropout, BN, Dense 256 relu, Dense
classes), AdamW lr 1e-3 for every model, EarlyStopping and ReduceLROnPlateau on the validation
loss, the seed's ImageDataGenerator augmentation (rotation 45, shifts 0.2, shear 0.15, zoom 0.2,
h/v flips, brightness 0.8-1.2; `input.augment='keras_seed000'`), frozen layers in inference mode
(Keras trainable=False). The source network is trained first in `workdir/source`
(compare.source) on CIFAR-10 (all 10 classes) and its feature layers are grafted into scenarios 2
and 3. BatchNorm momentum 0.9 instead of Keras's 0.99 (see the comment in get_config).

Data: shared/data/cats_vs_dogs (train 300 + 300, test 100 + 100); 50 per class carved from
train for validation (fixed split), 250 per class to train on.

CPU shortening (2 shared cores; results/seed000/README.md): images 32x32 (the CIFAR-10 source's
resolution; training all of EfficientNet-Lite0 at 96 px costs ~7x more per image on this CPU);
6 epochs from scratch, 10 for the frozen-base runs, 2 + 4 for fine-tuning (early stopping
patience 3, reduce-LR patience 2) instead of up to 200; fine-tuning retrains the top block
(blocks 11-15 + conv_head, at lr 1e-4 after a 2-epoch head warm-up) instead of every layer; the
source on 200 CIFAR-10 images per class for 5 epochs instead of 400 epochs; one seed.

    python -m tl_jax.main --config configs/seed000_catsdogs_five_scenarios.py \
        --workdir workdirs/seed000_catsdogs
    python -m tl_jax.scenarios.tables --workdir workdirs/seed000_catsdogs --out results/seed000
    python -m tl_jax.scenarios.gradcam_panel --config configs/seed000_catsdogs_five_scenarios.py \
        --workdir workdirs/seed000_catsdogs --out results/seed000/gradcam_panel.png

Numbers it produced (results/seed000/README.md; commit 1c86d3a, 2-core CPU, 5 min 15 s; seed 0),
test accuracy / macro-F1: source (CIFAR-10) 0.198 / 0.184; 1 scratch 0.500 / 0.333 (20 epochs:
0.500 / 0.333); 2 TL CIFAR-10 0.525 / 0.525; 3 FT CIFAR-10 0.545 / 0.539; 4 TL ImageNet
0.640 / 0.635; 5 FT ImageNet 0.560 / 0.540 - near chance at 32x32 and a few hundred steps
except the ImageNet base (see the README).
"""

import ml_collections

from tl_jax.config import base_config

EFFNET_WEIGHTS = "shared://data/efficientnet_lite0_imagenet/weights.npz"
ALL_FROZEN = 17  # tl_jax.models.efficientnet: stem + 16 blocks + conv_head
TOP_CUT = 11     # blocks 0-10 frozen: blocks 11-15 + conv_head train (the "top block")
TOP_BLOCK = r"^backbone/(blocks_1[1-5]|conv_head|bn1)/"


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.name = "seed000_catsdogs"
  c.data.source = "image_folder"
  c.data.train = "shared://data/cats_vs_dogs/train"
  c.data.test = "shared://data/cats_vs_dogs/test"
  c.data.size = (32, 32)
  c.data.val_per_class = 50
  c.data.split_seed = 0
  c.input.augment = "keras_seed000"
  c.input.normalize = "efficientnet"
  c.model.name = "efficientnet_lite0"
  # BatchNorm momentum 0.9 (PyTorch's 0.1) instead of Keras's 0.99: with a few hundred steps,
  # 0.99 leaves the running statistics near their initial values (eval at chance level).
  c.model.kwargs = ml_collections.ConfigDict({"frozen_blocks": 0, "bn_momentum": 0.9})
  c.model.head = "custom_resnet"
  c.model.head_kwargs = ml_collections.ConfigDict({"bn_momentum": 0.9})
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 4e-3  # Keras AdamW default
  c.optimizer.decay_type = "decoupled"
  c.optimizer.schedule = "constant"
  c.train.num_epochs = 10
  c.train.batch_size = 32
  c.train.eval_batch_size = 100
  c.train.monitor = "val_loss"
  c.train.early_stopping.patience = 3
  c.train.reduce_lr.patience = 2
  c.train.reduce_lr.factor = 0.1
  c.train.checkpoint_every = 0
  c.transfer.strategy = "scratch"

  c.compare = ml_collections.ConfigDict()
  # The same-domain source: the same network + head trained from scratch on CIFAR-10.
  c.compare.source = ml_collections.ConfigDict({
      "data": {"source": "npz", "train": "shared://data/cifar10/train.npz",
               "test": "shared://data/cifar10/test.npz", "n_per_class": 200,
               "val_per_class": 20},
      "train": {"num_epochs": 5, "batch_size": 64, "eval_batch_size": 500}})
  imagenet = {"init_kind": "efficientnet_lite0", "init_from": EFFNET_WEIGHTS}
  # Fine-tuning (3, 5): head warm-up with the base frozen, then the top block (blocks 11-15 +
  # conv_head) trains with the head at lr / 10 — not every layer as in the seed (CPU budget).
  ft = lambda **init: {  # noqa: E731
      "transfer": {"strategy": "fine_tune", "warmup_epochs": 2, "unfreeze": (TOP_BLOCK,),
                   "finetune_lr": 1e-4, **init},
      "model": {"kwargs": {"frozen_blocks": TOP_CUT}}, "train": {"num_epochs": 4}}
  c.compare.methods = ml_collections.ConfigDict({
      "1_scratch": {"transfer": {"strategy": "scratch"}, "train": {"num_epochs": 6}},
      # the 6-epoch run stopped at chance level (early stopping after 4 epochs): a longer one
      "1_scratch_20ep": {"transfer": {"strategy": "scratch"},
                         "train": {"num_epochs": 20, "early_stopping": {"patience": 8},
                                   "reduce_lr": {"patience": 4}}},
      "2_tl_cifar10": {"transfer": {"strategy": "frozen_backbone"},
                       "model": {"kwargs": {"frozen_blocks": ALL_FROZEN}}},
      "3_ft_cifar10": ft(),
      "4_tl_imagenet": {"transfer": {"strategy": "frozen_backbone", **imagenet},
                        "model": {"kwargs": {"frozen_blocks": ALL_FROZEN}}},
      "5_ft_imagenet": ft(**imagenet),
  })
  c.compare.order = ("1_scratch", "1_scratch_20ep", "2_tl_cifar10", "3_ft_cifar10", "4_tl_imagenet",
                     "5_ft_imagenet")
  c.compare.seeds = (0,)
  c.compare.reference = "1_scratch"
  return c
