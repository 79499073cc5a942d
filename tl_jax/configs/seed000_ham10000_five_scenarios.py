r"""Seed 000's five scenarios on its own domain: HAM10000 dermatoscopic images (7 diagnoses).

Second target of seed 000 (the first is cats vs dogs, configs/seed000_catsdogs_five_scenarios.py,
whose settings this file reuses: EfficientNet-Lite0 + the seed's CustomResNet head for every
scenario, AdamW 1e-3, early stopping / reduce-LR on validation loss, the seed's augmentation).

Differences from the cats-vs-dogs run, closer to the seed:
  * images 75x100 (H x W; the seed's 100x75 Keras target size for HAM10000, aspect kept);
  * fine-tuning (3, 5) trains every layer after a 2-epoch head warm-up, as the seed's "no layer
    frozen" (the cats-vs-dogs run unfroze only the top block).
Data: shared/data/ham10000 has 60 images per diagnosis (akiec bcc bkl df mel nv vasc, one image
per lesion) and no test split: 15 per class are carved for test and 10 for validation (fixed
split, data.split_seed 0), 35 per class (245) are trained on.

Sources: the seed's same-domain source was a HAM10000 network, i.e. this dataset; there is no
second dermatology dataset offline, so scenarios 2-3 use the cats-vs-dogs run's CIFAR-10 source,
trained again in this workdir with the same settings
(same network, 200 images per class, 5 epochs at 32x32): a small-image source from another
domain, not a same-domain one. Scenarios 4-5 use ImageNet EfficientNet-Lite0.

CPU shortening (2-core CPU): one seed; scratch up to 8 epochs, frozen-base up to 8, fine-tuning
2 + 5 (early stopping patience 3, reduce-LR patience 2).

    python -m tl_jax.main --config configs/seed000_ham10000_five_scenarios.py \
        --workdir workdirs/seed000_ham10000
    python -m tl_jax.scenarios.tables --workdir workdirs/seed000_ham10000 \
        --out results/seed000/ham10000
    python -m tl_jax.scenarios.gradcam_panel --config configs/seed000_ham10000_five_scenarios.py \
        --workdir workdirs/seed000_ham10000 --out results/seed000/ham10000/gradcam_panel.png \
        --n 7 --feature stage5

Numbers it produced (results/seed000/ham10000/README.md; commit 1c86d3a, 2-core CPU, 251 s,
278 s with the tables and Grad-CAM panel; seed 0), test accuracy / macro-F1 on 105 images
(chance 0.143): source (CIFAR-10) 0.198 / 0.184; 1 scratch 0.143 / 0.036; 2 TL CIFAR-10
0.200 / 0.164; 3 FT CIFAR-10 0.152 / 0.136; 4 TL ImageNet 0.429 / 0.392; 5 FT ImageNet
0.295 / 0.262 - only the ImageNet scenarios clearly above chance (see the README).
"""

import pathlib
import runpy

import ml_collections

_CATSDOGS = runpy.run_path(str(pathlib.Path(__file__).with_name(
    "seed000_catsdogs_five_scenarios.py")))


def get_config() -> ml_collections.ConfigDict:
  c = _CATSDOGS["get_config"]()
  c.name = "seed000_ham10000"
  c.data.train = "shared://data/ham10000"
  c.data.test = ""
  c.data.test_per_class = 15
  c.data.val_per_class = 10
  c.data.size = (75, 100)
  c.train.num_epochs = 8
  # The CIFAR-10 source exactly as in the cats-vs-dogs run (32x32, its own test split).
  c.compare.source.data.size = (32, 32)
  c.compare.source.data.test_per_class = 0
  methods = c.compare.methods.to_dict()
  full_ft = {"strategy": "fine_tune", "warmup_epochs": 2, "unfreeze": (), "finetune_lr": 1e-4}
  for name in ("3_ft_cifar10", "5_ft_imagenet"):
    methods[name]["transfer"].update(full_ft)
    methods[name]["model"] = {"kwargs": {"frozen_blocks": 0}}
    methods[name]["train"] = {"num_epochs": 5}
  methods["1_scratch"]["train"] = {"num_epochs": 8}
  del methods["1_scratch_20ep"]
  c.compare.methods = ml_collections.ConfigDict(methods)
  c.compare.order = ("1_scratch", "2_tl_cifar10", "3_ft_cifar10", "4_tl_imagenet", "5_ft_imagenet")
  return c
