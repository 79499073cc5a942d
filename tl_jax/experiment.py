"""`train_and_evaluate(config, workdir)`: one run of one configuration, end to end.

Data (load, sample N per class with the run's seed, carve val) -> model (+ head) -> initial weights
(scratch or a source) -> the strategy's stages (tl_jax.transfer.strategies) through the jitted
train step and the fit loop -> best-on-validation state evaluated on test -> summary.json,
metrics.jsonl, curves and a confusion matrix in the workdir. Knowledge-transfer methods
(config.kt.method) run the L2T iteration instead of the plain step.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from tl_jax import models
from tl_jax.analysis import traces
from tl_jax.data import augment, sampling
from tl_jax.data.sources import load_dataset
from tl_jax.data.types import DataSplits
from tl_jax.errors import ConfigError
from tl_jax.train import jsonl, loop, masks, optim, steps
from tl_jax.train.state import TrainState
from tl_jax.transfer import heads, init as tinit, strategies

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


def data_spec(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The loader spec of config.data without its unset (0 / '' / None) fields."""
  d = config.data.to_dict()
  spec = {k: v for k, v in d.items() if v not in (None, "", 0, ())
          and k not in ("n_per_class", "imbalance", "val_per_class", "split_seed")}
  if d["val_per_class"] and not d["val"]:
    spec["val_per_class"] = d["val_per_class"]
  spec["seed"] = d.get("split_seed", 0) or 0
  return spec


def prepare_data(config: ml_collections.ConfigDict) -> DataSplits:
  """Loads the splits and draws the run's training sample (seeded by config.seed)."""
  loaded = load_dataset(data_spec(config))
  splits = loaded if isinstance(loaded, DataSplits) else DataSplits(loaded)
  train = splits.train
  n = int(config.data.n_per_class)
  seed = int(config.seed)
  if config.data.imbalance:
    minority, n_min = config.data.imbalance
    if not n:
      raise ConfigError("data.n_per_class", n, hint="data.imbalance needs the majority size")
    train = train.subset(sampling.imbalanced(train.labels, (tuple(minority), int(n_min), n), seed))
  elif n:
    train = train.subset(sampling.sample_per_class(train.labels, n, seed))
  if splits.val is None:
    raise ConfigError("data.val_per_class", config.data.val_per_class,
                      hint="a validation split is needed (early stopping / best epoch never use "
                      "test): give data.val or data.val_per_class > 0")
  return DataSplits(train, splits.val, splits.test)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """(model, head regex): the registry model, or a headless backbone + a seed-document head."""
  name = config.model.name
  kwargs = config.model.kwargs.to_dict()
  if config.model.head == "default":
    return models.create_model(name, num_classes, **kwargs), models.head_regex(name)
  backbone = models.create_model(name, None, **kwargs)
  head = heads.make_head(config.model.head, num_classes, **config.model.head_kwargs.to_dict())
  return heads.Classifier(backbone, head), r"^head/"


def init_variables(config, model, image_shape, rng) -> tuple[dict[str, Any], list[str]]:
  """Fresh variables, then (for transfer strategies) the source's weights grafted in."""
  x = np.zeros((1,) + tuple(image_shape), np.float32)
  variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(rng)
  variables = dict(variables)
  t = config.transfer
  if t.strategy == "scratch" or (not t.init_from and t.init_kind == "tl_jax"):
    return variables, []
  backbone = model.backbone if isinstance(model, heads.Classifier) else model.clone(
      num_classes=None)
  source = tinit.load_source(t.init_kind, t.init_from, backbone=backbone)
  head_prefix = ("head/",) if isinstance(model, heads.Classifier) else (
      type(model).head_name + "/",)
  return tinit.graft(variables, source, skip_prefixes=head_prefix)


def _fit_cfg(config, num_epochs: int, base_lr: float | None = None) -> dict[str, Any]:
  """The fit-loop config; reduce_lr.min_lr is an absolute LR (Keras semantics) of base_lr."""
  t = config.train
  es, rl = t.early_stopping, t.reduce_lr
  return {
      "num_epochs": num_epochs, "batch_size": t.batch_size, "eval_batch_size": t.eval_batch_size,
      "drop_last": t.drop_last, "monitor": t.monitor, "progress": t.progress,
      "checkpoint_every": t.checkpoint_every,
      "early_stopping": {"patience": None if es.patience < 0 else es.patience,
                         "min_delta": es.min_delta},
      "reduce_lr": {"patience": None if rl.patience < 0 else rl.patience, "factor": rl.factor,
                    "min_lr": rl.min_lr, "base_lr": float(base_lr or config.optimizer.lr)},
  }


def _effective_batch(config, n_train: int) -> int:
  bs = int(config.train.batch_size)
  if bs <= 0:
    raise ConfigError("train.batch_size", bs, "a positive int")
  return min(bs, n_train)


def steps_per_epoch(config, n_train: int) -> int:
  bs = int(config.train.batch_size)
  return n_train // bs if config.train.drop_last else -(-n_train // bs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Runs `config` in `workdir`; returns (and writes) the summary with test metrics.

  The run's full config is written first to `workdir/config.json` (provenance of every number)."""
  jsonl.write_text_atomic(check_workdir(workdir) / "config.json",
                          config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  if config.kt.method != "none":
    from tl_jax.kt import experiment as kt_experiment
    return kt_experiment.train_and_evaluate(config, workdir)
  wd = check_workdir(workdir)
  t_start = time.time()
  splits = prepare_data(config)
  num_classes = splits.num_classes
  model, head_rx = build_model(config, num_classes)
  rng = jax.random.key(int(config.seed))
  init_rng, train_rng = jax.random.split(rng)
  image_shape = splits.train.image_shape
  if config.input.resize:
    image_shape = tuple(config.input.resize) + image_shape[-1:]
  variables, copied = init_variables(config, model, image_shape, init_rng)
  stage_list = strategies.make_stages(config, head_rx)
  if config.transfer.strategy == "feature_extraction":
    from tl_jax.transfer import features
    return features.run(config, wd, splits, model, variables, stage_list[0], train_rng, copied)

  aug = augment.make_augment(config.input)
  pre = augment.make_preprocess(config.input)
  eval_step = steps.make_eval_step(model, pre)
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy for the batch clamp
  config.train.batch_size = _effective_batch(config, len(splits.train))
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  history: list[dict[str, Any]] = []
  state = None
  for i, stage in enumerate(stage_list):
    spe = steps_per_epoch(config, len(splits.train))
    tx = optim.make_optimizer(stage.optimizer, spe, stage.num_epochs, params)
    names = masks.trainable_names(params, tuple(stage.optimizer.frozen))
    logging.info("stage %s: %d epochs; trainable %s; frozen %s", stage.name, stage.num_epochs,
                 names["trainable"], names["frozen"])
    state = TrainState.create(model.apply, params, batch_stats, tx)
    frozen = masks.frozen_mask(params, tuple(stage.optimizer.frozen))
    train_step = steps.make_train_step(model, aug, label_smoothing=config.train.label_smoothing,
                                       bn_frozen=stage.bn_frozen,
                                       trainable=jax.tree.map(lambda f: not f, frozen))
    stage_dir = wd if len(stage_list) == 1 else wd / f"stage{i}_{stage.name}"
    stage_dir.mkdir(exist_ok=True)
    state, hist = loop.fit(state, train_step, eval_step, splits.train, splits.val,
                           _fit_cfg(config, stage.num_epochs, stage.optimizer.lr), stage_dir,
                           jax.random.fold_in(train_rng, i),
                           lr_fn=optim.make_lr_fn(stage.optimizer, spe, stage.num_epochs),
                           num_classes=num_classes, on_epoch_end=traces.TraceRecorder(stage_dir))
    offset = len(history)
    history += [dict(h, stage=stage.name, stage_epoch=h["epoch"], epoch=offset + h["epoch"])
                for h in hist]
    params, batch_stats = state.params, state.batch_stats
  return finish(config, wd, model, state, eval_step, splits, history, copied, t_start)


def finish(config, wd: pathlib.Path, model, state, eval_step, splits: DataSplits,
           history: list[dict[str, Any]], copied: list[str], t_start: float) -> dict[str, Any]:
  """Evaluates the best-on-validation state on every split; writes summary, weights, figures."""
  results = {}
  for name, ds in splits.items():
    results[name] = loop.evaluate(state, eval_step, ds, config.train.eval_batch_size,
                                  num_classes=splits.num_classes)
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  tinit.save_variables(wd, variables, {"model": config.model.to_dict(),
                                       "num_classes": splits.num_classes,
                                       "class_names": list(splits.class_names)})
  summary = run_summary(config, results, history, copied, time.time() - t_start, splits)
  jsonl.write_json_atomic(wd / "history.json", history)
  jsonl.write_json_atomic(wd / SUMMARY_FILE, summary)
  _figures(wd, history, results, splits.class_names)
  return summary


def run_summary(config, results, history, copied, wall_s, splits) -> dict[str, Any]:
  """The per-run record tl_jax.analysis.report aggregates (one file per run)."""
  best = [h for h in history if h.get("is_best")]
  s = {
      "name": config.name, "method": method_name(config), "model": config.model.name,
      "dataset": str(config.data.get("train") or config.data.get("root") or config.data.source),
      "n_per_class": int(config.data.n_per_class), "seed": int(config.seed),
      "strategy": config.transfer.strategy, "num_classes": splits.num_classes,
      "train_size": _size(splits.train), "best_epoch": best[-1]["epoch"] if best else None,
      "epochs_run": len(history), "wall_s": wall_s, "num_copied_from_source": len(copied),
      "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
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


def _size(ds) -> int:
  return len(ds["label"]) if isinstance(ds, dict) else len(ds)


def method_name(config) -> str:
  return config.kt.method if config.kt.method != "none" else config.transfer.strategy


def _figures(wd: pathlib.Path, history, results, class_names) -> None:
  try:
    from tl_jax.analysis import plots
  except ImportError:  # plotting is optional for headless library use
    return
  if history:
    plots.plot_training_curves(history, wd / "curves.png")
  if "test" in results:
    plots.plot_confusion_matrix(np.asarray(results["test"]["confusion_matrix"]),
                                wd / "confusion_matrix.png", class_names=class_names)
