r"""CPU mini-run of the thesis protocol: shows the UFM / L2T-ww / L2T-www machinery learning.

Same as configs/l2t_thesis.py:cifar10 (ResNet-32 Tiny-ImageNet source -> VGG-9, 15 pairs, T=2,
beta=0.5, SGD cosine per epoch, meta Adam 1e-4) but shortened for a 2-core CPU: 20 epochs of
batch 50 at LR 0.05 (the thesis: 200 epochs, batch 128, LR 0.1), validation 20/class carved from
the 500/class pool, 3 seeds. N = 10 runs 20 epochs (2 iterations each, 40 in all); `:n50` runs
N = 50 for 6 epochs (10 iterations each, 60 in all): chosen when an L2T iteration still cost ~20
plain steps on this CPU (before VGG-9's im2col fix, results/benchmarks/README.md), so 20 epochs at
N = 50 (3 seeds x 2 L2T methods x 200 iterations) did not fit the session.

    python launch/sweep.py --config configs/l2t_cpu_mini.py --workdir workdirs/l2t_cpu_mini
    python launch/sweep.py --config configs/l2t_cpu_mini.py:n50 --workdir workdirs/l2t_cpu_mini
    python -m tl_jax.analysis.report --runs workdirs/l2t_cpu_mini --out results/l2t_cpu_mini \
        --compare l2t_www,l2t_ww

No numbers are recorded for the current code. The table this config produced on 2026-11-22
(results/l2t_cpu_mini/, withdrawn) came from code before the training engine, which changed how
each seed draws its keys (and the thesis config now uses PyTorch's unbiased BN running
variance), so a rerun gives other numbers. The thesis protocol at N = 10 is in
results/l2t_cifar10_n10/ (launch/l2t_cifar10_n10_cpu.sh).
"""

import ml_collections

from tl_jax.configs import l2t_thesis


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """'' -> N = 10, 20 epochs; 'n50' -> N = 50, 6 epochs."""
  if arg not in (None, "", "n10", "n50"):
    raise ValueError(f"configs/l2t_cpu_mini.py:<arg>: got {arg!r}, allowed: '', 'n10', 'n50'")
  c = l2t_thesis.get_config("cifar10")
  c.name = "l2t_cpu_mini"
  c.data.val_per_class = 20
  c.train.num_epochs = 20
  c.train.batch_size = 50
  c.optimizer.lr = 0.05
  c.train.eval_batch_size = 500
  c.train.checkpoint_every = 5
  c.sweep.n_per_class = (10,)
  c.sweep.seeds = 3
  c.sweep.seeds_per_unit = 1  # seeds per compiled program (0 = all pending seeds of a cell)
  if arg == "n50":
    c.train.num_epochs = 6
    c.sweep.n_per_class = (50,)
  return c
