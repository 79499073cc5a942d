"""Transfer strategies as training stages: which parameters train, at what LR, for how long.

Freezing is expressed as optimiser rules (`optimizer.frozen` regexes -> optax.multi_transform with
set_to_zero), never as a copy of the model, so one param tree serves every stage.

- scratch:             one stage, everything trains, fresh init.
- full_fine_tune:      init from the source, new head, everything trains.
- frozen_backbone:     init from the source, only the head trains (seed 001 "treinamento parcial").
- fine_tune:           stage 1 trains the head with the backbone frozen for `warmup_epochs`; stage 2
                       also unfreezes `transfer.unfreeze` (top blocks; all if empty) at
                       `transfer.finetune_lr` (seed 001 "sintonia fina").
- feature_extraction:  the frozen backbone runs once; a dense head trains on cached features
                       (tl_jax.transfer.features).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections

from tl_jax.errors import ConfigError, check_choice

STRATEGIES = ("scratch", "full_fine_tune", "frozen_backbone", "fine_tune", "feature_extraction")
# transfer.bn: what BatchNorm does during training.
# - frozen_layers (default): the BatchNorms of the layers a stage freezes run in inference mode
#   and keep the source's statistics; those of trainable layers update as usual. This is the
#   Keras convention for a base model with trainable=False: a frozen layer stays frozen.
# - live: every BatchNorm normalises with batch statistics and updates its running statistics,
#   frozen or not (PyTorch's model.train() with requires_grad=False).
# - frozen: every BatchNorm in inference mode, trainable or not.
BN_MODES = ("frozen_layers", "live", "frozen")
NEEDS_SOURCE = ("full_fine_tune", "frozen_backbone", "fine_tune", "feature_extraction")


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  num_epochs: int
  optimizer: ml_collections.ConfigDict
  bn: str  # 'live' | 'frozen' | 'frozen_layers' (see BN_MODES)


def freeze_all_but(keep: Sequence[str]) -> str:
  """One regex matching every param path that no `keep` regex `re.search`es."""
  alts = "|".join(f"(?:{k})" for k in keep)
  return rf"^(?!.*(?:{alts}))"


def make_stages(config: ml_collections.ConfigDict, head_regex: str) -> list[Stage]:
  """The training stages of `config.transfer.strategy` for a model whose head matches head_regex."""
  t = config.transfer
  strategy = check_choice("transfer.strategy", t.strategy, STRATEGIES)
  if strategy in NEEDS_SOURCE and not t.init_from and t.init_kind == "tl_jax":
    raise ConfigError("transfer.init_from", t.init_from,
                      hint=f"strategy {strategy!r} needs a source: a tl_jax run workdir or a "
                      "weights file with transfer.init_kind")
  bn = check_choice("transfer.bn", t.bn, BN_MODES)
  epochs = int(config.train.num_epochs)
  opt = config.optimizer

  def with_frozen(extra: Sequence[str], lr: float | None = None) -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict(opt.to_dict())
    o.frozen = tuple(opt.frozen) + tuple(extra)
    if lr is not None:
      o.lr = float(lr)
    return o

  if strategy in ("scratch", "full_fine_tune"):
    return [Stage("train", epochs, with_frozen(()), bn)]
  head_only = with_frozen((freeze_all_but([head_regex]),))
  if strategy in ("frozen_backbone", "feature_extraction"):
    return [Stage("head", epochs, head_only, bn)]
  # fine_tune
  lr2 = float(t.finetune_lr) or float(opt.lr) / 10.0
  unfreeze = tuple(t.unfreeze)
  stage2_frozen = (freeze_all_but([head_regex, *unfreeze]),) if unfreeze else ()
  stages = []
  if int(t.warmup_epochs) > 0:
    stages.append(Stage("warmup_head", int(t.warmup_epochs), head_only, bn))
  stages.append(Stage("fine_tune", epochs, with_frozen(stage2_frozen, lr2), bn))
  return stages
