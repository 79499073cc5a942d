"""The base ml-collections config every experiment config starts from.

Each field is documented where it is read; configs/*.py override what they need. Keeping one
schema means `--config.x=y` overrides and type checks work the same for every experiment.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Defaults: VGG-9 from scratch on the shared CIFAR-10 subset (override per experiment)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.name = "run"

  # Data: `tl_jax.data.sources.load_dataset` spec plus sampling applied by tl_jax.experiment.
  c.data = ml_collections.ConfigDict()
  c.data.source = "npz"
  c.data.train = "shared://data/cifar10/train.npz"
  c.data.val = ""           # '' = carve val_per_class from train
  c.data.test = "shared://data/cifar10/test.npz"
  c.data.size = ml_collections.FieldReference(None, field_type=tuple)
  c.data.channels = 0       # 0 = keep
  c.data.classes = ml_collections.FieldReference(None, field_type=tuple)
  c.data.n_per_class = 0    # 0 = use the whole train pool
  c.data.val_per_class = 0  # carved from train before n_per_class is drawn (disjoint)
  c.data.test_per_class = 0  # carved from train when the source has no test split
  c.data.split_seed = 0      # fixes the val/test carve across runs (n_per_class uses c.seed)
  c.data.root = ""           # image_folder: one subfolder per class
  c.data.name = ""           # tfds: dataset name (with data.split or data.splits, data.data_dir)
  c.data.split = ""          # tfds: one split as the train pool (val/test carved), e.g. 'train'
  c.data.splits = ml_collections.ConfigDict()  # tfds: {'train': 'train[:90%]', 'test': 'test'}
  c.data.data_dir = ""
  c.data.download = False
  c.data.imbalance = ml_collections.FieldReference(None, field_type=tuple)  # (classes, n_minority)
  c.data.cache_dir = ""

  c.input = ml_collections.ConfigDict()
  c.input.augment = "crop_flip"
  c.input.augment_kwargs = ml_collections.ConfigDict()
  c.input.resize = ml_collections.FieldReference(None, field_type=tuple)
  c.input.normalize = "imagenet"

  c.model = ml_collections.ConfigDict()
  c.model.name = "vgg9"
  c.model.kwargs = ml_collections.ConfigDict()
  c.model.head = "default"   # 'default' | 'dense256' | 'custom_resnet' (tl_jax.transfer.heads)
  c.model.head_kwargs = ml_collections.ConfigDict()
  # BatchNorm running variance: 'biased' (flax) | 'unbiased' (PyTorch's n/(n-1); for models
  # imported from or compared with PyTorch code, e.g. the L2T thesis configs)
  c.model.bn_running_var = "biased"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 1e-4
  c.optimizer.decay_type = "coupled"
  c.optimizer.schedule = "cosine"
  c.optimizer.schedule_unit = "epoch"
  c.optimizer.warmup_epochs = 0
  c.optimizer.frozen = ()
  c.optimizer.lr_mults = ()

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 200
  c.train.batch_size = 128
  c.train.eval_batch_size = 256
  c.train.drop_last = True
  c.train.monitor = "val_accuracy"
  c.train.early_stopping = ml_collections.ConfigDict({"patience": -1, "min_delta": 0.0})
  c.train.reduce_lr = ml_collections.ConfigDict({"patience": -1, "factor": 0.1, "min_lr": 0.0})
  c.train.checkpoint_every = 10
  c.train.progress = True
  c.train.label_smoothing = 0.0
  # How the K seeds of one program run: 'vmap' (in parallel), 'map' (one after another inside
  # the compiled program) or 'auto' (map on CPU, vmap on GPU/TPU; results/benchmarks/README.md).
  c.train.seed_loop = "auto"
  # Process-wide XLA:CPU flags, set by the command line before JAX starts (tl_jax.runtime):
  # 'auto' (tl_jax's measured flags), 'none' (XLA's defaults) or '--xla_...' flags.
  c.train.xla_cpu_flags = "auto"

  # Transfer strategy (tl_jax.transfer.strategies) and where the initial weights come from.
  c.transfer = ml_collections.ConfigDict()
  c.transfer.strategy = "scratch"
  c.transfer.init_from = ""      # workdir of a tl_jax run, or a weights file (see init_kind)
  c.transfer.init_kind = "tl_jax"  # tl_jax | l2t_resnet32 | keras_h5 | efficientnet_lite0
  c.transfer.unfreeze = ()       # fine_tune stage 2: regexes of the top blocks to unfreeze
  c.transfer.warmup_epochs = 0   # fine_tune stage 1 (head only) epochs
  c.transfer.finetune_lr = 0.0   # fine_tune stage 2 LR (0 = optimizer.lr / 10)
  # BatchNorm during training (tl_jax.transfer.strategies.BN_MODES): frozen_layers (those of
  # frozen layers in inference mode, the Keras convention) | live (all update) | frozen (none)
  c.transfer.bn = "frozen_layers"

  # Knowledge transfer from a source network (tl_jax.kt): none | ufm | l2t_ww | l2t_www.
  c.kt = ml_collections.ConfigDict()
  c.kt.method = "none"
  c.kt.source_model = "resnet32"
  c.kt.source_num_classes = 200
  c.kt.source_kwargs = ml_collections.ConfigDict()
  c.kt.source_weights = "shared://weights/resnet32_tinyimagenet_l2tww.npz"  # or a tl_jax run dir
  c.kt.source_kind = "l2t_resnet32"
  # 15 pairs: the source's 3 stage outputs (ResNet-32 blocks 4, 9, 14) x the target's 5 pre-pool
  # maps (VGG-9), 'm-n' by feature index or name; 'all' pairs every feature with every feature.
  c.kt.pairs = ",".join(f"{m}-{n}" for m in (4, 9, 14) for n in range(5))
  c.kt.beta = 0.5
  c.kt.inner_steps = 2
  c.kt.meta_lr = 1e-4
  c.kt.meta_weight_decay = 1e-4
  # BN running statistics per L2T iteration: 'reference' = updated at the real step and again at
  # θ_0 (the authors' MetaSGD re-runs the matching forward there) | 'single' = real step only
  c.kt.bn_updates = "reference"
  # look-ahead + meta-gradient in float32 (the reference) or float64 (exact; state stays float32)
  c.kt.meta_dtype = "float32"
  # XLA precision of every conv / matmul of a KT iteration: default | high | highest (on GPUs
  # 'default' may run float32 as TF32, too coarse for the meta-gradient)
  c.kt.matmul_precision = "highest"
  # L2T-www's per-channel h: input 'pooled' (source vector) | 'map' (the channel's own map);
  # init 'identity' (γ ≡ 1: starts as L2T-ww) | 'torch' (PyTorch nn.Linear default)
  c.kt.which_input = "pooled"
  c.kt.which_init = "identity"
  # every k iterations record the float32 vs float64 meta-gradient at the run's state
  # (tl_jax.analysis.meta_precision; reads the state, changes nothing); 0 = off
  c.kt.precision_probe_every = 0
  return c
