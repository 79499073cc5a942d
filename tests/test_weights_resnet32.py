"""L2T-ww ResNet-32 import: strict mapping, Tiny ImageNet accuracy, equality with PyTorch."""

from __future__ import annotations

import io
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tl_jax import paths
from tl_jax.errors import ConfigError
from tl_jax.models import create_model
from tl_jax.weights import read_torch_state_dict
from tl_jax.weights import resnet32_l2t as r32

NPZ = "shared://weights/resnet32_tinyimagenet_l2tww.npz"
PTH = "shared://weights/resnet32_tinyimagenet_l2tww.pth.tar"


def _val_images(n=None):
  """Tiny ImageNet val: 64x64 JPEGs -> PIL bilinear 32x32 -> ImageNet mean/std (NHWC float32)."""
  with np.load(paths.resolve("shared://data/tiny_imagenet/val.npz")) as z:
    raw, off, labels = z["jpeg_bytes"], z["offsets"], z["label"]
  n = len(labels) if n is None else n
  imgs = np.empty((n, 32, 32, 3), np.uint8)
  for i in range(n):
    im = Image.open(io.BytesIO(raw[off[i]:off[i + 1]].tobytes())).convert("RGB")
    imgs[i] = np.asarray(im.resize((32, 32), Image.BILINEAR))
  x = (imgs / 255.0 - np.array(r32.IMAGENET_MEAN)) / np.array(r32.IMAGENET_STD)
  return x.astype(np.float32), labels[:n]


@pytest.mark.shared
def test_tiny_imagenet_top1_matches_reported():
  t0 = time.time()
  model = create_model("resnet32", 200)
  v = r32.load_resnet32_l2t(NPZ)
  x, y = _val_images()
  fwd = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False)[0], -1))
  pred = np.concatenate([np.asarray(fwd(v, x[i:i + 500])) for i in range(0, len(x), 500)])
  acc = 100.0 * float(np.mean(pred == y))
  print(f"ResNet-32 L2T-ww Tiny ImageNet val top-1 {acc:.2f}% ({len(y)} images, "
        f"{time.time() - t0:.1f} s)")
  assert len(y) == 4000
  assert abs(acc - 49.15) < 3.0, acc
  assert time.time() - t0 < 60


@pytest.mark.shared
def test_npz_and_pth_give_identical_variables():
  pytest.importorskip("torch")
  a = r32.load_resnet32_l2t(NPZ)
  b = r32.load_resnet32_l2t(PTH)
  chex.assert_trees_all_equal(a, b)
  n = sum(x.size for x in jax.tree.leaves(a["params"]))
  assert n == 479_272  # trainable arrays of the checkpoint (201 tensors - BN buffers)


@pytest.mark.shared
def test_logits_equal_pytorch_twin():
  torch = pytest.importorskip("torch")
  from tl_jax.weights import torch_twins as tt
  twin = tt.ResNet32L2T(200)
  state = torch.load(paths.resolve(PTH), map_location="cpu", weights_only=True)["state_dict"]
  twin.load_state_dict(state, strict=True)
  twin.eval()
  x, _ = _val_images(16)
  with torch.no_grad():
    want, want_feats = twin(tt.nhwc_to_torch(x))
  model = create_model("resnet32", 200)
  logits, feats = model.apply(r32.load_resnet32_l2t(NPZ), x, train=False)
  chex.assert_trees_all_close(np.asarray(logits), want.numpy(), atol=1e-4)
  chex.assert_trees_all_close(np.asarray(feats["block9"]),
                              want_feats[9].numpy().transpose(0, 2, 3, 1), atol=1e-4)
  assert float(np.abs(want.numpy()).max()) > 1.0


@pytest.mark.shared
def test_headless_model_drops_fc_only():
  v = r32.load_resnet32_l2t(NPZ, model=create_model("resnet32", None))
  assert "fc" not in v["params"] and "block5" in v["params"]


@pytest.mark.shared
def test_strict_missing_and_extra_keys(tmp_path):
  state = read_torch_state_dict(NPZ)
  less = dict(state)
  del less["blocks4.2.bn1.running_var"]
  np.savez(tmp_path / "less.npz", **less)
  with pytest.raises(ConfigError, match=r"blocks4\.2\.bn1\.running_var"):
    r32.load_resnet32_l2t(tmp_path / "less.npz")
  more = dict(state, **{"alphas.0": np.zeros(3, np.float32)})
  np.savez(tmp_path / "more.npz", **more)
  with pytest.raises(ConfigError, match=r"extra_keys.*alphas\.0"):
    r32.load_resnet32_l2t(tmp_path / "more.npz")
  wrong = dict(state, **{"fc.weight": np.zeros((100, 64), np.float32)})
  np.savez(tmp_path / "wrong.npz", **wrong)
  with pytest.raises(ConfigError, match="shape"):
    r32.load_resnet32_l2t(tmp_path / "wrong.npz")


def test_missing_and_corrupt_files(tmp_path):
  with pytest.raises(ConfigError, match="nope.npz"):
    r32.load_resnet32_l2t(tmp_path / "nope.npz")
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"PK\x03\x04 this is not a zip")
  with pytest.raises(ConfigError, match="corrupt"):
    r32.load_resnet32_l2t(bad)
  pytest.importorskip("torch")
  badt = tmp_path / "bad.pth.tar"
  badt.write_bytes(b"\x80\x02garbage")
  with pytest.raises(ConfigError, match="corrupt"):
    r32.load_resnet32_l2t(badt)


@pytest.mark.parametrize("name,kwargs,shape", [
    ("vgg9", {}, (32, 32, 3)), ("lenet5", {"variant": "classic"}, (32, 32, 1))])
def test_torch_twins_equal_tl_jax_models(name, kwargs, shape):
  """The benchmark twins compute the same function as tl_jax's models from the same weights
  (the ResNet-32 twin is checked on the real checkpoint above)."""
  torch = pytest.importorskip("torch")
  from tl_jax.weights import torch_twins as tt
  model = create_model(name, 10, **kwargs)
  x = np.asarray(jax.random.normal(jax.random.key(0), (2,) + shape))
  v = jax.jit(model.init)(jax.random.key(1), x)
  if "batch_stats" in v:  # non-trivial running statistics
    v = {**v, "batch_stats": jax.tree.map(
        lambda s: s + jax.random.uniform(jax.random.key(2), s.shape, minval=0.1, maxval=0.5),
        v["batch_stats"])}
  twin = {"vgg9": lambda: tt.VGG9(10), "lenet5": lambda: tt.LeNet5(10, shape[-1], kwargs.get("variant"))}[name]()
  assert tt.num_params(twin) == sum(a.size for a in jax.tree.leaves(v["params"]))
  tt.load_twin_from_flax(twin, v)
  with torch.no_grad():
    want, _ = twin(tt.nhwc_to_torch(x))
  got, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
  chex.assert_trees_all_close(np.asarray(got), want.numpy(), atol=1e-4, rtol=1e-4)


class _RunsCode:
  """A pickle payload that calls os.system when unpickled (a crafted .pth.tar)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    import os
    return (os.system, (f"touch {self.marker}",))


def test_torch_file_that_would_run_code_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "pwned"
  bad = tmp_path / "evil.pth.tar"
  torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, bad)
  with pytest.raises(ConfigError, match="weights.path.*weights_only=True"):
    read_torch_state_dict(bad)
  assert not marker.exists()  # refused, not executed
  good = tmp_path / "ok.pth.tar"
  torch.save({"epoch": 3, "best": 1.5, "state_dict": {"w": torch.ones(2)}}, good)
  np.testing.assert_array_equal(read_torch_state_dict(good)["w"], np.ones(2, np.float32))
