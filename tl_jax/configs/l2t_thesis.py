r"""The L2T-www thesis protocol (Tables 1-4): ResNet-32 (Tiny ImageNet) -> VGG-9, N per class.

Source: L2T-ww's ResNet-32 trained on Tiny ImageNet (shared://weights). Target: VGG-9 at 32x32,
ImageNet mean/std, pad-4 crop + flip; SGD 0.1, momentum 0.9, coupled weight decay 1e-4, cosine
per epoch, batch 128, 200 epochs; 15 pairs (source stage outputs x the 5 target pre-pool maps);
T = 2; beta = 0.5; meta Adam 1e-4 (coupled decay 1e-4). Test accuracy at the best-validation
epoch. Methods: scratch, ufm, l2t_ww, l2t_www. As the authors' PyTorch code computes them: BN
running statistics updated twice per L2T iteration (kt.bn_updates='reference', the default) with
PyTorch's unbiased running variance (model.bn_running_var='unbiased'); the meta-gradient in float32
at matmul precision 'highest' (kt.meta_dtype, kt.matmul_precision; see tl_jax.kt.bilevel).

Arguments (`--config configs/l2t_thesis.py:DATASET`): cifar10 (default; N in 10,30,50,100,150),
cifar100 (N in 5,10,20,30,50), stl10 (N in 5,10,30,50,100; needs a TFDS stl10 prepared as
array_record in data.data_dir), cifar10_imbalanced (Table 4: nine classes with 100, class 3
with 10).

One cell:
    python -m tl_jax.main --config configs/l2t_thesis.py:cifar10 --workdir /runs/x \
        --config.kt.method=l2t_www --config.data.n_per_class=10 --config.seed=0
The whole table (n = 30 seeds per cell) on a GPU host:
    bash launch/gpu_host.sh python launch/sweep.py --config configs/l2t_thesis.py:cifar10 \
        --workdir /runs/l2t_cifar10
    python -m tl_jax.analysis.report --runs /runs/l2t_cifar10 --out results/l2t_cifar10
No GPU was lent to the sessions that wrote this, so no full-table numbers exist yet; the N = 10
column at the full protocol runs on a CPU, one seed at a time (launch/l2t_cifar10_n10_cpu.sh,
results/l2t_cifar10_n10/).
"""

import ml_collections

from tl_jax.config import base_config

N_PER_CLASS = {"cifar10": (10, 30, 50, 100, 150), "cifar100": (5, 10, 20, 30, 50),
               "stl10": (5, 10, 30, 50, 100), "cifar10_imbalanced": (100,)}


def get_config(dataset: str = "cifar10") -> ml_collections.ConfigDict:
  if dataset not in N_PER_CLASS:
    raise ValueError(f"dataset: got {dataset!r}; allowed: {', '.join(N_PER_CLASS)}")
  c = base_config()
  c.name = f"l2t_{dataset}"
  if dataset.startswith("cifar10"):
    c.data.train = "shared://data/cifar10/train.npz"   # 500/class pool
    c.data.test = "shared://data/cifar10/test.npz"
    c.data.val_per_class = 50                            # held out from the pool, fixed
  elif dataset == "cifar100":
    c.data.train = "shared://data/cifar100/train.npz"  # 100/class pool
    c.data.val = "shared://data/cifar100/val.npz"
    c.data.test = "shared://data/cifar100/test.npz"
  else:
    c.data.source = "tfds"
    c.data.train = c.data.test = ""
    c.data.name = "stl10"
    c.data.splits = ml_collections.ConfigDict({"train": "train", "test": "test"})
    c.data.val_per_class = 50
    c.input.resize = (32, 32)
  if dataset == "cifar10_imbalanced":
    c.data.imbalance = ((3,), 10)
  c.data.n_per_class = N_PER_CLASS[dataset][0]
  c.input.augment = "crop_flip"
  c.input.normalize = "imagenet"
  c.model.name = "vgg9"
  c.model.bn_running_var = "unbiased"  # the reference is PyTorch code (unbiased running var)
  # every layer of the target trains: all BatchNorms update, as in the reference (model.train())
  c.transfer.bn = "live"
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.decay_type = "coupled"
  c.optimizer.schedule = "cosine"
  c.optimizer.schedule_unit = "epoch"
  c.train.num_epochs = 200
  c.train.batch_size = 128
  c.train.drop_last = False
  c.train.checkpoint_every = 10
  c.kt.method = "l2t_ww"
  c.kt.beta = 0.5
  c.kt.inner_steps = 2
  c.kt.meta_lr = 1e-4
  c.kt.meta_weight_decay = 1e-4

  c.sweep = ml_collections.ConfigDict()
  c.sweep.methods = ("scratch", "ufm", "l2t_ww", "l2t_www")
  c.sweep.n_per_class = N_PER_CLASS[dataset]
  c.sweep.seeds = 30
  c.sweep.seeds_per_unit = 0  # seeds per compiled program (0 = all pending seeds of a cell)
  return c
