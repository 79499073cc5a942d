"""Model zoo: exact param counts, feature names/shapes, im2col conv equality, BN and dropout modes.

Big models are only traced (jax.eval_shape); real forward passes run at tiny sizes.
"""

from __future__ import annotations

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax
from flax import linen as nn
from flax import traverse_util

from tl_jax import models
from tl_jax.errors import ConfigError
from tl_jax.models import layers
from tl_jax.models.efficientnet import LITE0_BLOCKS


def _key(seed: int) -> jax.Array:
  # rbg keys: with jax 0.10's partitionable threefry, compiling an init's random draws takes
  # ~10x longer on XLA:CPU (8 s vs 0.8 s for tiny_cnn). Models are impl-agnostic.
  return jax.random.key(seed, impl="rbg")


def _shapes(name, num_classes, batch=2, input_shape=None, **kw):
  """(variables, logits, features, forward-order feature names) of a model, shapes only."""
  model = models.create_model(name, num_classes, **kw)
  shape = input_shape or models.default_input_shape(name, kw.get("variant"))
  x = jnp.zeros((batch,) + tuple(shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(_key(0), x))
  order = []

  def fwd(v, x):
    logits, feats = model.apply(v, x)
    order.append(list(feats))  # insertion order, captured while tracing
    return logits, feats

  logits, feats = jax.eval_shape(fwd, variables, x)
  return variables, logits, feats, order[0]


def _flat(tree):
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def _conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def _dense(nin, nout):
  return nin * nout + nout


# ----------------------------------------------------------------------------- param counts

def test_param_count_lenet5_by_hand():
  # conv1 5x5x1x6, conv2 5x5x6x16, fc 400-120-84-10 (5*5*16 = 400 after two 2x2 pools).
  expected = _conv(5, 1, 6) + _conv(5, 6, 16) + _dense(400, 120) + _dense(120, 84) + _dense(84, 10)
  assert expected == 61_706
  for variant in ("classic", "modern"):
    v, *_ = _shapes("lenet5", 10, variant=variant)
    assert models.count_params(v["params"]) == expected
  v, *_ = _shapes("lenet5", 10, input_shape=(32, 32, 3))
  assert models.count_params(v["params"]) == expected + 5 * 5 * 2 * 6
  assert "batch_stats" not in v


def test_param_count_alexnet_by_hand():
  convs = (_conv(11, 3, 96) + _conv(5, 96, 256) + _conv(3, 256, 384) + _conv(3, 384, 384)
           + _conv(3, 384, 256))
  expected = convs + _dense(6 * 6 * 256, 4096) + _dense(4096, 4096) + _dense(4096, 1000)
  v, *_ = _shapes("alexnet", 1000)
  assert models.count_params(v["params"]) == expected == 62_378_344
  v, *_ = _shapes("alexnet", 10, variant="small")
  convs_small = convs - _conv(11, 3, 96) + _conv(5, 3, 96)
  assert models.count_params(v["params"]) == (
      convs_small + _dense(4 * 4 * 256, 1024) + _dense(1024, 1024) + _dense(1024, 10))


@pytest.mark.parametrize("name,num_classes,kw,expected,with_stats", [
    ("vgg9", 100, {}, 9_277_284, False),            # L2T-ww vgg9_bn, used params
    ("vgg16", 1000, {}, 138_357_544, False),        # Keras VGG16
    ("vgg16", None, {}, 14_714_688, False),         # Keras VGG16 include_top=False
    ("vgg16", None, {"pooling": "avg"}, 14_714_688, False),
    ("resnet32", 200, {}, 479_272, False),          # = checkpoint trainable arrays (see resnet.py)
    ("resnet50", 1000, {}, 25_636_712, True),       # Keras count incl. BN moving stats
    ("resnet50", None, {}, 23_587_712, True),
    ("efficientnet_lite0", 1000, {}, 4_652_008, False),
])
def test_param_count_exact(name, num_classes, kw, expected, with_stats):
  v, *_ = _shapes(name, num_classes, batch=1, **kw)
  got = models.count_params(v) if with_stats else models.count_params(v["params"])
  assert got == expected


def test_param_count_resnet32_vs_reference_479281():
  """The reference PyTorch CResNet reports 479,281 parameters with a 200-way head; 9 of them are
  its `alphas` list, which forward never uses and the checkpoint does not hold. tl_jax builds only
  the used parameters: 479,272 = every trainable array of the checkpoint."""
  v, *_ = _shapes("resnet32", 200, batch=1)
  unused_reference_alphas = 9
  assert models.count_params(v["params"]) + unused_reference_alphas == 479_281


def test_param_count_resnet50_trainable():
  v, *_ = _shapes("resnet50", 1000, batch=1)
  assert models.count_params(v["params"]) == 25_583_592  # Keras "trainable params"


# ----------------------------------------------------------------------------- features

FEATURES = {
    ("lenet5", 10, ()): {"block1": (14, 14, 6), "block2": (5, 5, 16), "fc1": (120,),
                         "fc2": (84,)},
    ("alexnet", 1000, ()): {"block1": (27, 27, 96), "block2": (13, 13, 256),
                            "block3": (13, 13, 384), "block4": (13, 13, 384),
                            "block5": (6, 6, 256), "fc1": (4096,), "fc2": (4096,)},
    ("alexnet", 10, (("variant", "small"),)): {
        "block1": (16, 16, 96), "block2": (8, 8, 256), "block3": (8, 8, 384),
        "block4": (8, 8, 384), "block5": (4, 4, 256), "fc1": (1024,), "fc2": (1024,)},
    ("vgg9", 100, ()): {"pool0": (32, 32, 64), "pool1": (16, 16, 128), "pool2": (8, 8, 256),
                        "pool3": (4, 4, 512), "pool4": (2, 2, 512)},
    ("vgg16", None, ()): {"block1": (224, 224, 64), "block2": (112, 112, 128),
                          "block3": (56, 56, 256), "block4": (28, 28, 512),
                          "block5": (14, 14, 512)},
    ("resnet32", 200, ()): {**{f"block{i}": (32, 32, 16) for i in range(5)},
                            **{f"block{i}": (16, 16, 32) for i in range(5, 10)},
                            **{f"block{i}": (8, 8, 64) for i in range(10, 15)}},
    ("resnet50", 1000, ()): {"conv1": (112, 112, 64), "conv2": (56, 56, 256),
                             "conv3": (28, 28, 512), "conv4": (14, 14, 1024),
                             "conv5": (7, 7, 2048)},
    ("efficientnet_lite0", 1000, ()): {
        "stage0": (112, 112, 32), "stage1": (112, 112, 16), "stage2": (56, 56, 24),
        "stage3": (28, 28, 40), "stage4": (14, 14, 80), "stage5": (14, 14, 112),
        "stage6": (7, 7, 192), "stage7": (7, 7, 320), "stage8": (7, 7, 1280)},
    ("tiny_cnn", 10, ()): {"conv0": (16, 16, 8), "conv1": (8, 8, 16)},
    ("tiny_mlp", 10, ()): {"fc0": (32,), "fc1": (32,)},
}
LOGITS = {("vgg16", None, ()): (25088,)}


@pytest.mark.parametrize("key", list(FEATURES), ids=lambda k: f"{k[0]}-{k[1]}-{dict(k[2])}")
def test_feature_names_shapes_and_order(key):
  name, num_classes, kw = key
  _, logits, feats, order = _shapes(name, num_classes, **dict(kw))
  expected = FEATURES[key]
  assert order == list(expected)  # forward order as built
  assert models.ordered_feature_names(feats) == order  # recoverable after jit's key sort
  assert {k: feats[k].shape[1:] for k in order} == expected
  assert logits.shape[1:] == LOGITS.get(key, (num_classes,))
  assert all(f.dtype == jnp.float32 for f in feats.values())


def test_resnet32_stage_features_and_any_input_size():
  assert models.ResNet32.stage_features == ("block4", "block9", "block14")
  _, logits, feats, _ = _shapes("resnet32", 200, input_shape=(96, 96, 3))
  assert logits.shape == (2, 200)
  assert [feats[k].shape[1:3] for k in models.ResNet32.stage_features] == [
      (96, 96), (48, 48), (24, 24)]


@pytest.mark.parametrize("name,pooling,shape", [
    ("vgg16", "avg", (512,)), ("vgg16", "max", (512,)), ("vgg16", None, (2 * 2 * 512,)),
    ("resnet50", "avg", (2048,)), ("resnet50", "max", (2048,)), ("resnet50", None, (4 * 2048,))])
def test_no_top_pooling(name, pooling, shape):
  v, logits, _, _ = _shapes(name, None, input_shape=(64, 64, 3), pooling=pooling)
  assert logits.shape == (2,) + shape
  assert not any(k.startswith("predictions") for k in v["params"])


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_head_regex_selects_exactly_the_head(name):
  v, *_ = _shapes(name, 7, batch=1)
  paths = list(_flat(v["params"]))
  head = [p for p in paths if re.search(models.head_regex(name), p)]
  assert sorted(head) == sorted(f"{models.create_model(name, 7).head_name}/{w}"
                                for w in ("kernel", "bias"))
  assert _flat(v["params"])[head[0].rsplit("/", 1)[0] + "/kernel"].shape[-1] == 7


def test_registry_errors():
  with pytest.raises(ConfigError, match="model.name"):
    models.create_model("resnet18", 10)
  with pytest.raises(ConfigError, match="model.name"):
    models.head_regex("nope")
  with pytest.raises(ConfigError, match="model.name"):
    models.default_input_shape("nope")
  with pytest.raises(ConfigError, match="model.depth"):
    models.create_model("vgg9", 10, depth=3)
  with pytest.raises(ConfigError, match="model.num_classes"):
    models.create_model("vgg9", 0)
  bad = models.create_model("lenet5", 10, variant="fancy", in_channels=1)  # in_channels ignored
  with pytest.raises(ConfigError, match="model.variant"):
    bad.init(_key(0), jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ConfigError, match="model.input_shape"):
    models.create_model("lenet5", 10).init(_key(0), jnp.zeros((1, 28, 28, 1)))
  assert models.default_input_shape("vgg9") == (32, 32, 3)
  assert models.default_input_shape("resnet50") == (224, 224, 3)
  assert models.default_input_shape("lenet5") == (32, 32, 1)


# ----------------------------------------------------------------------------- im2col conv

@pytest.mark.parametrize("hw,k,stride,padding,groups,cin,cout", [
    ((2, 2), 3, 1, 1, 1, 8, 6),          # VGG-9 last block case
    ((1, 1), 3, 1, 1, 1, 5, 4),
    ((5, 7), 3, 2, "SAME", 1, 4, 6),     # asymmetric TF padding, non-square
    ((6, 6), 5, 2, "SAME", 6, 6, 6),     # depthwise (EfficientNet)
    ((4, 4), 1, 2, "VALID", 1, 3, 5),    # 1x1 projection shortcut
    ((5, 5), 3, 1, ((2, 0), (1, 1)), 2, 4, 6),  # explicit pads, grouped
])
def test_im2col_equals_lax_conv(hw, k, stride, padding, groups, cin, cout):
  x = jax.random.normal(_key(1), (3,) + hw + (cin,))
  kw = dict(features=cout, kernel_size=(k, k), strides=(stride, stride), padding=padding,
            feature_group_count=groups)
  fast = layers.Conv(**kw, small_map_pixels=0)
  im2col = layers.Conv(**kw, force_im2col=True)
  params = fast.init(_key(2), x)
  p2 = im2col.init(_key(2), x)
  chex.assert_trees_all_equal_shapes(params, p2)
  params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # non-zero bias

  @jax.jit
  def both(params, x):
    out = {}
    for tag, mod in (("fast", fast), ("im2col", im2col)):
      loss = lambda p, x, mod=mod: jnp.sum(jnp.sin(mod.apply(p, x)))
      out[tag] = (mod.apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x))
    return out

  out = both(params, x)
  assert out["fast"][0].shape[-1] == cout
  chex.assert_trees_all_close(out["im2col"], out["fast"], atol=1e-5)


def test_conv_matches_flax_conv_layout():
  x = jax.random.normal(_key(3), (2, 7, 7, 4))
  ours = layers.Conv(6, (3, 3), (2, 2), padding="SAME", force_im2col=True)
  ref = nn.Conv(6, (3, 3), (2, 2), padding="SAME")
  params = jax.jit(ref.init)(_key(4), x)
  chex.assert_trees_all_equal_shapes(params, jax.eval_shape(ours.init, _key(4), x))
  chex.assert_trees_all_close(jax.jit(ours.apply)(params, x), jax.jit(ref.apply)(params, x),
                              atol=1e-5)


def test_tf_same_padding_is_asymmetric():
  assert layers.explicit_padding("SAME", (224, 224), (3, 3), (2, 2)) == [(0, 1), (0, 1)]
  assert layers.explicit_padding("SAME", (56, 56), (5, 5), (2, 2)) == [(1, 2), (1, 2)]
  assert layers.explicit_padding("SAME", (14, 14), (5, 5), (1, 1)) == [(2, 2), (2, 2)]
  assert layers.explicit_padding(1, (8, 8), (3, 3), (1, 1)) == [(1, 1), (1, 1)]
  with pytest.raises(ConfigError, match="conv.padding"):
    layers.explicit_padding("CIRCULAR", (8, 8), (3, 3), (1, 1))


def _num_xla_convs(fn, *args):
  return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")


@pytest.mark.parametrize("hw,stride,threshold,uses_xla_conv", [
    (2, 1, 4, False), (4, 2, 4, False),   # 2x2 outputs, also from a stride-2 conv
    (4, 1, 4, True), (3, 1, 4, True),     # 16 / 9 output pixels
    (3, 1, 9, False), (2, 1, 0, True)])   # configurable; 0 disables im2col
def test_conv_dispatch_by_output_size(hw, stride, threshold, uses_xla_conv):
  # 40 features: 3 * 40 channels is above layers.TOEPLITZ_MAX_CIN_COUT, so on CPU the maps
  # above the threshold are XLA convs (fewer channels would be banded matmuls)
  conv = layers.Conv(40, (3, 3), (stride, stride), padding=1, small_map_pixels=threshold)
  x = jax.ShapeDtypeStruct((1, hw, hw, 3), jnp.float32)
  params = jax.eval_shape(conv.init, _key(0), x)
  assert _num_xla_convs(conv.apply, params, x) == int(uses_xla_conv)


def test_ynn_convolutions_reads_the_last_ynn_fusion_flag():
  f = layers.YNN_FUSION_FLAG
  assert layers.ynn_convolutions("")  # XLA's default: YNNPACK convolutions on
  assert layers.ynn_convolutions("--xla_cpu_use_onednn=false")
  assert not layers.ynn_convolutions(f"{f}=-individual_convolution")
  assert not layers.ynn_convolutions(f"{f}=")  # every YNNPACK fusion off
  assert not layers.ynn_convolutions(f"{f}=individual_dot")  # a plain list replaces the set
  assert layers.ynn_convolutions(f"{f}=individual_dot,individual_convolution")
  assert layers.ynn_convolutions(f"{f}=-individual_dot")
  assert layers.ynn_convolutions(f"{f}=-individual_convolution {f}=+individual_convolution")
  assert not layers.ynn_convolutions(f"{f}=individual_convolution {f}=-individual_convolution")


def test_vgg9_im2col_default_follows_backend_flags_and_order(monkeypatch):
  from tl_jax.models import vgg
  from tl_jax.runtime import NO_YNN_CONV
  monkeypatch.setenv("XLA_FLAGS", "")
  assert vgg.default_im2col_max_pixels("gpu") == layers.SMALL_MAP_PIXELS
  assert vgg.default_im2col_max_pixels("cpu") == vgg.IM2COL_CPU_MAX_PIXELS
  monkeypatch.setenv("XLA_FLAGS", NO_YNN_CONV)  # as tl_jax.runtime's 'auto'
  assert vgg.default_im2col_max_pixels("cpu") == layers.SMALL_MAP_PIXELS
  assert vgg.default_im2col_max_pixels("tpu") == layers.SMALL_MAP_PIXELS
  with layers.second_order():
    assert layers.is_second_order()
    assert vgg.default_im2col_max_pixels("cpu") == vgg.IM2COL_CPU_MAX_PIXELS
    with layers.second_order(False):
      assert vgg.default_im2col_max_pixels("cpu") == layers.SMALL_MAP_PIXELS
  assert not layers.is_second_order()
  if jax.default_backend() == "cpu":  # the model reads it while tracing
    model = models.create_model("vgg9", 10)
    x = jnp.zeros((1, 32, 32, 3))
    v = jax.eval_shape(lambda: model.init(_key(0), x))
    assert _num_xla_convs(lambda v, x: model.apply(v, x), v, x) == 6  # all but the 2x2 maps
    with layers.second_order():
      assert _num_xla_convs(lambda v, x: model.apply(v, x), v, x) == 1


def test_vgg9_small_maps_use_im2col(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")  # XLA's default flags (YNNPACK convolutions on)
  model = models.create_model("vgg9", 10)
  x = jnp.zeros((1, 32, 32, 3))
  v = jax.eval_shape(lambda: model.init(_key(0), x))
  # 8 convs; only the first (32x32 output) is an XLA conv, the others (<= 16x16) are im2col.
  assert _num_xla_convs(lambda v, x: model.apply(v, x), v, x) == 1
  # 64x64 input: convs with 32x32 or larger outputs (conv0, conv1) stay XLA convs.
  assert _num_xla_convs(lambda v, x: model.apply(v, x), v, jnp.zeros((1, 64, 64, 3))) == 2
  legacy = models.create_model("vgg9", 10, im2col_max_pixels=4)  # only the 2x2 maps
  assert _num_xla_convs(lambda v, x: legacy.apply(v, x), v, x) == 6


def test_vgg9_im2col_threshold_changes_nothing_but_speed():
  """Same outputs, parameter gradients and input-gradient HVPs (second order, as in L2T's
  look-ahead) whether the convs run as XLA convs or as im2col matmuls. In float64: in float32
  the HVP of a conv bias that feeds a train-mode BatchNorm is analytically zero and numerically
  roundoff (~1e-3), which no relative tolerance can compare."""
  with jax.enable_x64(True):
    _im2col_equivalence()


def _im2col_equivalence():
  cfg = (8, "M", 8, "M", 16, "M")
  x = jax.random.normal(_key(3), (2, 16, 16, 3), jnp.float64)
  fast = models.VGG9(num_classes=3, cfg=cfg, im2col_max_pixels=0)
  mm = models.VGG9(num_classes=3, cfg=cfg, im2col_max_pixels=1 << 20)
  v = models.init_variables(fast, _key(4), x)
  assert jax.tree.leaves(v)[0].dtype == jnp.float64

  def loss(m, p):
    logits, feats = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                            mutable=["batch_stats"])[0]
    return jnp.sum(logits ** 2) + jnp.sum(feats["pool1"] ** 2)

  def tree_vdot(a, b):
    return sum(jnp.vdot(x_, y_) for x_, y_ in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  def hvp(m, p):  # d/dp <grad_p loss, u>: second order through every conv
    u = jax.tree.map(jnp.ones_like, p)
    return jax.grad(lambda q: tree_vdot(jax.grad(lambda r: loss(m, r))(q), u))(p)

  chex.assert_trees_all_close(fast.apply(v, x)[0], mm.apply(v, x)[0], rtol=1e-10, atol=1e-10)
  chex.assert_trees_all_close(jax.grad(lambda p: loss(fast, p))(v["params"]),
                              jax.grad(lambda p: loss(mm, p))(v["params"]), rtol=1e-9, atol=1e-9)
  chex.assert_trees_all_close(hvp(fast, v["params"]), hvp(mm, v["params"]), rtol=1e-8, atol=1e-8)


# ----------------------------------------------------------------------------- modes

def test_batchnorm_train_vs_eval():
  model = models.create_model("tiny_cnn", 4)
  x = jax.random.uniform(_key(5), (4, 8, 8, 3))
  v = jax.jit(model.init)(_key(6), x)
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  (logits_t, feats_t), upd = apply(v, x, train=True, mutable=("batch_stats",))
  # Running mean moves 10% (torch momentum 0.1) toward the batch mean of conv0's output.
  pre_bn = jax.jit(layers.Conv(8, (3, 3), padding=1).apply)({"params": v["params"]["conv0"]}, x)
  chex.assert_trees_all_close(upd["batch_stats"]["bn0"]["mean"],
                              0.1 * pre_bn.mean(axis=(0, 1, 2)), atol=1e-6)
  # Train mode normalises with batch statistics: every channel of BN's output has mean ~beta=0.
  bn_out = (pre_bn - pre_bn.mean((0, 1, 2))) / jnp.sqrt(pre_bn.var((0, 1, 2)) + 1e-5)
  chex.assert_trees_all_close(feats_t["conv0"], jax.nn.relu(bn_out), atol=1e-5)
  # Eval mode uses the running statistics (init: mean 0, var 1) and changes nothing.
  logits_e, feats_e = apply(v, x, train=False)
  chex.assert_trees_all_close(feats_e["conv0"], jax.nn.relu(pre_bn / jnp.sqrt(1 + 1e-5)),
                              atol=1e-5)
  assert not np.allclose(logits_e, logits_t, atol=1e-3)
  logits_e2, _ = apply({"params": v["params"], "batch_stats": upd["batch_stats"]}, x)
  assert not np.allclose(logits_e2, logits_e, atol=1e-4)


def test_dropout_deterministic_under_key():
  model = models.create_model("lenet5", 10, variant="modern", dropout=0.3)
  x = jax.random.normal(_key(7), (4, 32, 32, 1))
  v = jax.jit(model.init)(_key(8), x)
  run = jax.jit(lambda k: model.apply(v, x, train=True, rngs={"dropout": k})[0])
  a, b, c = run(_key(1)), run(_key(1)), run(_key(2))
  chex.assert_trees_all_equal(a, b)
  assert not np.allclose(a, c)
  # Eval needs no rng and equals the dropout-free model with the same params.
  no_drop = models.create_model("lenet5", 10, variant="modern")
  chex.assert_trees_all_close(jax.jit(model.apply)(v, x)[0], jax.jit(no_drop.apply)(v, x)[0],
                              atol=0)
  with pytest.raises(flax.errors.InvalidRngError):
    model.apply(v, x, train=True)  # missing dropout rng


def test_lenet_classic_uses_tanh_and_avg_pool():
  x = jax.random.normal(_key(9), (2, 32, 32, 3))
  classic = models.create_model("lenet5", 10)
  v = jax.jit(classic.init)(_key(0), x)
  _, f = jax.jit(classic.apply)(v, x)
  conv1 = jax.jit(nn.Conv(6, (5, 5), padding="VALID").apply)({"params": v["params"]["conv1"]}, x)
  expect = nn.avg_pool(jnp.tanh(conv1), (2, 2), (2, 2))
  chex.assert_trees_all_close(f["block1"], expect, atol=1e-6)
  _, fm = jax.jit(models.create_model("lenet5", 10, variant="modern").apply)(v, x)
  chex.assert_trees_all_close(fm["block1"], nn.max_pool(jax.nn.relu(conv1), (2, 2), (2, 2)),
                              atol=1e-6)


def test_vgg9_init_statistics():
  model = models.create_model("vgg9", 100)
  v = jax.jit(model.init)(_key(0), jnp.zeros((1, 8, 8, 3)))
  k = np.asarray(v["params"]["conv3"]["kernel"])  # 3x3x256x256: fan_out = 9 * 256
  assert abs(k.std() - math.sqrt(2 / (9 * 256))) < 0.02 * math.sqrt(2 / (9 * 256))
  assert abs(np.asarray(v["params"]["head"]["kernel"]).std() - 0.01) < 0.001
  assert not np.any(np.asarray(v["params"]["head"]["bias"]))
  assert not np.any(np.asarray(v["params"]["conv3"]["bias"]))


# ----------------------------------------------------------------------------- pretrained layouts

def _torch_key_to_flax(key: str) -> tuple[str, str]:
  """The naming rule documented in resnet.py / efficientnet.py: (collection, '/'-joined path)."""
  parts = [p.lstrip("_") for p in key.split(".")]
  joined = []
  for p in parts:
    if p.isdigit():
      joined[-1] += f"_{p}"
    else:
      joined.append(p)
  *module, leaf = joined
  is_bn = re.fullmatch(r"bn\d*|downsample_1", module[-1]) is not None
  collection, leaf = {
      "weight": ("params", "scale" if is_bn else "kernel"), "bias": ("params", "bias"),
      "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}[leaf]
  return collection, "/".join(module + [leaf])


def _to_flax_layout(a: np.ndarray) -> np.ndarray:
  return a.transpose(2, 3, 1, 0) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def _load_into(variables, npz, skip=("num_batches_tracked",)):
  """Builds a variables dict from a PyTorch-layout npz; asserts every array lands 1:1."""
  flat = {c: _flat(variables[c]) for c in variables}
  out = {c: {} for c in variables}
  for key in npz.files:
    if key.endswith(skip):
      continue
    collection, path = _torch_key_to_flax(key)
    value = _to_flax_layout(np.asarray(npz[key], np.float32))
    assert path in flat[collection], key
    assert flat[collection][path].shape == value.shape, key
    out[collection][path] = value
  for c in variables:
    assert sorted(out[c]) == sorted(flat[c]), c  # nothing missing either
  return {c: traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out[c].items()})
          for c in out}


def _torch_bn(F, sd, p, y, eps):
  return F.batch_norm(y, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                      sd[p + ".bias"], False, 0.0, eps)


@pytest.mark.shared
def test_resnet32_matches_l2tww_checkpoint_in_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  from tl_jax.paths import resolve
  npz = np.load(resolve("shared://weights/resnet32_tinyimagenet_l2tww.npz"))
  model = models.create_model("resnet32", 200)
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  variables = _load_into(jax.eval_shape(model.init, _key(0), x), npz)
  logits, feats = jax.jit(model.apply)(variables, x)

  sd = {k: torch.from_numpy(np.asarray(npz[k])) for k in npz.files}
  with torch.no_grad():
    y = torch.from_numpy(x).permute(0, 3, 1, 2)
    y = F.relu(_torch_bn(F, sd, "bn1", F.conv2d(y, sd["conv1.weight"], sd["conv1.bias"],
                                                  padding=1), 1e-5))
    blocks = []
    for first, rest in (("block1", "blocks2"), ("block3", "blocks4"), ("block5", "blocks6")):
      blocks += [first] + [f"{rest}.{i}" for i in range(4)]
    torch_feats = []
    for b in blocks:
      s = 2 if b in ("block3", "block5") else 1
      h = F.relu(_torch_bn(F, sd, b + ".bn1", F.conv2d(y, sd[b + ".conv1.weight"], stride=s,
                                                       padding=1), 1e-5))
      h = _torch_bn(F, sd, b + ".bn2", F.conv2d(h, sd[b + ".conv2.weight"], padding=1), 1e-5)
      if b + ".downsample.0.weight" in sd:
        y = _torch_bn(F, sd, b + ".downsample.1",
                      F.conv2d(y, sd[b + ".downsample.0.weight"], stride=s), 1e-5)
      y = F.relu(h + y)
      torch_feats.append(y.permute(0, 2, 3, 1).numpy())
    torch_logits = F.linear(y.mean((2, 3)), sd["fc.weight"], sd["fc.bias"]).numpy()
  chex.assert_trees_all_close(logits, torch_logits, atol=2e-4, rtol=1e-4)
  for i in (0, 4, 5, 9, 14):
    chex.assert_trees_all_close(feats[f"block{i}"], torch_feats[i], atol=2e-4, rtol=1e-4)


def _tf_same(F, y, k, s):
  h = y.shape[-1]
  out = -(-h // s)
  total = max((out - 1) * s + k - h, 0)
  return F.pad(y, [total // 2, total - total // 2] * 2)


@pytest.mark.shared
def test_efficientnet_lite0_matches_pretrained_layout_in_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  import json
  from tl_jax.paths import resolve
  root = resolve("shared://data/efficientnet_lite0_imagenet")
  arch = json.loads((root / "architecture.json").read_text())
  assert tuple((b["kernel"], b["stride"], b["expand"], b["cin"], b["cout"])
               for b in arch["blocks"]) == LITE0_BLOCKS
  assert all(b["residual"] == (b["stride"] == 1 and b["cin"] == b["cout"]) for b in arch["blocks"])
  npz = np.load(root / "weights.npz")
  model = models.create_model("efficientnet_lite0", 1000)
  x = np.random.default_rng(1).uniform(-1, 1, size=(2, 64, 64, 3)).astype(np.float32)
  variables = _load_into(jax.eval_shape(model.init, _key(0), x), npz)
  assert models.count_params(variables["params"]) == arch["parameters"]
  logits, feats = jax.jit(model.apply)(variables, x)

  sd = {k: torch.from_numpy(np.asarray(npz[k])) for k in npz.files}
  bn = lambda p, y: _torch_bn(F, sd, p, y, 1e-3)
  with torch.no_grad():
    y = torch.from_numpy(x).permute(0, 3, 1, 2)
    y = F.relu6(bn("_bn0", F.conv2d(_tf_same(F, y, 3, 2), sd["_conv_stem.weight"], stride=2)))
    for i, (k, s, e, cin, cout) in enumerate(LITE0_BLOCKS):
      p = f"_blocks.{i}."
      h = y
      if e != 1:
        h = F.relu6(bn(p + "_bn0", F.conv2d(h, sd[p + "_expand_conv.weight"])))
      h = F.relu6(bn(p + "_bn1", F.conv2d(_tf_same(F, h, k, s), sd[p + "_depthwise_conv.weight"],
                                          stride=s, groups=h.shape[1])))
      h = bn(p + "_bn2", F.conv2d(h, sd[p + "_project_conv.weight"]))
      y = h + y if (s == 1 and cin == cout) else h
    y = F.relu6(bn("_bn1", F.conv2d(y, sd["_conv_head.weight"])))
    head = y.permute(0, 2, 3, 1).numpy()
    torch_logits = F.linear(y.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"]).numpy()
  chex.assert_trees_all_close(feats["stage8"], head, atol=1e-3, rtol=1e-3)
  chex.assert_trees_all_close(logits, torch_logits, atol=1e-3, rtol=1e-3)
