"""Hostile inputs: values that parse but make no sense, inconsistent data, faults.

Each case runs the command-line path in-process (`tl_jax.main.execute`, what `python -m
tl_jax.main` calls after parsing) and asserts the exit status 2, ONE stderr line
`error: <field>: got ...` naming the field, and that no result was written (or an existing one
changed). Command-line parsing itself (misspelt fields, types, files, flags, Ctrl-C) is tested
through real processes at the end. README.md's reliability section counts these cases.
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import tiny_config, write_tiny_npz
from tl_jax import experiment, main as tl_main
from tl_jax.sweep import grid

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULT_FILES = ("summary.json", "model_variables.msgpack", "metrics.jsonl")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return write_tiny_npz(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def source(data, tmp_path_factory):
  wd = tmp_path_factory.mktemp("source")
  experiment.train_and_evaluate(tiny_config(data, **{"train.num_epochs": 1}), wd)
  return wd


def _set(cfg, dotted, value):
  node = cfg
  *head, last = dotted.split(".")
  for h in head:
    node = node[h]
  node[last] = value


def _expect_refused(cfg, wd, field, capsys):
  wd.mkdir(parents=True, exist_ok=True)
  before = {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file()}
  rc = tl_main.execute(cfg, str(wd))
  err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("error:")]
  assert rc == 2, (rc, err)
  assert len(err) == 1 and err[0].startswith(f"error: {field}"), err
  after = {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file()}
  assert all(f not in after or before.get(f) == after[f] for f in RESULT_FILES), sorted(after)
  return err[0]


# values that parse but make no sense: refused before data loading or compilation
CONFIG_CASES = [
    ("train.num_epochs", 0), ("train.num_epochs", -1), ("optimizer.lr", -0.1),
    ("optimizer.lr", float("nan")), ("optimizer.lr", float("inf")),
    ("train.label_smoothing", 1.5), ("train.label_smoothing", -0.1),
    ("train.eval_batch_size", 0), ("train.batch_size", -4), ("optimizer.momentum", 1.5),
    ("optimizer.weight_decay", -1e-4), ("train.reduce_lr.factor", 2.0),
    ("train.early_stopping.patience", -5), ("data.channels", 2), ("data.val_per_class", -1),
    ("optimizer.schedule_unit", "batch"), ("model.bn_running_var", "pytorch"),
    ("train.seed_loop", "pmap"), ("transfer.finetune_lr", -1.0),
    ("train.checkpoint_every", -1),
]


@pytest.mark.parametrize("field,value", CONFIG_CASES,
                         ids=[f"{f}={v}" for f, v in CONFIG_CASES])
def test_nonsensical_value_is_refused_before_any_work(data, tmp_path, capsys, field, value):
  cfg = tiny_config(data)
  _set(cfg, field, value)
  _expect_refused(cfg, tmp_path, field, capsys)
  assert not (tmp_path / "config.json").exists()  # refused before the run began


KT_CASES = [("kt.beta", -1.0, "l2t_ww"), ("kt.meta_lr", 0.0, "l2t_ww"),
            ("kt.inner_steps", -1, "l2t_ww"), ("kt.meta_dtype", "float16", "l2t_ww"),
            ("kt.matmul_precision", "tf32", "l2t_ww"), ("kt.bn_updates", "thrice", "l2t_ww"),
            ("kt.which_input", "image", "l2t_www"), ("kt.which_init", "he", "l2t_www"),
            ("kt.source_model", "resnet33", "ufm")]


@pytest.mark.parametrize("field,value,method", KT_CASES, ids=[c[0] for c in KT_CASES])
def test_nonsensical_kt_value_is_refused(data, tmp_path, capsys, field, value, method):
  cfg = tiny_config(data, **{"kt.method": method})
  _set(cfg, field, value)
  _expect_refused(cfg, tmp_path, field, capsys)


def test_field_the_method_ignores_is_refused(data, tmp_path, capsys):
  cfg = tiny_config(data, **{"kt.which_input": "map"})  # scratch does not read it
  _expect_refused(cfg, tmp_path, "kt.which_input", capsys)


def test_unfreeze_pattern_matching_no_parameter(data, source, tmp_path, capsys):
  cfg = tiny_config(data, **{"transfer.strategy": "fine_tune", "transfer.init_from": str(source),
                             "transfer.unfreeze": ("^block_that_is_not_there/",),
                             "transfer.warmup_epochs": 1, "train.num_epochs": 2})
  line = _expect_refused(cfg, tmp_path, "transfer.unfreeze", capsys)
  assert "matches no parameter" in line


def test_rgb_weights_into_a_one_channel_model(data, source, tmp_path, capsys):
  cfg = tiny_config(data, **{"transfer.strategy": "frozen_backbone",
                             "transfer.init_from": str(source), "data.channels": 1})
  line = _expect_refused(cfg, tmp_path, "transfer.init_from", capsys)
  assert "conv0/kernel" in line and "data.channels" in line


def _npz(path, images, labels):
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, image=images, label=labels)
  return str(path)


def _images(n, hw=8, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, hw, hw, c)).astype(np.uint8)


def test_test_split_of_another_image_size(data, tmp_path, capsys):
  # beside the train split, so it shares its classes.txt
  test = _npz(pathlib.Path(data["test"]).parent / "test10.npz", _images(9, hw=10),
              np.arange(9) % 3)
  cfg = tiny_config(data, **{"data.test": test})
  line = _expect_refused(cfg, tmp_path / "w", "data.test", capsys)
  assert "data.size" in line


def test_grey_test_split_with_rgb_train(data, tmp_path, capsys):
  test = _npz(pathlib.Path(data["test"]).parent / "grey.npz", _images(9, c=1), np.arange(9) % 3)
  cfg = tiny_config(data, **{"data.test": test})
  line = _expect_refused(cfg, tmp_path / "w", "data.test", capsys)
  assert "data.channels" in line


def test_labels_with_gaps_and_no_class_names(tmp_path, capsys):
  labels = np.array([0, 1, 6] * 12)
  d = {"train": _npz(tmp_path / "d" / "train.npz", _images(36), labels),
       "test": _npz(tmp_path / "d" / "test.npz", _images(9), np.array([0, 1, 6] * 3))}
  line = _expect_refused(tiny_config(d), tmp_path / "w", "data.train", capsys)
  assert "[2, 3, 4, 5]" in line


def test_one_class_image_folder(tmp_path, capsys):
  from PIL import Image
  for i in range(6):
    (tmp_path / "imgs" / "only").mkdir(parents=True, exist_ok=True)
    Image.fromarray(_images(1, seed=i)[0]).save(tmp_path / "imgs" / "only" / f"{i}.png")
  cfg = tiny_config({"train": "", "test": ""}, **{"data.source": "image_folder",
                                                  "data.root": str(tmp_path / "imgs"),
                                                  "data.test_per_class": 1,
                                                  "data.val_per_class": 1})
  _expect_refused(cfg, tmp_path / "w", "data", capsys)


def test_empty_npz(data, tmp_path, capsys):
  empty = _npz(tmp_path / "d" / "empty.npz", np.zeros((0, 8, 8, 3), np.uint8),
               np.zeros((0,), np.int64))
  _expect_refused(tiny_config(data, **{"data.test": empty}), tmp_path / "w", "data", capsys)


def test_shared_root_env_pointing_at_a_missing_folder(data, tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("TL_JAX_SHARED", str(tmp_path / "nowhere"))
  _expect_refused(tiny_config(data), tmp_path / "w", "TL_JAX_SHARED", capsys)


def test_unknown_sweep_method_is_refused_before_the_first_cell(tmp_path):
  import ml_collections
  from tl_jax.config import base_config
  from tl_jax.errors import ConfigError
  c = base_config()
  c.sweep = ml_collections.ConfigDict({"methods": ("scratch", "l2t_wwx"), "n_per_class": (5,),
                                       "seeds": 1})
  calls = []
  with pytest.raises(ConfigError, match="sweep.methods: got 'l2t_wwx'"):
    grid.run_grid(c, tmp_path, lambda *a: calls.append(a))
  assert not calls


def test_disk_full_is_one_line(data, tmp_path, capsys, monkeypatch):
  def full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "summary.json"))
  monkeypatch.setattr(experiment, "run_summary", full)
  rc = tl_main.execute(tiny_config(data, **{"train.num_epochs": 1}), str(tmp_path))
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and err[-1] == (f"error: {tmp_path / 'summary.json'}: got no space left on "
                                 "device; allowed: a writable path with free space")
  assert not (tmp_path / "summary.json").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- real processes

def _tiny_config_file(tmp_path, data):
  f = tmp_path / "cfg.py"
  f.write_text("from tests.helpers import tiny_config\n"
               f"def get_config():\n  return tiny_config({dict(data)!r})\n")
  return f


def _cli(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "tl_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


CLI_CASES = [
    (["--config.trian.num_epochs=3"], "error: --config.trian.num_epochs: got 'trian'",
     "did you mean 'train'?"),
    (["--config.train.batch_size=abc"], "error: --config.train.batch_size: got 'abc'", "int"),
    (["--config.train.num_epochs=0"], "error: train.num_epochs: got 0", "an integer >= 1"),
    (["--workdirr=/tmp/x"], "error: --workdirr: got 'an unknown flag'", "did you mean --workdir?"),
    (["--config.model.kwargs.depth=3"], "error: model.depth: got 3", "allowed"),
    (["--config.train.xla_cpu_flags=fast"], "error: train.xla_cpu_flags: got 'fast'",
     "'auto' (tl_jax's measured flags)"),
]


def test_cli_bad_input_is_one_line_exit_2(data, tmp_path):
  cfg = _tiny_config_file(tmp_path, data)
  for extra, start, contains in CLI_CASES:
    r = _cli(f"--config={cfg}", f"--workdir={tmp_path / 'w'}", *extra)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (extra, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and "FATAL" not in r.stderr, extra
    assert lines[-1].startswith(start) and contains in lines[-1], (extra, lines[-1])
    assert not (tmp_path / "w" / "summary.json").exists()
  r = _cli("--config=configs/no_such_config.py", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      "error: --config: got 'configs/no_such_config.py'; allowed: an existing config file "
      "(path[:argument])")
  r = _cli(f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --config:")
  # an open kwargs dict takes a new key from the command line
  r = _cli(f"--config={cfg}", f"--workdir={tmp_path / 'k'}", "--config.model.kwargs.width=6",
           "--config.train.num_epochs=1")
  assert r.returncode == 0, r.stderr[-1500:]
  assert '"width": 6' in (tmp_path / "k" / "config.json").read_text()


def test_ctrl_c_exits_130_without_traceback_and_resumes(data, tmp_path):
  cfg = _tiny_config_file(tmp_path, data)
  wd = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  args = [sys.executable, "-m", "tl_jax.main", f"--config={cfg}", f"--workdir={wd}",
          "--config.train.num_epochs=150", "--config.train.checkpoint_every=1",
          "--config.train.progress=False"]
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  t0 = time.time()
  while time.time() - t0 < 240:
    m = wd / "metrics.jsonl"
    if m.exists() and len(m.read_text().splitlines()) >= 3:
      break
    time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-1500:]
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1].startswith("error: interrupted (Ctrl-C)")
  assert not (wd / "summary.json").exists() and not (wd / ".lock").exists()
  done = len((wd / "metrics.jsonl").read_text().splitlines())
  r = _cli(f"--config={cfg}", f"--workdir={wd}", f"--config.train.num_epochs={done + 2}",
           "--config.train.checkpoint_every=1")
  # another epoch count is another config: refused, then accepted as a fresh run with --overwrite
  assert r.returncode == 2 and "train.num_epochs" in r.stderr.strip().splitlines()[-1]
  r = _cli(*args[3:])  # the same command resumes from the last checkpoint and finishes
  assert r.returncode == 0, r.stderr[-1500:]
  history = [line for line in (wd / "metrics.jsonl").read_text().splitlines() if line]
  assert len(history) == 150 and (wd / "summary.json").exists()
