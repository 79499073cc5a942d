"""`tl_jax.runtime`: the XLA:CPU flags (`train.xla_cpu_flags`) resolve as documented,
reach XLA when set before the backend starts (a fresh process compiles differently), and leave the
caller's own XLA_FLAGS in force."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tl_jax.config import base_config
from tl_jax import runtime
from tl_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(model="lenet5", setting=None):
  c = base_config()
  c.model.name = model
  if setting is not None:
    c.train.xla_cpu_flags = setting
  return c


def test_flags_resolve_as_documented():
  # YNNPACK's dots help EfficientNet-Lite0's and ResNet-50's 1x1 convolutions; its convs help none
  for model in ("lenet5", "resnet32", "efficientnet_lite0", "tiny_cnn"):
    assert runtime.xla_cpu_flags(_config(model)) == runtime.AUTO_FLAGS
  assert runtime.AUTO_FLAGS == (runtime.NO_YNN_CONV, runtime.CONCURRENCY_SCHEDULER)
  assert runtime.xla_cpu_flags(_config("lenet5", "none")) == ()
  assert runtime.xla_cpu_flags(_config("vgg9", "--xla_a=1 --xla_b=2")) == ("--xla_a=1",
                                                                           "--xla_b=2")
  for bad in ("fast", "--xla_a=1 -O3"):
    with pytest.raises(ConfigError, match=r"^train\.xla_cpu_flags: got .*allowed: 'auto'"):
      runtime.xla_cpu_flags(_config("vgg9", bad))

  # the benchmark scripts' --xla-flags resolve the same way, naming their own option
  assert runtime.parse_xla_cpu_flags("auto", "--xla-flags") == runtime.AUTO_FLAGS
  with pytest.raises(ConfigError, match=r"^--xla-flags: got 'fast'"):
    runtime.parse_xla_cpu_flags("fast", "--xla-flags")


def test_auto_flags_turn_ynn_convolutions_off_for_the_models():
  """What the models read (layers.ynn_convolutions) agrees with what 'auto' sets."""
  from tl_jax.models import layers
  assert not layers.ynn_convolutions(" ".join(runtime.AUTO_FLAGS))
  assert layers.ynn_convolutions("")


def test_apply_puts_the_models_flags_before_the_callers(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot --xla_z=1")
  got = runtime.apply_xla_cpu_flags(_config("lenet5"))
  assert got == os.environ["XLA_FLAGS"]
  # the caller's own setting of the same flag comes last: XLA keeps the last one it reads
  assert got.split() == [*runtime.AUTO_FLAGS, "--xla_cpu_experimental_ynn_fusion_type=dot",
                         "--xla_z=1"]
  assert runtime.apply_xla_cpu_flags(_config("lenet5")) == got  # idempotent
  monkeypatch.setenv("XLA_FLAGS", runtime.NO_YNN_CONV)  # flags already there are not repeated
  assert runtime.apply_xla_cpu_flags(_config("lenet5")) == " ".join(
      [runtime.CONCURRENCY_SCHEDULER, runtime.NO_YNN_CONV])
  monkeypatch.delenv("XLA_FLAGS")
  assert runtime.apply_xla_cpu_flags(_config("vgg9", "none")) == ""


_PROBE = """
import json, sys
sys.path.insert(0, {root!r})
from tl_jax.config import base_config
from tl_jax import runtime
c = base_config()
c.model.name = {model!r}
c.train.xla_cpu_flags = {setting!r}
runtime.setup(c)
import jax, jax.numpy as jnp
a = jnp.ones((64, 64))
hlo = jax.jit(lambda a: jnp.tanh(a @ a)).lower(a).compile().as_text()  # a YNNPACK dot by default
print(json.dumps({{"ynn": "ynn" in hlo.lower(), "flags": runtime.os.environ["XLA_FLAGS"]}}))
"""


def _probe(model, setting):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT), model=model,
                                                            setting=setting)],
                       env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_setup_before_the_backend_reaches_xla():
  assert _probe("vgg9", "none") == {"ynn": True, "flags": ""}  # XLA's default: a YNNPACK dot
  assert _probe("vgg9", "auto") == {"ynn": True, "flags": " ".join(runtime.AUTO_FLAGS)}  # dots kept
  assert _probe("lenet5", runtime.NO_YNN) == {"ynn": False, "flags": runtime.NO_YNN}
