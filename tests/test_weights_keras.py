"""Keras ResNet-50 / VGG-16 `.h5` import (legacy Keras-2 layout and Keras-3 `.weights.h5`).

Reference: Keras 3 itself (JAX backend) with random weights and random BN statistics; the tl_jax
model with imported weights must give the same log-probabilities (with top) and pooled/flattened
features (without top).
"""

from __future__ import annotations

import os
import pathlib
import sys

import chex
import jax
import numpy as np
import pytest

from tl_jax.errors import ConfigError
from tl_jax.models import create_model
from tl_jax.weights import keras_h5


def _keras():
  if "keras" in sys.modules and sys.modules["keras"].backend.backend() != "jax":
    pytest.skip("keras already imported with a non-JAX backend")
  os.environ["KERAS_BACKEND"] = "jax"
  keras = pytest.importorskip("keras")
  pytest.importorskip("h5py")
  return keras


def _randomize(keras_model, rng, he_kernels=False):
  """Random BN statistics; He-normal kernels (VGG-16: keeps activations O(1) through 16 layers)."""
  for layer in keras_model.layers:
    kind = layer.__class__.__name__
    if he_kernels and kind in ("Conv2D", "Dense"):
      k, b = layer.get_weights()
      fan_in = int(np.prod(k.shape[:-1]))
      layer.set_weights([rng.normal(0, np.sqrt(2.0 / fan_in), k.shape).astype(np.float32),
                         rng.normal(0, 0.05, b.shape).astype(np.float32)])
    if kind == "BatchNormalization":
      c = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                         rng.normal(0, 0.1, c), rng.uniform(0.5, 2.0, c)])


def _save_both(keras, model, stem):
  """Writes `stem.h5` (legacy Keras-2 layout) and `stem.weights.h5` (Keras 3)."""
  import h5py
  from keras.src.legacy.saving import legacy_h5_format
  with h5py.File(f"{stem}.h5", "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  model.save_weights(f"{stem}.weights.h5")
  model.save(f"{stem}.keras")  # the whole-model archive (zip holding model.weights.h5)
  return f"{stem}.h5", f"{stem}.weights.h5", f"{stem}.keras"


@pytest.fixture(scope="module")
def keras_ref(tmp_path_factory):
  """Both networks built once (Keras building is the slow part), files and reference outputs."""
  keras = _keras()
  d = tmp_path_factory.mktemp("keras")
  rng = np.random.default_rng(0)
  ref = {}
  for name, ctor, hw, feat_layer in (("resnet50", keras.applications.ResNet50, 64, "avg_pool"),
                                     ("vgg16", keras.applications.VGG16, 32, "flatten")):
    m = ctor(include_top=True, weights=None, input_shape=(hw, hw, 3))
    _randomize(m, rng, he_kernels=name == "vgg16")
    both = keras.Model(m.input, [m.output, m.get_layer(feat_layer).output])
    x = rng.uniform(-1, 1, (2, hw, hw, 3)).astype(np.float32)
    probs, feats = (np.asarray(a) for a in both(x, training=False))
    headless = keras.Model(m.input, m.get_layer(feat_layer).output)
    ref[name] = dict(x=x, probs=probs, feats=feats, hw=hw,
                     top=_save_both(keras, m, d / f"{name}_top"),
                     notop=_save_both(keras, headless, d / f"{name}_notop"))
  return ref


def _tl_model(name, top):
  if name == "resnet50":
    return create_model("resnet50", 1000 if top else None, pooling="avg")
  return create_model("vgg16", 1000 if top else None)


_FWD = {}


def _forward(name, top):
  """One jitted eval forward per (model, top), shared by both file layouts (compiling is slow)."""
  if (name, top) not in _FWD:
    m = _tl_model(name, top)
    _FWD[name, top] = jax.jit(lambda v, x: m.apply(v, x, train=False)[0])
  return _FWD[name, top]


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
@pytest.mark.parametrize("layout", [0, 1, 2], ids=["legacy_h5", "keras3_weights_h5",
                                                    "keras3_archive"])
def test_with_and_without_top_match_keras(keras_ref, name, layout):
  r = keras_ref[name]
  shape = (r["hw"], r["hw"], 3)
  top = _tl_model(name, True)
  v = keras_h5.load_keras_h5(r["top"][layout], top, input_shape=shape)
  logits = _forward(name, True)(v, r["x"])
  want = np.log(r["probs"])
  chex.assert_trees_all_close(np.asarray(jax.nn.log_softmax(logits)), want, atol=1e-4)
  assert float(np.std(want)) > 0.1  # the log-probabilities are far from uniform
  notop = _tl_model(name, False)
  for f in (r["notop"][layout], r["top"][layout]):  # a with-top file also fills a headless model
    vn = keras_h5.load_keras_h5(f, notop, input_shape=shape)
    feats = _forward(name, False)(vn, r["x"])
    scale = float(np.abs(r["feats"]).max())
    chex.assert_trees_all_close(np.asarray(feats) / scale, r["feats"] / scale, atol=1e-5)
  assert float(np.std(r["feats"])) > 1e-2


def test_every_layout_reads_identically(keras_ref):
  for name in ("resnet50", "vgg16"):
    a = keras_h5.read_keras_h5(keras_ref[name]["top"][0])
    for layout in (1, 2):
      chex.assert_trees_all_equal(a, keras_h5.read_keras_h5(keras_ref[name]["top"][layout]))
  assert set(a["block1_conv1"]) == {"kernel", "bias"}


def test_errors(keras_ref, tmp_path):
  r = keras_ref["vgg16"]
  with pytest.raises(ConfigError, match="missing_keys"):  # VGG weights into a ResNet-50
    keras_h5.load_keras_h5(r["notop"][0], _tl_model("resnet50", False))
  import h5py
  import shutil
  extra = tmp_path / "extra.h5"
  shutil.copy(r["notop"][0], extra)
  with h5py.File(extra, "r+") as f:
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
    f.attrs["layer_names"] = np.array([n.encode() for n in names + ["block6_conv1"]])
    g = f.create_group("block6_conv1")
    g.attrs["weight_names"] = [b"block6_conv1/kernel:0"]
    g.create_dataset("block6_conv1/kernel:0", data=np.zeros((3, 3, 512, 512), np.float32))
  with pytest.raises(ConfigError, match="extra_keys.*block6_conv1/kernel"):
    keras_h5.load_keras_h5(extra, _tl_model("vgg16", False))
  with pytest.raises(ConfigError, match="shape"):  # with-top VGG built at 32x32, model at 224
    keras_h5.load_keras_h5(r["top"][0], _tl_model("vgg16", True))
  with pytest.raises(ConfigError, match="missing.h5"):
    keras_h5.load_keras_h5(tmp_path / "missing.h5", _tl_model("vgg16", False))
  bad = tmp_path / "bad.h5"
  bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
  with pytest.raises(ConfigError, match="corrupt"):
    keras_h5.read_keras_h5(bad)


def test_caffe_preprocessing_matches_keras(keras_ref):
  keras = _keras()
  from tl_jax.data import augment
  x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
  want = keras.applications.resnet50.preprocess_input(x.copy())
  np.testing.assert_allclose(np.asarray(augment.normalize(x, "caffe")), want, atol=1e-4)
  np.testing.assert_allclose(np.asarray(augment.normalize(x, "caffe")),
                             keras.applications.vgg16.preprocess_input(x.copy()), atol=1e-4)


def test_truncated_keras_archive_is_one_error(keras_ref, tmp_path):
  bad = tmp_path / "bad.keras"
  data = pathlib.Path(keras_ref["vgg16"]["notop"][2]).read_bytes()
  bad.write_bytes(data[: len(data) // 2])
  with pytest.raises(ConfigError, match="weights.path"):
    keras_h5.read_keras_h5(bad)
