"""Orbax CheckpointManager wrapper: train state (+ best-on-validation state) and JSON loop metadata.

Bit-exact restore needs an abstract target (otherwise optax NamedTuple states come back as lists),
an absolute directory, and `wait_until_finished()`/`close()` before the process exits.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStruct tree (same treedef, including static fields) used as a restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """`save(step, state, meta, best_state=None)`, `restore_latest(abstract_state)`."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: Optional[int] = 2,
               async_save: bool = True):
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                      item_names=("state", "best", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any], best_state: Any = None,
           force: bool = True) -> bool:
    """Saves asynchronously; an existing checkpoint at `step` is replaced (resume re-saves)."""
    if step in self._mgr.all_steps():
      self._mgr.wait_until_finished()
      self._mgr.delete(step)
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if best_state is not None:
      items["best"] = ocp.args.StandardSave(best_state)
    return self._mgr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any,
              with_best: bool = False) -> tuple[Any, dict[str, Any], Any]:
    """(state, meta, best_state or None); `abstract_state` gives the tree structure and dtypes."""
    self._mgr.wait_until_finished()
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if with_best:
      items["best"] = ocp.args.StandardRestore(abstract_state)
    out = self._mgr.restore(step, args=ocp.args.Composite(**items))
    return out["state"], out["meta"], (out["best"] if with_best else None)

  def latest_meta(self) -> Optional[dict[str, Any]]:
    """The JSON metadata of the newest checkpoint, or None when there is none."""
    step = self.latest_step()
    if step is None:
      return None
    self._mgr.wait_until_finished()
    out = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def newest_intact_meta(self) -> Optional[dict[str, Any]]:
    """The metadata of the newest checkpoint whose metadata and state both read back, or None.
    A truncated or corrupt newer checkpoint (a kill or a full disk during its write) is
    reported and passed over, so the run resumes from the one before instead of failing."""
    self._mgr.wait_until_finished()
    for step in sorted(self._mgr.all_steps(), reverse=True):
      try:
        out = self._mgr.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore(), state=ocp.args.StandardRestore()))
        return dict(out["meta"])
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
        logging.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                        self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
    return None

  def restore_state(self, step: int, abstract_state: Any) -> Any:
    """The saved state of checkpoint `step` (structure and dtypes from `abstract_state`)."""
    self._mgr.wait_until_finished()
    out = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return out["state"]

  def has_best(self, step: int) -> bool:
    return os.path.isdir(os.path.join(self.directory, str(step), "best"))

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[Any, dict[str, Any], Any]]:
    """Restores the newest checkpoint, or returns None when there is none."""
    step = self.latest_step()
    if step is None:
      return None
    return self.restore(step, abstract_state, with_best=self.has_best(step))

  def remove_partial(self) -> list[str]:
    """Deletes the temporary folders of saves that never finished (a full disk, a kill) so a
    failed run leaves only complete checkpoints; returns what it removed."""
    import shutil
    gone = []
    if os.path.isdir(self.directory):
      for name in os.listdir(self.directory):
        if ".orbax-checkpoint-tmp" in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
          gone.append(name)
    return gone

  def wait_until_finished(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
