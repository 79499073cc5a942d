"""The one orchestrator of a run: `run_seeds(config, seeds, workdirs)` trains K seeds of one
configuration as one compiled program; `train_and_evaluate(config, workdir)` is K = 1.

Data (load; each seed draws its own N per class; the validation / test carve is fixed by
data.split_seed) -> model (+ head) -> each seed's initial weights (scratch, or the source's
grafted in) -> the method's learner and segments (tl_jax.engine.learners; a two-stage method is
two segments) -> `tl_jax.engine.fit` -> the best-on-validation variables evaluated on every split
-> per seed: summary.json, metrics.jsonl, history.json, weights, curves and a confusion matrix.

Every method family goes through here: supervised strategies, feature extraction (a learner on
cached backbone features) and UFM / L2T-ww / L2T-www (config.kt.method). A config field that the
chosen method does not honour is an error (`check_honoured`), never silently ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tl_jax import identity, models, validate
from tl_jax.analysis import traces
from tl_jax.config import base_config
from tl_jax.data import augment, checks, sampling
from tl_jax.data.sources import load_dataset
from tl_jax.data.types import ArrayDataset, DataSplits
from tl_jax.engine import fit as engine
from tl_jax.engine.learners import FeatureMatchingLearner, FlatHead, SupervisedLearner
from tl_jax.errors import ConfigError, check_choice
from tl_jax.kt import matching
from tl_jax.kt.bilevel import KnowledgeTransfer, KTConfig, METHODS as KT_METHODS
from tl_jax.kt.pairs import feature_shapes, parse_pairs
from tl_jax.train import jsonl, masks, optim
from tl_jax.transfer import features, heads, init as tinit, strategies

SUMMARY_FILE = "summary.json"


def check_workdir(workdir: str | os.PathLike) -> pathlib.Path:
  """Creates the workdir; a clear error when it cannot be written."""
  p = pathlib.Path(workdir).expanduser().absolute()
  try:
    p.mkdir(parents=True, exist_ok=True)
    probe = p / ".write_probe"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ConfigError("workdir", str(workdir), hint=f"not writable: {e.strerror}") from e
  return p


# ----------------------------------------------------------------------------- config checks

# Fields honoured only by some methods: (field, methods that read it). A field set away from
# its base_config() default under another method is an error, never silently ignored.
_KT = ("ufm", "l2t_ww", "l2t_www")
_HONOURED = (
    ("transfer.unfreeze", ("fine_tune",)),
    ("transfer.warmup_epochs", ("fine_tune",)),
    ("transfer.finetune_lr", ("fine_tune",)),
    ("kt.beta", _KT),
    ("kt.pairs", _KT),
    ("kt.source_model", _KT),
    ("kt.source_num_classes", _KT),
    ("kt.source_weights", _KT),
    ("kt.source_kind", _KT),
    ("kt.source_kwargs", _KT),
    ("kt.inner_steps", ("l2t_ww", "l2t_www")),
    ("kt.meta_lr", ("l2t_ww", "l2t_www")),
    ("kt.meta_weight_decay", ("l2t_ww", "l2t_www")),
    ("kt.bn_updates", ("l2t_ww", "l2t_www")),
    ("kt.meta_dtype", ("l2t_ww", "l2t_www")),
    ("kt.matmul_precision", _KT),
    ("kt.which_input", ("l2t_www",)),
    ("kt.which_init", ("l2t_www",)),
    ("kt.precision_probe_every", ("l2t_ww", "l2t_www")),
)


def method_name(config: ml_collections.ConfigDict) -> str:
  return config.kt.method if config.kt.method != "none" else config.transfer.strategy


def _get_field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node: Any = config
  for p in dotted.split("."):
    node = node[p]
  return node.to_dict() if isinstance(node, ml_collections.ConfigDict) else node


def check_honoured(config: ml_collections.ConfigDict) -> None:
  """ConfigError for a field the chosen method would not read (see `_HONOURED`)."""
  check_choice("kt.method", config.kt.method, ("none",) + KT_METHODS[1:])
  check_choice("transfer.strategy", config.transfer.strategy, strategies.STRATEGIES)
  method = method_name(config)
  base = base_config()
  for field, methods in _HONOURED:
    value, default = _get_field(config, field), _get_field(base, field)
    if isinstance(value, list):
      value = tuple(value)
    if isinstance(default, list):
      default = tuple(default)
    if method not in methods and value != default:
      raise ConfigError(field, value, hint=f"method {method!r} does not use it (only "
                        f"{', '.join(methods)}); leave it at {default!r}")
  if config.kt.method != "none":
    if config.transfer.strategy not in ("scratch", "full_fine_tune"):
      raise ConfigError("transfer.strategy", config.transfer.strategy,
                        ["scratch", "full_fine_tune"],
                        hint=f"kt.method {config.kt.method!r} trains the whole target")
    if float(config.train.label_smoothing):
      raise ConfigError("train.label_smoothing", config.train.label_smoothing, [0.0],
                        hint=f"kt.method {config.kt.method!r} matches the authors' plain CE")
  if config.transfer.strategy == "feature_extraction":
    for field, allowed in (("input.augment", ("none",)),
                           ("transfer.bn", ("frozen_layers", "frozen")),
                           ("model.bn_running_var", ("biased",))):
      if _get_field(config, field) not in allowed:
        raise ConfigError(field, _get_field(config, field), list(allowed),
                          hint="feature_extraction caches the backbone's features once, in "
                          "inference mode; the field would be ignored")
  if config.transfer.strategy == "scratch" and (config.transfer.init_from or
                                                config.transfer.init_kind != "tl_jax"):
    raise ConfigError("transfer.init_from", config.transfer.init_from or
                      config.transfer.init_kind, hint="strategy 'scratch' starts from a fresh "
                      "init; choose a transfer strategy to use a source")
  if config.model.head == "default" and config.model.head_kwargs.to_dict():
    raise ConfigError("model.head_kwargs", config.model.head_kwargs.to_dict(),
                      hint="model.head='default' (the registry's head) takes no head_kwargs")


def fit_config(config: ml_collections.ConfigDict, batch_size: int) -> engine.FitConfig:
  """The engine's view of config.train (batch clamped to the training sample)."""
  t = config.train
  loop = t.get("seed_loop", "auto")
  return engine.FitConfig(
      batch_size=batch_size, eval_batch_size=int(t.eval_batch_size),
      drop_last=bool(t.drop_last), monitor=str(t.monitor),
      patience=int(t.early_stopping.patience), min_delta=float(t.early_stopping.min_delta),
      rl_patience=int(t.reduce_lr.patience), rl_factor=float(t.reduce_lr.factor),
      rl_min_lr=float(t.reduce_lr.min_lr), checkpoint_every=int(t.checkpoint_every or 0),
      seed_loop=engine.default_seed_loop() if loop == "auto" else str(loop),
      progress=bool(t.progress))


# ----------------------------------------------------------------------------- data

def data_spec(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The loader spec of config.data without its unset (0 / '' / None) fields."""
  d = config.data.to_dict()
  spec = {k: v for k, v in d.items() if v not in (None, "", 0, (), {})
          and k not in ("n_per_class", "imbalance", "val_per_class", "split_seed")}
  if d["val_per_class"] and not d["val"]:
    spec["val_per_class"] = d["val_per_class"]
  spec["seed"] = d.get("split_seed", 0) or 0
  return spec


def load_splits(config: ml_collections.ConfigDict) -> DataSplits:
  """The train pool, the fixed validation carve and the test split."""
  loaded = load_dataset(data_spec(config))
  splits = loaded if isinstance(loaded, DataSplits) else DataSplits(loaded)
  if splits.val is None:
    raise ConfigError("data.val_per_class", config.data.val_per_class,
                      hint="a validation split is needed (early stopping / best epoch never use "
                      "test): give data.val or data.val_per_class > 0")
  names = splits.train.class_names
  checks.check_splits(splits.train, splits.val, splits.test,
                      named_classes=names != tuple(str(i) for i in range(len(names))))
  return splits


def train_draw(config: ml_collections.ConfigDict, pool: ArrayDataset, seed: int) -> np.ndarray:
  """Indices into the pool of seed `seed`'s training sample (N per class, or imbalanced)."""
  n = int(config.data.n_per_class)
  if config.data.imbalance:
    minority, n_min = config.data.imbalance
    if not n:
      raise ConfigError("data.n_per_class", n, hint="data.imbalance needs the majority size")
    return sampling.imbalanced(pool.labels, (tuple(minority), int(n_min), n), int(seed))
  if n:
    return sampling.sample_per_class(pool.labels, n, int(seed))
  return np.arange(len(pool))


def prepare_data(config: ml_collections.ConfigDict) -> DataSplits:
  """The splits with config.seed's training sample (what one seed trains on)."""
  s = load_splits(config)
  return DataSplits(s.train.subset(train_draw(config, s.train, int(config.seed))), s.val, s.test)


# ----------------------------------------------------------------------------- model

def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """(model, head regex): the registry model, or a headless backbone + a seed-document head."""
  name = config.model.name
  kwargs = config.model.kwargs.to_dict()
  if config.model.head == "default":
    return models.create_model(name, num_classes, **kwargs), models.head_regex(name)
  backbone = models.create_model(name, None, **kwargs)
  head = heads.make_head(config.model.head, num_classes, **config.model.head_kwargs.to_dict())
  return heads.Classifier(backbone, head), r"^head/"


def _backbone_of(model):
  return model.backbone if isinstance(model, heads.Classifier) else model.clone(num_classes=None)


def load_source_variables(config: ml_collections.ConfigDict, model) -> dict[str, Any] | None:
  """The transfer source's variables (None for scratch / no source)."""
  t = config.transfer
  if t.strategy == "scratch" or (not t.init_from and t.init_kind == "tl_jax"):
    return None
  return tinit.load_source(t.init_kind, t.init_from, backbone=_backbone_of(model))


def init_variables(config, model, image_shape, rng, source: dict[str, Any] | None = None
                   ) -> tuple[dict[str, Any], list[str]]:
  """Fresh variables from `rng`, then the source's weights grafted in (all but the head)."""
  x = np.zeros((1,) + tuple(image_shape), np.float32)
  variables = dict(jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(rng))
  if source is None:
    return variables, []
  head_prefix = ("head/",) if isinstance(model, heads.Classifier) else (
      type(model).head_name + "/",)
  return tinit.graft(variables, source, skip_prefixes=head_prefix)


def whole_model_variables(model: Any, backbone_variables: dict[str, Any],
                          head_variables: dict[str, Any]) -> dict[str, Any]:
  """A feature-extraction run's result as the variables of the whole `model` (what
  `build_model` builds), so evaluation, Grad-CAM and `transfer.init_from` use it like any run:
  the backbone's variables as extracted, the trained head in the model's head slot (the linear
  head's one Dense becomes the model's own head layer; a seed-document head is the Classifier's
  'head')."""
  params = dict(backbone_variables["params"])
  head = dict(head_variables["params"])
  if isinstance(model, heads.Classifier):
    params["head"] = head
  else:
    params[type(model).head_name] = head["out"]
  out = {"params": params}
  if backbone_variables.get("batch_stats"):
    out["batch_stats"] = backbone_variables["batch_stats"]
  return out


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


# ----------------------------------------------------------------------------- methods

def _check_unfreeze(config, params) -> None:
  """Every `transfer.unfreeze` regex must match a parameter: one that matches none would make
  stage 2 of fine-tuning silently train the head only."""
  if config.transfer.strategy != "fine_tune":
    return
  names = [masks.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for rx in config.transfer.unfreeze:
    try:
      hit = any(re.search(rx, n) for n in names)
    except re.error as e:
      raise ConfigError("transfer.unfreeze", rx, hint=f"not a regex: {e}") from None
    if not hit:
      raise ConfigError("transfer.unfreeze", rx, "regexes matching parameter names of "
                        f"{config.model.name}, e.g. {', '.join(names[:3])}",
                        hint="it matches no parameter")


def _supervised_segments(config, model, head_rx, params, spe: int) -> list[engine.Segment]:
  _check_unfreeze(config, params)
  segs = []
  aug, pre = augment.make_augment(config.input), augment.make_preprocess(config.input)
  for stage in strategies.make_stages(config, head_rx):
    tx = optim.make_optimizer(stage.optimizer, spe, stage.num_epochs, params)
    frozen = masks.frozen_mask(params, tuple(stage.optimizer.frozen))
    bn_frozen = (masks.frozen_modules(params, frozen) if stage.bn == "frozen_layers"
                 else stage.bn == "frozen")
    learner = SupervisedLearner(model, tx, aug, pre,
                                label_smoothing=float(config.train.label_smoothing),
                                bn_frozen=bn_frozen,
                                trainable=jax.tree.map(lambda f: not f, frozen),
                                bn_running_var=str(config.model.bn_running_var))
    logging.info("stage %s: %d epochs; %s", stage.name, stage.num_epochs,
                 masks.describe_trainable(params, tuple(stage.optimizer.frozen)))
    segs.append(engine.Segment(stage.name, int(stage.num_epochs), learner,
                               float(stage.optimizer.lr),
                               optim.make_lr_fn(stage.optimizer, spe, stage.num_epochs)))
  return segs


def _kt_setup(config, target, t_vars, image_shape, spe: int):
  """(segment, source variables, KnowledgeTransfer) of a UFM / L2T-ww / L2T-www run."""
  k = config.kt
  kcfg = KTConfig(method=k.method, beta=float(k.beta), inner_steps=int(k.inner_steps),
                  meta_lr=float(k.meta_lr), meta_weight_decay=float(k.meta_weight_decay),
                  # the target trains whole: 'frozen_layers' freezes no BatchNorm here
                  bn_frozen=config.transfer.bn == "frozen", bn_updates=str(k.bn_updates),
                  bn_running_var=str(config.model.bn_running_var),
                  meta_dtype=str(k.meta_dtype), matmul_precision=str(k.matmul_precision),
                  which_input=str(k.which_input), which_init=str(k.which_init))
  source = models.create_model(k.source_model, int(k.source_num_classes),
                               **k.source_kwargs.to_dict())
  s_vars = tinit.load_source(k.source_kind, k.source_weights, backbone=source)
  pairs = parse_pairs(k.pairs, feature_shapes(source, s_vars, image_shape),
                      feature_shapes(target, t_vars, image_shape))
  logging.info("kt %s: %d pairs %s", k.method, len(pairs), [p.key for p in pairs])
  epochs = int(config.train.num_epochs)
  regressors = jax.eval_shape(lambda: matching.init_regressors(pairs, jax.random.PRNGKey(0)))
  tx = optim.make_optimizer(config.optimizer, spe, epochs, t_vars["params"],
                            extra_params=regressors)
  schedule = optim.make_schedule(config.optimizer, spe, epochs)
  kt = KnowledgeTransfer(source, target, pairs, kcfg, schedule,
                         preprocess=augment.make_augment(config.input), tx=tx)
  learner = FeatureMatchingLearner(kt, augment.make_preprocess(config.input))
  seg = engine.Segment("train", epochs, learner, float(config.optimizer.lr),
                       optim.make_lr_fn(config.optimizer, spe, epochs))
  return seg, s_vars, kt


def _chain(*hooks):
  def run(state, record):
    for h in hooks:
      h(state, record)
  return run


def group_checkpoint_dir(seeds: Sequence[int], workdirs: Sequence[pathlib.Path]) -> pathlib.Path:
  """Where a K-seed program keeps its checkpoints: the run's own workdir for K = 1, else a
  folder named for the seed group beside the seeds' workdirs."""
  if len(seeds) == 1:
    return workdirs[0] / "checkpoints"
  tag = "-".join(str(s) for s in seeds)
  if len(seeds) > 8:
    tag = f"{seeds[0]}-{seeds[-1]}_k{len(seeds)}_" + hashlib.sha1(tag.encode()).hexdigest()[:8]
  return workdirs[0].parent / f"checkpoints_seeds-{tag}"


def _seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.seed = int(seed)
  return c


IDENTITY_FILE = "identity.json"


def _check_checkpoint_identity(ckpt_dir: pathlib.Path, config: ml_collections.ConfigDict,
                               overwrite: bool) -> None:
  """A checkpoint folder records the cell hash of the config that wrote it; one of another
  config is an error (or, with overwrite, removed) rather than restored."""
  rec = ckpt_dir / IDENTITY_FILE
  want = identity.cell_hash(config)
  if ckpt_dir.is_dir() and any(p.name != IDENTITY_FILE for p in ckpt_dir.iterdir()):
    have = json.loads(rec.read_text()).get("cell_hash") if rec.is_file() else None
    if have is not None and have != want:
      if not overwrite:
        raise ConfigError("workdir", str(ckpt_dir), hint="holds checkpoints of another config "
                          f"(cell hash {have}, this config {want}); pass --overwrite to "
                          "replace them, or use a new workdir")
      shutil.rmtree(ckpt_dir)
  ckpt_dir.mkdir(parents=True, exist_ok=True)
  jsonl.write_json_atomic(rec, {"cell_hash": want})


def run_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int],
              workdirs: Sequence[str | os.PathLike], overwrite: bool = False
              ) -> list[dict[str, Any]]:
  """Trains every seed of `config` in one compiled program; writes and returns the summaries.

  `config.seed` is ignored: seed i of `seeds` writes to `workdirs[i]`. Seed s gives the same
  numbers alone or among others, under vmap or lax.map, on one device or several. A workdir
  holding a run of another config is an error naming the differing fields (`overwrite`
  replaces it); a workdir in use by another process is an error (tl_jax.identity).
  """
  t0 = time.time()
  seeds = [int(s) for s in seeds]
  if len(seeds) != len(workdirs) or not seeds:
    raise ConfigError("seeds", seeds, hint=f"one workdir per seed ({len(workdirs)} given)")
  if len(set(seeds)) != len(seeds):
    raise ConfigError("seeds", seeds, hint="duplicates")
  validate.check_config(config)
  check_honoured(config)
  wds = [check_workdir(w) for w in workdirs]
  with contextlib.ExitStack() as stack:
    for wd in wds:
      stack.enter_context(identity.WorkdirLock(wd))
    for s, wd in zip(seeds, wds):
      identity.check_workdir(wd, _seed_config(config, s), overwrite)
    return _run_seeds(config, seeds, wds, t0, overwrite)


def _run_seeds(config, seeds, wds, t0, overwrite) -> list[dict[str, Any]]:
  for s, wd in zip(seeds, wds):
    c = _seed_config(config, s)
    jsonl.write_text_atomic(wd / "config.json", c.to_json_best_effort(indent=2, sort_keys=True)
                            + "\n")
  splits = load_splits(config)
  pool, val, test = splits.train, splits.val, splits.test
  num_classes = splits.num_classes
  train_idx = np.stack([train_draw(config, pool, s) for s in seeds]).astype(np.int32)
  n_train = train_idx.shape[1]
  bs = min(int(config.train.batch_size), n_train)
  if int(config.train.batch_size) <= 0:
    raise ConfigError("train.batch_size", config.train.batch_size, "a positive int")
  cfg = fit_config(config, bs)
  spe = engine.steps_per_epoch(n_train, bs, cfg.drop_last)
  parts = [pool, val] + ([test] if test is not None else [])
  offsets = np.cumsum([0] + [len(p) for p in parts])
  split_idx = {"val": np.arange(offsets[1], offsets[2])}
  if test is not None:
    split_idx["test"] = np.arange(offsets[2], offsets[3])
  images = np.concatenate([p.images for p in parts])
  labels = np.concatenate([p.labels for p in parts]).astype(np.int32)

  model, head_rx = build_model(config, num_classes)
  image_shape = pool.image_shape
  if config.input.resize:
    image_shape = tuple(config.input.resize) + image_shape[-1:]
  source = load_source_variables(config, model)
  per_seed = [init_variables(config, model, image_shape, engine.seed_key(s, "init"), source)
              for s in seeds]
  copied = per_seed[0][1]
  variables = _stack([v for v, _ in per_seed])
  consts, kt, eval_model = None, None, model
  strategy = config.transfer.strategy
  if config.kt.method != "none":
    seg, consts, kt = _kt_setup(config, model, per_seed[0][0], image_shape, spe)
    segments = [seg]
  elif strategy == "feature_extraction":
    pre = augment.make_preprocess(config.input)
    feats = features.extract(model, per_seed[0][0], images, pre)
    logging.info("cached features: %s", feats.shape)
    images = feats[:, None, None, :].astype(np.float32)
    head_name = config.model.head if config.model.head != "default" else "linear"
    head = heads.make_head(head_name, num_classes, **config.model.head_kwargs.to_dict())
    eval_model = FlatHead(head)
    x = jnp.zeros((1, feats.shape[1]))
    variables = _stack([dict(head.init({"params": k, "dropout": k}, x, train=False))
                        for k in (engine.seed_key(s, "init") for s in seeds)])
    opt = ml_collections.ConfigDict(config.optimizer.to_dict())
    tx = optim.make_optimizer(opt, spe, int(config.train.num_epochs),
                              jax.tree.map(lambda x: x[0], variables["params"]))
    learner = SupervisedLearner(eval_model, tx, lambda key, x: x, lambda x: x,
                                label_smoothing=float(config.train.label_smoothing))
    segments = [engine.Segment("head", int(config.train.num_epochs), learner, float(opt.lr),
                               optim.make_lr_fn(opt, spe, int(config.train.num_epochs)))]
  else:
    segments = _supervised_segments(config, model, head_rx, per_seed[0][0]["params"], spe)

  recorders = [traces.TraceRecorder(wd) for wd in wds]
  if kt is not None:
    probe = augment.make_preprocess(config.input)(jnp.asarray(val.images[:16]))
    meta_fn = jax.jit(lambda st, im: kt.meta_outputs(st, im, consts))
    recorders = [traces.TraceRecorder(wd, meta_fn, probe, kt.config.method) for wd in wds]
    every = int(config.kt.precision_probe_every)
    if every > 0:
      from tl_jax.analysis.meta_precision import MetaPrecisionProbe
      probes = [MetaPrecisionProbe(wd, kt, consts, images, labels, train_idx[i], s, cfg.batch_size,
                                   cfg.drop_last, every) for i, (s, wd) in enumerate(zip(seeds, wds))]
      recorders = [_chain(r, p) for r, p in zip(recorders, probes)]
  data = engine.SeedData(images, labels, train_idx, split_idx["val"], num_classes)
  ckpt_dir = group_checkpoint_dir(seeds, wds)
  if cfg.checkpoint_every > 0:
    _check_checkpoint_identity(ckpt_dir, config, overwrite)
  logging.info("%s: %d seed(s) %s as one program (%s)", method_name(config), len(seeds), seeds,
               cfg.seed_loop)
  res = engine.fit(segments, data, seeds, variables, cfg, wds, consts=consts,
                   checkpoint_dir=ckpt_dir,
                   on_epoch_end=lambda i, st, r: recorders[i](st, r),
                   desc=f"{method_name(config)} x{len(seeds)}")
  learner = segments[-1].learner
  results = {"train": engine.evaluate(learner, res.variables, images, labels, train_idx,
                                      num_classes, cfg.eval_batch_size, cfg.seed_loop)}
  for name, idx in split_idx.items():
    results[name] = engine.evaluate(learner, res.variables, images, labels, idx, num_classes,
                                    cfg.eval_batch_size, cfg.seed_loop)
  out = []
  final = jax.device_get(res.variables)
  for i, (s, wd) in enumerate(zip(seeds, wds)):
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed = s
    v = jax.tree.map(lambda x, i=i: x[i], final)
    if strategy == "feature_extraction":  # saved as the whole model: backbone + trained head
      v = whole_model_variables(model, jax.device_get(per_seed[0][0]), v)  # the extractor
    if not jax.tree.leaves(v.get("batch_stats", {})):
      v.pop("batch_stats", None)
    tinit.save_variables(wd, v, {"model": config.model.to_dict(), "num_classes": num_classes,
                                 "class_names": list(splits.class_names)})
    res_i = {n: r[i] for n, r in results.items()}
    summary = run_summary(c, res_i, res.histories[i], copied, (time.time() - t0) / len(seeds),
                          splits.class_names, n_train)
    summary.update({"seeds_in_program": len(seeds), "seed_loop": cfg.seed_loop,
                    "config_hash": identity.config_hash(c), "cell_hash": identity.cell_hash(c)})
    jsonl.write_json_atomic(wd / "history.json", res.histories[i])
    jsonl.write_json_atomic(wd / SUMMARY_FILE, summary)
    _figures(wd, res.histories[i], res_i, splits.class_names, summary)
    out.append(summary)
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       overwrite: bool = False) -> dict:
  """Runs `config` (its `seed`) in `workdir`; returns (and writes) the summary with test metrics.
  The run's full config is written first to `workdir/config.json`. Rerun in a finished workdir
  of the same config it resumes from the last checkpoint; of another config it is an error
  unless `overwrite` (tl_jax.identity)."""
  return run_seeds(config, [int(config.seed)], [workdir], overwrite)[0]


def run_summary(config, results, history, copied, wall_s, class_names, train_size
                ) -> dict[str, Any]:
  """The per-run record tl_jax.analysis.report aggregates (one file per run)."""
  best = [h for h in history if h.get("is_best")]
  s = {
      "name": config.name, "method": method_name(config), "model": config.model.name,
      "dataset": str(config.data.get("train") or config.data.get("root") or config.data.source),
      "n_per_class": int(config.data.n_per_class), "seed": int(config.seed),
      "strategy": config.transfer.strategy, "num_classes": len(class_names),
      "class_names": [str(c) for c in class_names],
      "train_size": int(train_size), "best_epoch": best[-1]["epoch"] if best else None,
      "epochs_run": len(history), "wall_s": wall_s, "num_copied_from_source": len(copied),
      "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
      # in force when this process started its backend (tl_jax.runtime)
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  for split, m in results.items():
    for k in ("accuracy", "loss", "macro_f1", "macro_recall"):
      s[f"{split}_{k}"] = float(m[k])
    s[f"{split}_per_class_accuracy"] = [float(v) for v in m["per_class_accuracy"]]
    s[f"{split}_confusion_matrix"] = np.asarray(m["confusion_matrix"]).tolist()
  if "test" in results:
    s["confusion_matrix"] = s["test_confusion_matrix"]
  s["wall_time_s"] = wall_s
  if config.data.imbalance and "test" in results:
    minority = [int(c) for c in config.data.imbalance[0]]
    pca = np.asarray(results["test"]["per_class_accuracy"], np.float64)
    s["minority_accuracy"] = float(pca[minority].mean())
  return s


def _figures(wd: pathlib.Path, history, results, class_names,
             summary: dict[str, Any] | None = None) -> None:
  """curves.png and confusion_matrix.png of one run, titled from its summary (config name,
  data set, method, N, seed): a PNG opened on its own must say which run it shows. The class
  names are the data's (splits.class_names, the same for every method family)."""
  try:
    from tl_jax.analysis import plots
  except ImportError:  # plotting is optional for headless library use
    return
  s = summary or {}
  title = plots.run_title(s.get("name", ""), s.get("dataset", ""), s.get("method", ""),
                          s.get("n_per_class"), s.get("seed"))
  if history:
    plots.plot_training_curves(history, wd / "curves.png", title=title)
  if "test" in results:
    plots.plot_confusion_matrix(np.asarray(results["test"]["confusion_matrix"]),
                                wd / "confusion_matrix.png", class_names=list(class_names),
                                title=f"{title}\ntest split" if title else "test split")
