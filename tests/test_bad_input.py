"""Bad input: one clear error naming the field (and allowed values), no partial result files."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import tiny_config, write_tiny_npz
from tl_jax import experiment, main as tl_main
from tl_jax.errors import ConfigError, NonFiniteLossError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return write_tiny_npz(tmp_path_factory.mktemp("data"))


def _expect(cfg, workdir, field, allowed=None):
  with pytest.raises(ConfigError) as e:
    tl_main.run(cfg, str(workdir))
  msg = str(e.value)
  assert field in msg, msg
  if allowed:
    assert allowed in msg, msg
  assert not (workdir / "summary.json").exists()
  assert not (workdir / "model_variables.msgpack").exists()
  return msg


@pytest.mark.parametrize("override,field,allowed", [
    ({"model.name": "resnet33"}, "model.name", "resnet32"),
    ({"data.source": "csv"}, "data.source", "image_folder"),
    ({"optimizer.name": "lbfgs"}, "optimizer.name", "adamw"),
    ({"optimizer.schedule": "linear"}, "optimizer.schedule", "cosine"),
    ({"transfer.strategy": "distill"}, "transfer.strategy", "fine_tune"),
    ({"transfer.bn": "sometimes"}, "transfer.bn", "frozen"),
    ({"input.augment": "mixup"}, "augment", "crop_flip"),
    ({"input.normalize": "zscore"}, "normalize", "imagenet"),
    ({"model.head": "mlp"}, "model.head", "dense256"),
    ({"data.n_per_class": 50}, "n_per_class", None),
    ({"train.batch_size": 0}, "train.batch_size", None),
    ({"transfer.strategy": "frozen_backbone"}, "transfer.init_from", None),
    ({"transfer.init_kind": "onnx", "transfer.strategy": "full_fine_tune",
      "transfer.init_from": "/x"}, "transfer.init_kind", "keras_h5"),
    ({"optimizer.frozen": ("no_such_layer",)}, "optimizer.frozen", None),
    ({"model.kwargs.depth": 3}, "model.depth", None),
])
def test_bad_config_values(data, tmp_path, override, field, allowed):
  cfg = tiny_config(data)
  for k, v in override.items():
    if k == "model.kwargs.depth":
      cfg.model.kwargs.depth = v
      continue
    node, *_ = cfg, None
    *head, last = k.split(".")
    for h in head:
      node = node[h]
    node[last] = v
  _expect(cfg, tmp_path, field, allowed)


def test_missing_data_file(data, tmp_path):
  cfg = tiny_config(data, **{"data.train": str(tmp_path / "nope.npz")})
  msg = _expect(cfg, tmp_path / "wd", "data.train")
  assert "nope.npz" in msg


def test_corrupt_data_file(data, tmp_path):
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip file")
  _expect(tiny_config(data, **{"data.train": str(bad)}), tmp_path / "wd", "data.train")


def test_wrong_image_shape_and_dtype(data, tmp_path):
  p = tmp_path / "flat.npz"
  np.savez(p, image=np.zeros((6, 64), np.uint8), label=np.arange(6, dtype=np.int32) % 3)
  _expect(tiny_config(data, **{"data.train": str(p)}), tmp_path / "a", "shape")
  q = tmp_path / "float.npz"
  np.savez(q, image=np.zeros((6, 8, 8, 3), np.float32), label=np.arange(6, dtype=np.int32) % 3)
  _expect(tiny_config(data, **{"data.train": str(q)}), tmp_path / "b", "dtype")


def test_missing_and_corrupt_weight_file(data, tmp_path):
  cfg = tiny_config(data, **{"transfer.strategy": "full_fine_tune",
                             "transfer.init_from": str(tmp_path / "no_run")})
  _expect(cfg, tmp_path / "a", "transfer.init_from")
  bad = tmp_path / "bad_run"
  bad.mkdir()
  (bad / "model_variables.msgpack").write_bytes(b"\x00garbage\xff" * 10)
  cfg.transfer.init_from = str(bad)
  msg = _expect(cfg, tmp_path / "b", "transfer.init_from")
  assert "corrupt" in msg


def test_non_finite_loss_stops_with_message(data, tmp_path):
  cfg = tiny_config(data, **{"optimizer.lr": 1e30, "train.num_epochs": 3})
  with pytest.raises(NonFiniteLossError, match=r"non-finite loss for seed 0 at epoch \d+, batch"):
    experiment.train_and_evaluate(cfg, tmp_path)
  assert not (tmp_path / "summary.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_workdir_not_writable_nonroot(data, tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  _expect(tiny_config(data), ro / "run", "workdir")


def test_workdir_not_writable(data, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("a file where the workdir's parent should be")
  _expect(tiny_config(data), blocker / "run", "workdir")


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "tl_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_cli_unknown_model_exits_nonzero_with_one_line(tmp_path):
  r = _cli("--config", "configs/quickstart.py", "--workdir", str(tmp_path / "wd"),
           "--config.model.name=lenet7")
  assert r.returncode == 2, r.stderr[-2000:]
  assert "error: model.name: got 'lenet7'; allowed: lenet5" in r.stderr
  assert not (tmp_path / "wd" / "results.md").exists()


def test_cli_wrong_config_type_and_unknown_field(tmp_path):
  r = _cli("--config", "configs/quickstart.py", "--workdir", str(tmp_path),
           "--config.train.num_epochs=ten")
  assert r.returncode != 0 and "num_epochs" in r.stderr
  r = _cli("--config", "configs/quickstart.py", "--workdir", str(tmp_path),
           "--config.train.epochs=3")
  assert r.returncode != 0 and "epochs" in r.stderr
