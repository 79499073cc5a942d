r"""Seed 000, scenarios 4 and 5 (ImageNet transfer learning / fine-tuning) at 96x96 instead of
32x32: everything else as configs/seed000_catsdogs_five_scenarios.py (EfficientNet-Lite0 +
CustomResNet head, AdamW 1e-3, early stopping / reduce-LR on validation loss, the seed's
augmentation), at most 6 epochs for transfer learning and 2 + 4 for fine-tuning (top block).

Why: at 32x32 (the resolution the CIFAR-10 source and the from-scratch runs could afford on the
2-core CPU) the ImageNet features lose most of their value; this shows the same two scenarios at a
resolution closer to the seed's 100x75. Not comparable row-for-row with scenarios 1-3 (32x32).

    python -m tl_jax.main --config configs/seed000_catsdogs_imagenet96.py \
        --workdir workdirs/seed000_imagenet96

Numbers it produced (results/seed000/README.md section 3; commit 1c86d3a, 2-core CPU, 91 s;
seed 0), test accuracy / macro-F1 / loss: 4_tl_imagenet_96px 0.910 / 0.910 / 0.224;
5_ft_imagenet_96px 0.870 / 0.870 / 0.318.
"""

import runpy
import pathlib

import ml_collections

_FIVE = runpy.run_path(str(pathlib.Path(__file__).with_name("seed000_catsdogs_five_scenarios.py")))


def get_config() -> ml_collections.ConfigDict:
  c = _FIVE["get_config"]()
  c.name = "seed000_catsdogs_imagenet96"
  c.data.size = (96, 96)
  methods = c.compare.methods
  c.compare = ml_collections.ConfigDict()
  c.compare.source = ml_collections.ConfigDict()
  m4 = methods["4_tl_imagenet"].to_dict()
  m4["train"] = {"num_epochs": 6}
  c.compare.methods = ml_collections.ConfigDict({
      "4_tl_imagenet_96px": m4,
      "5_ft_imagenet_96px": methods["5_ft_imagenet"].to_dict(),
  })
  c.compare.order = ("4_tl_imagenet_96px", "5_ft_imagenet_96px")
  c.compare.seeds = (0,)
  c.compare.reference = "4_tl_imagenet_96px"
  return c
