"""Grad-CAM: known-answer localisation, exact intermediate gradients, batched == per image."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.analysis import gradcam as gc
from tl_jax.errors import ConfigError


class QuadrantNet(nn.Module):
  """Channel q of the 8x8 map lives only in quadrant q; class 0 reads channel 0, class 1 channel 3."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = nn.relu(nn.Conv(4, (2, 2), strides=2, name="conv")(x))
    h, w = a.shape[1] // 2, a.shape[2] // 2
    mask = np.zeros((1,) + a.shape[1:3] + (4,), np.float32)
    mask[:, :h, :w, 0] = mask[:, :h, w:, 1] = mask[:, h:, :w, 2] = mask[:, h:, w:, 3] = 1
    a = a * mask
    head = np.zeros((4, 2), np.float32)
    head[0, 0] = head[3, 1] = 1.0
    logits = jnp.mean(a, axis=(1, 2)) @ head
    return logits, {"masked": a}


class SmallCNN(nn.Module):
  """BN + ReLU + max-pool net; marks one map with `perturb` so its gradient can be read directly."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    feats = {}
    x = nn.Conv(8, (3, 3), name="c1")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn1")(x))
    x = self.perturb("block1", x)
    feats["block1"] = x
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(16, (3, 3), name="c2")(x))
    feats["block2"] = x
    return nn.Dense(5, name="head")(jnp.mean(x, axis=(1, 2))), feats


def _quadrant_mass(h, rows, cols):
  return h[:, rows, cols].sum(axis=(1, 2)) / h.sum(axis=(1, 2))


def test_known_answer_quadrants():
  model = QuadrantNet()
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
  v = model.init(jax.random.key(1), x)
  v = jax.tree.map(lambda p: jnp.abs(p) + 0.1, v)  # positive conv => every channel active
  tl = gc.gradcam(model, v, x, "masked", class_idx=0)
  br = gc.gradcam(model, v, x, "masked", class_idx=1)
  assert tl.shape == (3, 16, 16)
  assert tl.min() >= 0 and np.allclose(tl.max(axis=(1, 2)), 1.0)
  assert np.all(_quadrant_mass(tl, slice(0, 8), slice(0, 8)) > 0.9)
  assert np.all(_quadrant_mass(br, slice(8, 16), slice(8, 16)) > 0.9)
  # analytic gradient: logit_0 = mean_hw A_0, so dS/dA = 1/64 on channel 0, 0 elsewhere
  act, grad, _, _ = jax.jit(lambda v, x: gc.feature_gradients(model, v, x, "masked", 0))(v, x)
  want = np.zeros((3, 8, 8, 4), np.float32)
  want[..., 0] = 1 / 64
  chex.assert_trees_all_close(grad, want, atol=1e-7)


def test_gradient_equals_flax_perturbation_gradient():
  model = SmallCNN()
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
  v = model.init(jax.random.key(1), x)
  v = {**v, "batch_stats": jax.tree.map(lambda s: s + 0.3, v["batch_stats"])}
  cls = jnp.array([0, 3, 1, 4])
  fg = jax.jit(lambda v, x, c: gc.feature_gradients(model, v, x, "block1", c))
  act, grad, logits, got_cls = fg(v, x, cls)
  chex.assert_trees_all_equal(got_cls, cls)

  def score(pert):
    lg, _ = model.apply({**v, "perturbations": pert}, x, train=False)
    return jnp.sum(jnp.take_along_axis(lg, cls[:, None], 1))

  pert = jax.tree.map(jnp.zeros_like, v["perturbations"])
  want = jax.grad(score)(pert)["block1"]
  chex.assert_trees_all_close(grad, want, atol=1e-6)
  assert float(jnp.abs(grad).max()) > 1e-4
  # predicted class by default
  _, _, _, pred = jax.jit(lambda v, x: gc.feature_gradients(model, v, x, "block2"))(v, x)
  chex.assert_trees_all_equal(pred, jnp.argmax(logits, -1))


def test_batched_equals_per_image_and_jit_traces_once():
  model = SmallCNN()
  x = jax.random.normal(jax.random.key(2), (5, 12, 12, 3))
  v = model.init(jax.random.key(3), x)
  whole = gc.gradcam(model, v, x, "block2", batch_size=5)
  chunked = gc.gradcam(model, v, x, "block2", batch_size=2)  # padded last batch
  single = np.concatenate([gc.gradcam(model, v, x[i:i + 1], "block2") for i in range(5)])
  chex.assert_trees_all_close(whole, single, atol=1e-5)
  chex.assert_trees_all_close(chunked, single, atol=1e-5)
  fn = gc.make_gradcam_fn(model, v, x.shape, "block2", out_hw=(24, 24))
  h1, _, _ = fn(v, x, None)
  h2, _, _ = fn(v, x + 0.1, None)
  assert h1.shape == (5, 24, 24) and not np.allclose(h1, h2)
  assert fn._cache_size() == 1


def test_bad_feature_name():
  model = SmallCNN()
  x = jnp.zeros((1, 8, 8, 3))
  v = model.init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match="gradcam.feature"):
    gc.gradcam(model, v, x, "nope")


def test_panel_and_overlays(tmp_path):
  x = (np.asarray(jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))) * 255).astype(np.uint8)
  m1, m2 = SmallCNN(), QuadrantNet()
  v1 = m1.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
  v2 = jax.tree.map(lambda p: jnp.abs(p) + 0.1, m2.init(jax.random.key(2), jnp.zeros((1, 16, 16, 3))))
  prep = lambda b: jnp.asarray(b, jnp.float32) / 255.0
  entries = [gc.GradCamEntry("small", m1, v1, "block2", prep),
             gc.GradCamEntry("quad", m2, v2, "masked", prep, class_names=("tl", "br"))]
  heats = gc.gradcam_panel(entries, x, tmp_path / "panel.png")
  assert (tmp_path / "panel.png").stat().st_size > 1000
  assert set(heats) == {"small", "quad"} and heats["quad"].shape == (3, 16, 16)
  paths = gc.save_overlays(tmp_path / "ov", x, heats["small"])
  assert len(paths) == 3
  fig, _ = gc.panel_figure(entries, x, labels=[0, 1, 1], class_names=("tl", "br"))
  titles = [ax.get_title() for ax in fig.axes]
  assert titles[0] == "image\ntrue tl" and titles[3].startswith("image\n") is False
  pred = int(np.argmax(np.asarray(m2.apply(v2, prep(x[:1]))[0]), -1)[0])
  assert titles[2] == "quad\npred " + ("tl", "br")[pred] + (" \u2713" if pred == 0 else " \u2717")
  ov = gc.overlay(x[0], heats["quad"][0])
  assert ov.shape == (16, 16, 3) and 0 <= ov.min() and ov.max() <= 1


@pytest.mark.shared
def test_pretrained_resnet32_heat_falls_on_the_object():
  """Pointing check on real photos: the L2T-ww ResNet-32's Grad-CAM (true class, last block) puts
  more heat inside the Tiny ImageNet bounding box than the box's area share, and more than the
  same map rotated by 180 degrees (a control for a plain centre bias)."""
  import io
  from PIL import Image
  from tl_jax import paths
  from tl_jax.models import create_model
  from tl_jax.weights import resnet32_l2t as r32
  with np.load(paths.resolve("shared://data/tiny_imagenet/val.npz")) as z:
    raw, off, lab, box = z["jpeg_bytes"], z["offsets"], z["label"], z["bbox"]
  idx = np.arange(0, 4000, 20)
  imgs = np.stack([np.asarray(Image.open(io.BytesIO(raw[off[i]:off[i + 1]].tobytes()))
                              .convert("RGB").resize((32, 32), Image.BILINEAR)) for i in idx])
  mean, std = np.array(r32.IMAGENET_MEAN), np.array(r32.IMAGENET_STD)
  prep = lambda b: jnp.asarray(((b / 255.0 - mean) / std).astype(np.float32))
  heat = gc.gradcam(create_model("resnet32", 200), r32.load_resnet32_l2t(), imgs, "block14",
                    class_idx=lab[idx], preprocess=prep, batch_size=100, out_hw=(64, 64))
  inside, rotated, area = [], [], []
  for h, i in zip(heat, idx):
    x0, y0, x1, y1 = box[i]
    m = np.zeros((64, 64), bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    inside.append(h[m].sum() / h.sum())
    rotated.append(h[::-1, ::-1][m].sum() / h.sum())
    area.append(m.mean())
  inside, rotated, area = map(np.asarray, (inside, rotated, area))
  print(f"Grad-CAM mass in bbox {inside.mean():.3f}, rotated {rotated.mean():.3f}, "
        f"bbox area {area.mean():.3f}, images above area share {np.mean(inside > area):.2f}")
  assert inside.mean() > area.mean() + 0.08
  assert inside.mean() > rotated.mean() + 0.04
  assert np.mean(inside > area) > 0.75
