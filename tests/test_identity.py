"""Run identity: a result counts only for the config that made it; one run per workdir."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from tests.helpers import tiny_config, write_tiny_npz
from tl_jax import experiment, identity
from tl_jax.analysis import report
from tl_jax.config import base_config
from tl_jax.errors import ConfigError
from tl_jax.sweep import grid

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return write_tiny_npz(tmp_path_factory.mktemp("data"))


def _cfg(data, **kw):
  return tiny_config(data, **{"train.num_epochs": 1, **kw})


def test_hash_ignores_what_cannot_change_a_result_and_sees_what_can():
  c = base_config()
  h = identity.config_hash(c)
  for field, value in (("train.progress", True), ("train.checkpoint_every", 3),
                       ("kt.precision_probe_every", 10)):
    d = ml_collections.ConfigDict(c.to_dict())
    node = d
    *head, last = field.split(".")
    for p in head:
      node = node[p]
    node[last] = value
    assert identity.config_hash(d) == h, field
  d = ml_collections.ConfigDict(c.to_dict())
  d.optimizer.lr = 0.5
  assert identity.config_hash(d) != h
  assert identity.diff_fields(c, d) == [f"optimizer.lr: {c.optimizer.lr!r} -> 0.5"]
  # a config.json written before a field existed: the field counts as its default
  old = c.to_dict()
  del old["kt"]["which_init"]
  assert identity.config_hash(old) == h
  d.seed = 3
  assert identity.cell_hash(d) == identity.cell_hash(
      ml_collections.ConfigDict({**d.to_dict(), "seed": 4}))


def test_rerun_with_another_config_is_an_error_naming_the_field(data, tmp_path):
  first = experiment.train_and_evaluate(_cfg(data), tmp_path)
  assert first["config_hash"] == identity.config_hash(_cfg(data))
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  with pytest.raises(ConfigError, match=r"optimizer\.lr: 0\.05 -> 0\.5"):
    experiment.train_and_evaluate(_cfg(data, **{"optimizer.lr": 0.5}), tmp_path)
  after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  assert after == before  # nothing written, nothing changed
  assert not (tmp_path / identity.LOCK_FILE).exists()
  # the same config (progress is not part of the identity) is fine
  again = experiment.train_and_evaluate(_cfg(data, **{"train.progress": False}), tmp_path)
  assert again["test_accuracy"] == first["test_accuracy"]
  new = experiment.train_and_evaluate(_cfg(data, **{"optimizer.lr": 0.5}), tmp_path,
                                      overwrite=True)
  assert new["config_hash"] != first["config_hash"]
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["lr"] == 0.5


def test_checkpoints_of_another_config_are_not_restored(data, tmp_path):
  cfg = _cfg(data, **{"train.checkpoint_every": 1, "train.num_epochs": 2})
  experiment.train_and_evaluate(cfg, tmp_path)
  (tmp_path / "summary.json").unlink()  # as if killed after its checkpoints
  with pytest.raises(ConfigError, match="train.num_epochs: 2 -> 3"):
    experiment.train_and_evaluate(_cfg(data, **{"train.checkpoint_every": 1,
                                                "train.num_epochs": 3}), tmp_path)
  # a K-seed program's group checkpoint folder records the cell hash it belongs to
  wds = [tmp_path / "g" / f"s{s}" for s in (0, 1)]
  experiment.run_seeds(cfg, [0, 1], wds)
  for w in wds:
    (w / "summary.json").unlink()
    (w / "config.json").unlink()
  other = _cfg(data, **{"train.checkpoint_every": 1, "train.num_epochs": 2,
                        "optimizer.lr": 0.2})
  with pytest.raises(ConfigError, match="checkpoints of another config"):
    experiment.run_seeds(other, [0, 1], wds)


def test_lock_refuses_a_live_second_run_and_takes_over_a_stale_one(tmp_path):
  with identity.WorkdirLock(tmp_path):
    # a live other process holds the lock
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
      (tmp_path / "other").mkdir()
      (tmp_path / "other" / identity.LOCK_FILE).write_text(f"{os.uname().nodename} {proc.pid}")
      with pytest.raises(ConfigError, match=f"in use by another run \\(pid {proc.pid}"):
        identity.WorkdirLock(tmp_path / "other").acquire()
    finally:
      proc.kill()
      proc.wait()
    # its process is gone now: the lock is stale and taken over
    with identity.WorkdirLock(tmp_path / "other") as lock:
      assert lock.owned
    assert not (tmp_path / "other" / identity.LOCK_FILE).exists()


def test_run_refuses_a_workdir_locked_by_a_live_process(data, tmp_path):
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
  try:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / identity.LOCK_FILE).write_text(f"{os.uname().nodename} {proc.pid}")
    with pytest.raises(ConfigError, match="in use by another run"):
      experiment.train_and_evaluate(_cfg(data), tmp_path)
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "metrics.jsonl").exists()
  finally:
    proc.kill()
    proc.wait()


class _Fake:
  def __init__(self):
    self.calls = 0

  def __call__(self, config, seeds, workdirs):
    self.calls += 1
    for s, w in zip(seeds, workdirs):
      c = ml_collections.ConfigDict(config.to_dict())
      c.seed = s
      pathlib.Path(w, "config.json").write_text(c.to_json_best_effort())
      pathlib.Path(w, "summary.json").write_text(json.dumps({"seed": s}))


def _sweep(epochs=1):
  c = base_config()
  c.train.num_epochs = epochs
  c.sweep = ml_collections.ConfigDict({"methods": ("scratch",), "n_per_class": (5,),
                                       "seeds": 2})
  return c


def test_sweep_skips_only_cells_of_the_same_config(tmp_path):
  fake = _Fake()
  grid.run_grid(_sweep(), tmp_path, fake)
  rep = grid.run_grid(_sweep(), tmp_path, fake)
  assert fake.calls == 1 and len(rep.skipped) == 2
  with pytest.raises(ConfigError, match=r"2 cell\(s\) hold runs of another config .*"
                     r"train\.num_epochs: 1 -> 12"):
    grid.run_grid(_sweep(epochs=12), tmp_path, fake)
  assert fake.calls == 1  # refused before any work
  rep = grid.run_grid(_sweep(epochs=12), tmp_path, fake, overwrite=True)
  assert fake.calls == 2 and len(rep.ran) == 2
  assert json.loads((tmp_path / "scratch/n5/seed0/config.json").read_text())["train"][
      "num_epochs"] == 12


def _summary(method, seed, acc, epochs):
  c = base_config()
  c.train.num_epochs = epochs
  c.seed = seed
  return {"method": method, "n_per_class": 5, "seed": seed, "test_accuracy": acc,
          "dataset": "d", "cell_hash": identity.cell_hash(c)}


def test_report_separates_runs_of_different_configs(capsys):
  rows = [_summary("scratch", s, 0.5, 12) for s in range(3)] + [_summary("scratch", 3, 0.9, 1)]
  df = report.runs_frame(rows)
  assert sorted(df["method"].unique()) == ["scratch", f"scratch [cfg {rows[3]['cell_hash'][:6]}]"]
  assert (df["method"] == "scratch").sum() == 3
  assert "different configs" in capsys.readouterr().err
  assert report.runs_frame(rows[:3])["method"].unique().tolist() == ["scratch"]


def test_cli_stale_workdir_is_one_line_exit_2(data, tmp_path):
  cfg = tmp_path / "c.py"
  cfg.write_text("from tests.helpers import tiny_config\n"
                 f"def get_config():\n  return tiny_config({dict(data)!r}, **{{'train.num_epochs': 1}})\n")
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  wd = tmp_path / "w"
  run = lambda *extra: subprocess.run(  # noqa: E731
      [sys.executable, "-m", "tl_jax.main", f"--config={cfg}", f"--workdir={wd}", *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run().returncode == 0
  before = (wd / "summary.json").read_bytes()
  proc = run("--config.optimizer.lr=0.5")
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: workdir:") and "optimizer.lr: 0.05 -> 0.5" in last
  assert "--overwrite" in last
  assert (wd / "summary.json").read_bytes() == before
  assert run("--config.optimizer.lr=0.5", "--overwrite").returncode == 0
