r"""Seed 001 (Aula 5, "Transferência de Aprendizado"): the three ways of reusing an ImageNet
network on cats vs dogs, with EfficientNet-Lite0 standing in for VGG16 (the ImageNet network
available offline; no ImageNet VGG16 weights here).

  feature_extraction  the convolutional base runs once; Dense 256 relu + Dropout 0.5 + Dense 2
                      trains on the cached (pooled, 1280-d) features ("extração de
                      características")
  frozen_backbone     base + the same head in one network, base frozen, trained with data
                      augmentation ("treinamento parcial")
  fine_tune           frozen_backbone first (head warm-up), then the top block is unfrozen and
                      retrained with the head at a 10x smaller LR ("sintonia fina"): blocks 11-15
                      (the 192/320-channel stages) + conv_head, the analogue of VGG16's block5

Seed settings kept: head Dense(256, relu) -> Dropout(0.5) -> Dense(classes) (softmax in the loss
instead of one sigmoid unit), RMSprop, frozen base (Keras trainable=False: BatchNorm in inference
mode), Chollet-style augmentation (rotation 40, shifts 0.2, zoom 0.2, horizontal flip), best epoch
on validation. LR: RMSprop 1e-4 for the head stages, 1e-5 for fine-tuning (the seed gives no LR).
Data: shared/data/cats_vs_dogs (train 300 + 300, test 100 + 100); 50 per class carved from train
for validation (fixed split), 250 per class to train on.

CPU shortening (2 cores; the four runs take 141 s, results/seed001/README.md): images 96x96
instead of 150x150 / 224x224, epochs 30 (feature extraction) / 4 (frozen) / 2 + 3 (fine-tune)
instead of 30/100/100, one seed. The frozen part of the base is cut out of backpropagation
(EfficientNet-Lite0's `frozen_blocks`, tl_jax.models.efficientnet), which gives the same updates at a fraction of the cost.

    python -m tl_jax.main --config configs/seed001_catsdogs_effnet.py --workdir workdirs/seed001

Numbers it produced (results/seed001/README.md; commit 1c86d3a, 2026-12-01, 2-core CPU; seed 0),
test accuracy / macro-F1 / loss: feature_extraction 0.875 / 0.875 / 0.715; frozen_backbone
0.845 / 0.843 / 0.732; fine_tune 0.875 / 0.874 / 0.671; fine_tune_bn_frozen 0.935 / 0.935 / 0.212
(best epoch = its last: still improving).
"""

import ml_collections

from tl_jax.config import base_config

EFFNET_WEIGHTS = "shared://data/efficientnet_lite0_imagenet/weights.npz"
TOP_BLOCK = r"^backbone/(blocks_1[1-5]|conv_head|bn1)/"
CHOLLET_AUG = {"rotation": 40.0, "width_shift": 0.2, "height_shift": 0.2, "shear": 0.0,
               "zoom": 0.2, "hflip": True, "vflip": False, "brightness": (1.0, 1.0)}


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.name = "seed001_catsdogs"
  c.data.source = "image_folder"
  c.data.train = "shared://data/cats_vs_dogs/train"
  c.data.test = "shared://data/cats_vs_dogs/test"
  c.data.size = (96, 96)
  c.data.val_per_class = 50
  c.data.split_seed = 0
  c.input.augment = "none"
  c.input.normalize = "efficientnet"
  c.model.name = "efficientnet_lite0"
  c.model.kwargs = ml_collections.ConfigDict({"frozen_blocks": 17})
  c.model.head = "dense256"
  c.optimizer.name = "rmsprop"
  c.optimizer.lr = 1e-4
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.train.num_epochs = 4
  c.train.batch_size = 20
  c.train.eval_batch_size = 100
  c.train.checkpoint_every = 0
  c.transfer.strategy = "frozen_backbone"
  c.transfer.init_kind = "efficientnet_lite0"
  c.transfer.init_from = EFFNET_WEIGHTS

  c.compare = ml_collections.ConfigDict()
  c.compare.source = ml_collections.ConfigDict()
  c.compare.methods = ml_collections.ConfigDict({
      "feature_extraction": {"transfer": {"strategy": "feature_extraction"},
                             "train": {"num_epochs": 30}},
      "frozen_backbone": {"transfer": {"strategy": "frozen_backbone"},
                          "input": {"augment": "keras_seed000", "augment_kwargs": CHOLLET_AUG}},
      "fine_tune": {"transfer": {"strategy": "fine_tune", "warmup_epochs": 2,
                                 "unfreeze": (TOP_BLOCK,), "finetune_lr": 1e-5},
                    "model": {"kwargs": {"frozen_blocks": 11}},
                    "train": {"num_epochs": 3},
                    "input": {"augment": "keras_seed000", "augment_kwargs": CHOLLET_AUG}},
      # as fine_tune, but every BatchNorm (top block included) in inference mode in both stages
      # (transfer.bn='frozen'): VGG16 has no BatchNorm, and live BN statistics on batches of 20
      # hurt above
      "fine_tune_bn_frozen": {"transfer": {"strategy": "fine_tune", "warmup_epochs": 2,
                                           "unfreeze": (TOP_BLOCK,), "finetune_lr": 1e-5,
                                           "bn": "frozen"},
                              "model": {"kwargs": {"frozen_blocks": 11}},
                              "train": {"num_epochs": 3},
                              "input": {"augment": "keras_seed000",
                                        "augment_kwargs": CHOLLET_AUG}},
  })
  c.compare.order = ("feature_extraction", "frozen_backbone", "fine_tune", "fine_tune_bn_frozen")
  c.compare.seeds = (0,)
  c.compare.reference = "feature_extraction"
  return c
