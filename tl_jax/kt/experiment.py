"""`train_and_evaluate` for knowledge-transfer methods (UFM, L2T-ww, L2T-www).

Same data, evaluation, summary and figures as tl_jax.experiment; only the training step differs:
the one jitted `KnowledgeTransfer.l2t_iteration(state, batch, key)` (tl_jax.kt.bilevel) replaces
the plain train step, with the source network loaded from `config.kt.source_weights`.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import ml_collections

from tl_jax import experiment, models
from tl_jax.analysis import traces
from tl_jax.data import augment
from tl_jax.errors import ConfigError, check_choice
from tl_jax.kt.bilevel import METHODS, KnowledgeTransfer, KTConfig
from tl_jax.kt.pairs import feature_shapes, parse_pairs
from tl_jax.train import loop, optim, steps
from tl_jax.transfer import init as tinit


def kt_config(config: ml_collections.ConfigDict) -> KTConfig:
  k, o = config.kt, config.optimizer
  check_choice("kt.method", k.method, METHODS)
  if o.name != "sgd" or o.decay_type != "coupled":
    raise ConfigError("optimizer.name", o.name, ["sgd"], hint="the L2T look-ahead is momentum "
                      "SGD with coupled weight decay (optimizer.decay_type='coupled')")
  return KTConfig(method=k.method, beta=float(k.beta), inner_steps=int(k.inner_steps),
                  momentum=float(o.momentum), weight_decay=float(o.weight_decay),
                  meta_lr=float(k.meta_lr), meta_weight_decay=float(k.meta_weight_decay))


def build(config: ml_collections.ConfigDict, num_classes: int, image_shape, rng):
  """(KnowledgeTransfer, initial KTState, target model) for `config`."""
  kcfg = kt_config(config)
  target, _ = experiment.build_model(config, num_classes)
  t_vars, _ = experiment.init_variables(config, target, image_shape, rng)
  source = models.create_model(config.kt.source_model, int(config.kt.source_num_classes),
                               **config.kt.source_kwargs.to_dict())
  s_vars = tinit.load_source(config.kt.source_kind, config.kt.source_weights, backbone=source)
  pairs = parse_pairs(config.kt.pairs, feature_shapes(source, s_vars, image_shape),
                      feature_shapes(target, t_vars, image_shape))
  logging.info("kt %s: %d pairs %s", kcfg.method, len(pairs), [p.key for p in pairs])
  return kcfg, target, t_vars, source, s_vars, pairs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  wd = experiment.check_workdir(workdir)
  t0 = time.time()
  splits = experiment.prepare_data(config)
  image_shape = splits.train.image_shape
  if config.input.resize:
    image_shape = tuple(config.input.resize) + image_shape[-1:]
  rng = jax.random.key(int(config.seed))
  init_rng, train_rng = jax.random.split(rng)  # as tl_jax.experiment: same seed, same init
  kt_rng = jax.random.fold_in(train_rng, 1)
  kcfg, target, t_vars, source, s_vars, pairs = build(config, splits.num_classes, image_shape,
                                                      init_rng)
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.batch_size = min(int(config.train.batch_size), len(splits.train))
  spe = experiment.steps_per_epoch(config, len(splits.train))
  epochs = int(config.train.num_epochs)
  schedule = optim.make_schedule(config.optimizer, spe, epochs)
  kt = KnowledgeTransfer(source, target, pairs, kcfg, schedule,
                         preprocess=augment.make_augment(config.input))
  state = kt.init(kt_rng, t_vars, s_vars)
  eval_step = steps.make_eval_step(target, augment.make_preprocess(config.input))
  fit_cfg = experiment._fit_cfg(config, epochs)
  if fit_cfg["reduce_lr"]["patience"] is not None:
    raise ConfigError("train.reduce_lr.patience", config.train.reduce_lr.patience,
                      hint="not supported with kt methods (the LR follows optimizer.schedule)")
  pre = augment.make_preprocess(config.input)
  recorder = traces.TraceRecorder(wd, kt, pre(splits.val.images[:16]))
  state, history = loop.fit(state, kt.l2t_iteration, eval_step, splits.train, splits.val, fit_cfg,
                            wd, train_rng, num_classes=splits.num_classes, on_epoch_end=recorder,
                            lr_fn=lambda step, scale=1.0: float(schedule(step)) * scale)
  return experiment.finish(config, wd, target, state, eval_step, splits, history, [], t0)
