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


def _shapes(name, num_classes, batch=2, input_shape=None, **kw):
  """(variables, logits, features, forward-order feature names) of a model, shapes only."""
  model = models.create_model(name, num_classes, **kw)
  shape = input_shape or models.default_input_shape(name, kw.get("variant"))
  x = jnp.zeros((batch,) + tuple(shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
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
    bad.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ConfigError, match="model.input_shape"):
    models.create_model("lenet5", 10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
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
  x = jax.random.normal(jax.random.key(1), (3,) + hw + (cin,))
  kw = dict(features=cout, kernel_size=(k, k), strides=(stride, stride), padding=padding,
            feature_group_count=groups)
  fast = layers.Conv(**kw, small_map_pixels=0)
  im2col = layers.Conv(**kw, force_im2col=True)
  params = fast.init(jax.random.key(2), x)
  p2 = im2col.init(jax.random.key(2), x)
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
  x = jax.random.normal(jax.random.key(3), (2, 7, 7, 4))
  ours = layers.Conv(6, (3, 3), (2, 2), padding="SAME", force_im2col=True)
  ref = nn.Conv(6, (3, 3), (2, 2), padding="SAME")
  params = jax.jit(ref.init)(jax.random.key(4), x)
  chex.assert_trees_all_equal_shapes(params, jax.eval_shape(ours.init, jax.random.key(4), x))
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


def test_vgg9_small_maps_use_im2col():
  model = models.create_model("vgg9", 10)
  x = jnp.zeros((1, 32, 32, 3))
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  # 8 convs; the two on the 2x2 maps of the last block are im2col matmuls at 32x32 input.
  assert _num_xla_convs(lambda v, x: model.apply(v, x), v, x) == 6
  assert _num_xla_convs(lambda v, x: model.apply(v, x), v, jnp.zeros((1, 64, 64, 3))) == 8


# ----------------------------------------------------------------------------- modes

def test_batchnorm_train_vs_eval():
  model = models.create_model("tiny_cnn", 4)
  x = jax.random.uniform(jax.random.key(5), (4, 8, 8, 3))
  v = jax.jit(model.init)(jax.random.key(6), x)
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
  x = jax.random.normal(jax.random.key(7), (4, 32, 32, 1))
  v = jax.jit(model.init)(jax.random.key(8), x)
  run = jax.jit(lambda k: model.apply(v, x, train=True, rngs={"dropout": k})[0])
  a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
  chex.assert_trees_all_equal(a, b)
  assert not np.allclose(a, c)
  # Eval needs no rng and equals the dropout-free model with the same params.
  no_drop = models.create_model("lenet5", 10, variant="modern")
  chex.assert_trees_all_close(jax.jit(model.apply)(v, x)[0], jax.jit(no_drop.apply)(v, x)[0],
                              atol=0)
  with pytest.raises(flax.errors.InvalidRngError):
    model.apply(v, x, train=True)  # missing dropout rng


def test_lenet_classic_uses_tanh_and_avg_pool():
  x = jax.random.normal(jax.random.key(9), (2, 32, 32, 3))
  classic = models.create_model("lenet5", 10)
  v = jax.jit(classic.init)(jax.random.key(0), x)
  _, f = jax.jit(classic.apply)(v, x)
  conv1 = jax.jit(nn.Conv(6, (5, 5), padding="VALID").apply)({"params": v["params"]["conv1"]}, x)
  expect = nn.avg_pool(jnp.tanh(conv1), (2, 2), (2, 2))
  chex.assert_trees_all_close(f["block1"], expect, atol=1e-6)
  _, fm = jax.jit(models.create_model("lenet5", 10, variant="modern").apply)(v, x)
  chex.assert_trees_all_close(fm["block1"], nn.max_pool(jax.nn.relu(conv1), (2, 2), (2, 2)),
                              atol=1e-6)


def test_vgg9_init_statistics():
  model = models.create_model("vgg9", 100)
  v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  k = np.asarray(v["params"]["conv3"]["kernel"])  # 3x3x256x256: fan_out = 9 * 256
  assert abs(k.std() - math.sqrt(2 / (9 * 256))) < 0.02 * math.sqrt(2 / (9 * 256))
  assert abs(np.asarray(v["params"]["head"]["kernel"]).std() - 0.01) < 0.001
  assert not np.any(np.asarray(v["params"]["head"]["bias"]))
  assert not np.any(np.asarray(v["params"]["conv3"]["bias"]))
