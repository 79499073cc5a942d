"""TensorBoard event files beside each run's `metrics.jsonl`.

Why: `tensorboard --logdir WORKDIR` should show every seed and every method of a comparison or a
sweep without any extra step, so each seed writes its own `<run workdir>/tensorboard/` folder and
TensorBoard finds them all by walking the tree. The writer is tensorboardX: it writes the event
format without TensorFlow.

`metrics.jsonl` stays the record of a run; the events are a view of it. Whenever `fit` starts,
a seed's event folder is removed and rewritten from the history it starts with (empty for a fresh
run, the checkpoint's for a resumed one), so a resumed run holds each epoch exactly once and no
epoch of an interrupted attempt survives. Writing happens once per epoch on the host (a handful
of scalars per seed), never per step. Without tensorboardX training goes on with one warning.

The events go through tensorboardX's synchronous `EventsWriter` rather than its `SummaryWriter`:
the latter hands events to a background thread through a process queue per writer (two threads
per seed, an atexit hook each) and its `flush()` does not wait for that queue, so an epoch could
be missing from the file after it. Here `flush()` means the epoch is on disk.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import shutil
import time
from typing import Any, Optional, Sequence

TB_DIR = "tensorboard"
# record fields that index the epoch rather than measure it (the step axis is `epoch`)
_INDEX_FIELDS = ("epoch", "stage_epoch", "step")
_warned = False


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
  """The record's finite numeric fields as TensorBoard tags: `train_loss` -> 'train/loss',
  `val_accuracy` -> 'val/accuracy' (so TensorBoard groups them), others as named ('lr',
  'lr_scale', 'time_s'). Flags (`is_best`), the stage name and the index fields are left out."""
  out = {}
  for k, v in record.items():
    if k in _INDEX_FIELDS or isinstance(v, bool) or not isinstance(v, (int, float)):
      continue
    if not math.isfinite(float(v)):
      continue
    for prefix in ("train_", "val_"):
      if k.startswith(prefix):
        k = f"{prefix[:-1]}/{k[len(prefix):]}"
        break
    out[k] = float(v)
  return out


def _tensorboardx() -> Optional[tuple[Any, Any, Any]]:
  """(EventsWriter, summary, event_pb2) of tensorboardX, or None (warned once) without it."""
  global _warned
  try:
    from tensorboardX import summary
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2
  except ImportError as e:
    if not _warned:
      logging.warning("tensorboardX is not importable (%s): no TensorBoard event files are "
                      "written; metrics.jsonl is unaffected", e)
      _warned = True
    return None
  return EventsWriter, summary, event_pb2


class EpochBoards:
  """One TensorBoard writer per seed of a `fit` call, in `workdirs[i]/tensorboard/`.

  `histories[i]` (the records seed i starts with) is written first, after removing whatever the
  folder held. `write(i, record)` adds one epoch, `flush()` pushes the epoch to disk (once per
  epoch), `close()` ends the files; call it in a `finally`. Without tensorboardX every method
  does nothing.
  """

  def __init__(self, workdirs: Sequence[str | os.PathLike],
               histories: Sequence[Sequence[dict[str, Any]]]):
    self._writers: list[Any] = []
    self._stage: list[Optional[str]] = [None] * len(workdirs)
    tbx = _tensorboardx()
    if tbx is None:
      self._writers = [None] * len(workdirs)
      return
    events_writer, self._summary, self._event_pb2 = tbx
    try:
      for w in workdirs:
        logdir = pathlib.Path(w) / TB_DIR
        if logdir.exists():
          shutil.rmtree(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        self._writers.append(events_writer(str(logdir / "events")))
      for i, h in enumerate(histories):
        for r in h:
          self.write(i, r)
      self.flush()
    except BaseException:
      self.close()
      raise

  def write(self, i: int, record: dict[str, Any]) -> None:
    """Seed i's record as scalars at step = its epoch; the stage name as text where it starts."""
    w = self._writers[i]
    if w is None:
      return
    step, now = int(record["epoch"]), time.time()
    stage = record.get("stage")
    if isinstance(stage, str) and stage != self._stage[i]:
      w.write_event(self._event_pb2.Event(wall_time=now, step=step,
                                          summary=self._summary.text("stage", stage)))
      self._stage[i] = stage
    for tag, value in scalar_tags(record).items():
      w.write_event(self._event_pb2.Event(wall_time=now, step=step,
                                          summary=self._summary.scalar(tag, value)))

  def flush(self) -> None:
    for w in self._writers:
      if w is not None:
        w.flush()

  def close(self) -> None:
    """Flushes and closes every writer (idempotent). A failure is logged, not raised: the events
    are a view of metrics.jsonl, and this runs in `fit`'s `finally`, where raising would hide the
    error that ended training."""
    writers, self._writers = self._writers, [None] * len(self._writers)
    for w in writers:
      if w is None:
        continue
      try:
        w.close()
      except Exception as e:  # noqa: BLE001 - close the others too
        logging.warning("closing a TensorBoard writer failed: %s", e)
