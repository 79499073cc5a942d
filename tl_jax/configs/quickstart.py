r"""Embedded default: LeNet-5 transfer on scikit-learn digits (no download, minutes on 2 cores).

Source: LeNet-5 trained on digits 0-4 (all ~900 images, 8x8 upsampled to 32x32).
Target: digits 5-9 with 10 labelled images per class (50 in all); validation 10/class and test
50/class carved from the rest (fixed split). Methods compared over `compare.seeds`:
from scratch, frozen backbone + new head, fine-tuning (head warm-up, then all layers at lr/10),
full fine-tuning and feature extraction.

    bash launch/quickstart.sh                      # = python -m tl_jax.main \
        --config configs/quickstart.py --workdir /tmp/tl_jax_quickstart

Numbers it produced are recorded in results/quickstart/README.md (command, commit, hardware).
"""

import ml_collections

from tl_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.name = "quickstart"
  c.data.source = "digits"
  c.data.train = ""
  c.data.test = ""
  c.data.size = (32, 32)
  c.data.classes = (5, 6, 7, 8, 9)
  c.data.test_per_class = 50
  c.data.val_per_class = 10
  c.data.n_per_class = 10
  c.input.augment = "none"
  c.input.normalize = "zero_one"
  c.model.name = "lenet5"
  c.model.kwargs = ml_collections.ConfigDict({"variant": "modern"})
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.train.num_epochs = 30
  c.train.batch_size = 10
  c.train.eval_batch_size = 250
  c.train.checkpoint_every = 0
  c.train.progress = False

  c.compare = ml_collections.ConfigDict()
  c.compare.source = ml_collections.ConfigDict({
      "data": {"classes": (0, 1, 2, 3, 4), "n_per_class": 0, "test_per_class": 30,
               "val_per_class": 20},
      "train": {"batch_size": 64, "num_epochs": 15}})
  strat = lambda s, **kw: {"transfer": {"strategy": s}, **kw}  # noqa: E731
  sgd = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
         "decay_type": "coupled"}
  kt = {"source_model": "lenet5", "source_num_classes": 5, "source_kind": "tl_jax",
        "source_weights": "",  # = the comparison's source run
        "source_kwargs": {"variant": "modern"},
        "pairs": "block1-block1,block2-block2,block1-block2,block2-block1"}
  c.compare.methods = ml_collections.ConfigDict({
      "scratch": strat("scratch"),
      "frozen_backbone": strat("frozen_backbone"),
      "fine_tune": {"transfer": {"strategy": "fine_tune", "warmup_epochs": 8}},
      "full_fine_tune": strat("full_fine_tune"),
      "feature_extraction": strat("feature_extraction", model={"head": "dense256"}),
      # Knowledge transfer from the digits-0-4 LeNet (tl_jax.kt): momentum SGD as in L2T-ww, so
      # they are compared with scratch trained by the same optimiser.
      "scratch_sgd": strat("scratch", optimizer=sgd),
      "l2t_ww": {"kt": dict(kt, method="l2t_ww"), "optimizer": sgd},
      "l2t_www": {"kt": dict(kt, method="l2t_www"), "optimizer": sgd},
  })
  c.compare.order = ("scratch", "frozen_backbone", "fine_tune", "full_fine_tune",
                     "feature_extraction", "scratch_sgd", "l2t_ww", "l2t_www")
  c.compare.seeds = (0, 1, 2)
  c.compare.reference = "scratch"
  c.compare.references = ml_collections.ConfigDict({"l2t_ww": "scratch_sgd",
                                                     "l2t_www": "scratch_sgd"})
  return c
