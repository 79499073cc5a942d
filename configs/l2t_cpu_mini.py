r"""CPU mini-run of the thesis protocol: shows the UFM / L2T-ww / L2T-www machinery learning.

Same as configs/l2t_thesis.py:cifar10 (ResNet-32 Tiny-ImageNet source -> VGG-9, 15 pairs, T=2,
beta=0.5, SGD cosine per epoch, meta Adam 1e-4) but shortened for a 2-core CPU: 20 epochs of
batch 50 at LR 0.05 (the thesis: 200 epochs, batch 128, LR 0.1), validation 20/class carved from
the 500/class pool, 3 seeds, N = 10 (N = 50 is in the grid; it did not fit the session's CPU time).

    python launch/sweep.py --config configs/l2t_cpu_mini.py --workdir workdirs/l2t_cpu_mini
    python -m tl_jax.analysis.report --runs workdirs/l2t_cpu_mini --out results/l2t_cpu_mini

Numbers: results/l2t_cpu_mini/README.md.
"""

import ml_collections

from configs import l2t_thesis


def get_config() -> ml_collections.ConfigDict:
  c = l2t_thesis.get_config("cifar10")
  c.name = "l2t_cpu_mini"
  c.data.val_per_class = 20
  c.train.num_epochs = 20
  c.train.batch_size = 50
  c.optimizer.lr = 0.05
  c.train.eval_batch_size = 500
  c.train.checkpoint_every = 5
  c.train.progress = False
  c.sweep.n_per_class = (10, 50)
  c.sweep.seeds = 3
  return c
