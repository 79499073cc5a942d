"""TensorBoard event files (tl_jax.train.tensorboard): each seed's epochs as scalars in
`<run>/tensorboard/`, equal to its metrics.jsonl, found per seed by `tensorboard --logdir`, and
each epoch exactly once after an interrupted run is resumed. Read back with TensorBoard's own
reader, so a file TensorBoard could not show fails here."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator, event_multiplexer

from tests.helpers import tiny_config, write_tiny_npz
from tl_jax import experiment
from tl_jax.train import jsonl
from tl_jax.train import tensorboard as tb

# tags every run of the tiny config must have (it has a validation split and an LR schedule)
REQUIRED = {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/macro_f1",
            "val/macro_recall", "lr", "lr_scale", "time_s"}


def _field_of_tag(recs):
  """tag -> metrics.jsonl field for every measured field of the records (learner metrics such
  as train_grad_norm included)."""
  out = {}
  for r in recs:
    for k in r:
      if k.startswith(("train_", "val_")):
        out[k.replace("_", "/", 1)] = k
      elif k in ("lr", "lr_scale", "time_s"):
        out[k] = k
  return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return write_tiny_npz(tmp_path_factory.mktemp("data"))


def _read(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={
      event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def _assert_events_equal_metrics(wd):
  """Every measured field of metrics.jsonl is a scalar tag holding, at step = epoch, exactly
  the epochs of metrics.jsonl and their values (the events store float32); nothing else is."""
  recs = jsonl.read_jsonl(wd / "metrics.jsonl")
  assert recs
  acc = _read(wd / "tensorboard")
  fields = _field_of_tag(recs)
  assert REQUIRED <= set(fields)
  assert set(acc.Tags()["scalars"]) == set(fields)
  for tag, field in fields.items():
    events = acc.Scalars(tag)
    assert [e.step for e in events] == [r["epoch"] for r in recs], tag
    np.testing.assert_allclose([e.value for e in events], [r[field] for r in recs], rtol=1e-6,
                               atol=0, err_msg=tag)
  stage = acc.Tensors("stage/text_summary")
  assert [e.step for e in stage] == [recs[0]["epoch"]]
  assert stage[0].tensor_proto.string_val == [recs[0]["stage"].encode()]
  return recs, acc


def test_a_run_writes_events_equal_to_its_metrics(data, tmp_path):
  wd = tmp_path / "run"
  experiment.train_and_evaluate(tiny_config(data, **{"train.num_epochs": 3}), wd)
  recs, _ = _assert_events_equal_metrics(wd)
  assert [r["epoch"] for r in recs] == [0, 1, 2]
  assert len(list((wd / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_every_seed_of_a_k_seed_run_is_its_own_tensorboard_run(data, tmp_path):
  cfg = tiny_config(data, **{"train.num_epochs": 2})
  wds = [tmp_path / "scratch" / f"seed{s}" for s in (0, 1)]
  experiment.run_seeds(cfg, [0, 1], wds)
  losses = []
  for wd in wds:
    _, acc = _assert_events_equal_metrics(wd)
    losses.append([e.value for e in acc.Scalars("train/loss")])
  assert losses[0] != losses[1]  # each seed's own numbers, not one seed's copied
  # what `tensorboard --logdir tmp_path` lists: one run per seed
  mux = event_multiplexer.EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
  mux.Reload()
  assert sorted(mux.Runs()) == ["scratch/seed0/tensorboard", "scratch/seed1/tensorboard"]


def test_a_resumed_run_holds_each_epoch_once(data, tmp_path, monkeypatch):
  from tl_jax.analysis import traces
  cfg = tiny_config(data, **{"train.num_epochs": 4, "train.checkpoint_every": 1})
  wds = [tmp_path / f"seed{s}" for s in (0, 1)]

  class Killed(Exception):
    pass

  orig = traces.TraceRecorder.__call__

  def crash(self, state, record):  # after seed 0's epoch 2 is written, before its checkpoint
    if record["epoch"] == 2:
      raise Killed()
    return orig(self, state, record)

  monkeypatch.setattr(traces.TraceRecorder, "__call__", crash)
  with pytest.raises(Killed):
    experiment.run_seeds(cfg, [0, 1], wds)
  # the interrupted attempt left epoch 2 of seed 0 in its events (the checkpoint is of epoch 1)
  assert [e.step for e in _read(wds[0] / "tensorboard").Scalars("train/loss")] == [0, 1, 2]
  monkeypatch.setattr(traces.TraceRecorder, "__call__", orig)
  experiment.run_seeds(cfg, [0, 1], wds)
  for wd in wds:
    recs, _ = _assert_events_equal_metrics(wd)
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3]
    assert len(list((wd / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_scalar_tags_keep_measurements_only():
  rec = {"epoch": 3, "stage": "head", "stage_epoch": 1, "step": 40, "is_best": True,
         "train_loss": 0.5, "val_macro_f1": 0.25, "lr": 1e-3, "lr_scale": 1.0, "val_loss": None,
         "train_accuracy": float("nan")}
  assert tb.scalar_tags(rec) == {"train/loss": 0.5, "val/macro_f1": 0.25, "lr": 1e-3,
                                 "lr_scale": 1.0}


def test_without_tensorboardx_training_output_is_unchanged_and_warned_once(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
  monkeypatch.setattr(tb, "_warned", False)
  rec = {"epoch": 0, "stage": "train", "train_loss": 1.0}
  with caplog.at_level(logging.WARNING):
    for _ in range(2):
      boards = tb.EpochBoards([tmp_path], [[rec]])
      boards.write(0, rec)
      boards.flush()
      boards.close()
  assert not (tmp_path / "tensorboard").exists()
  assert sum("tensorboardX" in r.getMessage() for r in caplog.records) == 1
