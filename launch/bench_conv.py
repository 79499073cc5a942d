"""Conv formulations on XLA:CPU: per-layer fwd+bwd time and whole-model train steps (not a test).

Why: XLA:CPU is slow on some convolution shapes (EfficientNet-Lite0 trains at ~0.1x PyTorch's
speed, ResNet-32 at ~0.3x), and tl_jax's `Conv` can compute each conv in several equal ways
(tl_jax/models/layers.py: `conv_lax`, `conv_im2col`, `conv_depthwise_shifts`, `conv_1x1_matmul`,
`conv_toeplitz`).
This measures which one wins per shape, so that `layers.CPU_CONV_DEFAULTS` / `cpu_conv_impl` can be
set from numbers rather than guesses.

  python launch/bench_conv.py --reps 20 --out results/benchmarks/conv_<host>.json
  python launch/bench_conv.py --smoke                   # tiny shapes, 1 rep, < 1 min
  python launch/bench_conv.py --loop 6 --strategies ''   # each conv inside a scan, layers only

1. Layers: every `layers.Conv` of EfficientNet-Lite0 (224x224, batch 16), ResNet-32 (32x32,
   batch 128), VGG-9 (32x32, batch 64) and LeNet-5 (32x32x1, batch 128) - found by tracing the
   model (flax method interception under `jax.eval_shape`, so nothing runs), deduplicated with
   a count. For each distinct shape and each formulation valid for its kind,
   `jit(value_and_grad)` of <conv(x, kernel), random cotangent> w.r.t. the kernel and (except for
   the stem, whose input is the image) the input: one forward and the backward a train step runs;
   with --loop N, N such calls inside one `lax.scan` (as the engine's epoch runs them; XLA:CPU
   compiles some formulations differently there), timed per call. Compile time = the first call; then one more warm-up call and
   --reps timed calls (block_until_ready); the median is reported. `auto` = the formulation
   `Conv` picks today on CPU. With --torch (default if torch imports), PyTorch's F.conv2d
   fwd+bwd on the same shape (NCHW, torch.set_num_threads(os.cpu_count())) as the target.
2. Models: the tl_jax train step of launch/benchmark.py (`jax_runner`: make_train_step + SGD
   momentum, uint8 batch scaled inside the step), traced under each `layers.conv_strategy` preset
   of --strategies that changes at least one of the model's convs; plus PyTorch's twin step
   (`torch_runner`) with --torch. Warm-up: the compiling call + 1; then --reps timed steps.

Output: a table on stdout and JSON at --out (meta: command, git commit, versions, CPU, load
average before/after, TL_JAX_CONV_IMPL / XLA_FLAGS in force). Timings on a loaded machine are
not reportable: check the load averages in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "launch"):
  if str(_p) not in sys.path:
    sys.path.insert(0, str(_p))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

import benchmark as bm  # noqa: E402  (launch/benchmark.py: step runners and machine metadata)
from tl_jax import models  # noqa: E402
from tl_jax.errors import ConfigError  # noqa: E402
from tl_jax.models import layers  # noqa: E402
from tl_jax.models.efficientnet import LITE0_BLOCKS  # noqa: E402

# model key -> (tl_jax name, kwargs, num_classes, (H, W, C), batch); smoke: tiny inputs, batch 2.
MODELS = {k: bm.SPECS[k][:5] for k in ("efficientnet_lite0", "resnet32", "vgg9", "lenet5")}
SMOKE_MODELS = {"efficientnet_lite0": (32, 32, 3), "resnet32": (16, 16, 3), "vgg9": (32, 32, 3),
                "lenet5": (32, 32, 1)}
# Smoke: Lite0 cut to its first 4 MBConv blocks (3x3 and 5x5, stride 1 and 2, expand 1 and 6, a
# residual), because compiling the full train step takes ~30 s per strategy on a loaded CPU.
SMOKE_KWARGS = {"efficientnet_lite0": {"blocks": LITE0_BLOCKS[:4]}}
# Whole-model presets: keyword arguments of layers.conv_strategy.
STRATEGIES: dict[str, dict[str, str]] = {
    "auto": {},                                        # what Conv does by default (today)
    "lax": {"default": "lax"},                         # XLA's conv everywhere, even tiny maps
    "shifts": {"depthwise": "shifts"},
    "matmul": {"pointwise": "matmul"},
    "shifts+matmul": {"depthwise": "shifts", "pointwise": "matmul"},
    "im2col": {"dense": "im2col"},                     # every non-1x1, non-depthwise conv
    "toeplitz": {"dense": "toeplitz"},                 # the same as banded matmuls
    "dense_lax": {"dense": "lax_loopsafe"},            # dense as XLA's conv (before toeplitz)
}
DEFAULT_STRATEGIES = "auto,shifts,matmul,shifts+matmul,im2col"
SMOKE_STRATEGIES = "auto,shifts+matmul"


@dataclasses.dataclass(frozen=True)
class ConvShape:
  """One conv layer's static shapes, as `Conv.__call__` sees them (NHWC input, HWIO kernel)."""
  kernel: tuple[int, int]
  strides: tuple[int, int]
  pads: tuple[tuple[int, int], ...]
  cin: int
  cout: int
  groups: int
  batch: int
  in_hw: tuple[int, int]
  small_map_pixels: int
  needs_dx: bool  # False for a conv on the model input (no gradient flows into the image)

  @property
  def kernel_shape(self) -> tuple[int, int, int, int]:
    return self.kernel + (self.cin // self.groups, self.cout)

  @property
  def out_hw(self) -> tuple[int, int]:
    return tuple((n + lo + hi - k) // s + 1  # type: ignore[return-value]
                 for n, (lo, hi), k, s in zip(self.in_hw, self.pads, self.kernel, self.strides))

  @property
  def kind(self) -> str:
    return layers.conv_kind(self.kernel_shape, self.groups)

  def impl(self, **strategy: str) -> str:
    """The formulation `Conv` picks for this shape on CPU under `conv_strategy(**strategy)`."""
    with layers.conv_strategy(**strategy):
      return layers.select_conv_impl(self.kernel_shape, self.groups, self.out_hw, self.strides,
                                     self.small_map_pixels, backend="cpu")

  def label(self) -> str:
    (kh, kw), (sh, _), (h, w), (oh, ow) = self.kernel, self.strides, self.in_hw, self.out_hw
    g = f" g{self.groups}" if self.groups > 1 else ""
    return f"{kh}x{kw}/{sh} {self.cin}->{self.cout}{g} {h}x{w}->{oh}x{ow}"


def conv_layers(name: str, kwargs: dict, num_classes: int, shape: tuple[int, int, int],
                batch: int) -> list[tuple[ConvShape, list[str]]]:
  """Distinct conv shapes of a model in forward order, each with the module paths that have it.
  Found by intercepting every `layers.Conv.__call__` while `jax.eval_shape` traces a train-mode
  forward, so the shapes are exactly those the train step sees."""
  model = models.create_model(name, num_classes, **kwargs)
  x = jax.ShapeDtypeStruct((batch,) + tuple(shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  found: dict[ConvShape, list[str]] = {}

  def interceptor(next_fun, args, kw, context):
    mod = context.module
    if isinstance(mod, layers.Conv) and context.method_name == "__call__":
      xin = args[0]
      k, s = tuple(mod.kernel_size), tuple(mod.strides)
      pads = layers.explicit_padding(mod.padding, xin.shape[1:3], k, s)
      conv = ConvShape(k, s, tuple(tuple(p) for p in pads), int(xin.shape[-1]),
                       int(mod.features), int(mod.feature_group_count), int(xin.shape[0]),
                       tuple(xin.shape[1:3]), int(mod.small_map_pixels),
                       needs_dx=not found)  # the first conv reads the image
      found.setdefault(conv, []).append("/".join(mod.scope.path))
    return next_fun(*args, **kw)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.key(1)}), variables, x)
  return list(found.items())


def _time(fn: Callable[[], Any], reps: int) -> dict:
  """compile (first call) + 1 warm-up call, then `reps` timed calls; seconds."""
  t = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t
  jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times),
          "times_s": times}


def time_conv(conv: ConvShape, impl: str, reps: int, loop: int = 0) -> dict:
  """jit(value_and_grad) of <conv(x, kernel), ct> w.r.t. kernel (and x if `conv.needs_dx`): the
  forward (the value needs it; a bare grad of this linear loss would skip it) and the backward.
  `loop` > 0: `loop` such calls inside one `lax.scan` (the kernel updated from its gradient,
  x and ct read from stacked copies so nothing is hoisted out of the loop), as the engine's
  epoch runs them; times are then per call."""
  fn = layers.CONV_FNS[impl]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((conv.batch,) + conv.in_hw + (conv.cin,)), jnp.float32)
  k = jnp.asarray(rng.standard_normal(conv.kernel_shape) * 0.1, jnp.float32)
  ct = jnp.asarray(rng.standard_normal((conv.batch,) + conv.out_hw + (conv.cout,)), jnp.float32)
  argnums = (0, 1) if conv.needs_dx else (1,)

  def loss(x, k, ct):
    return jnp.vdot(fn(x, k, conv.strides, conv.pads, conv.groups), ct)

  value_and_grad = jax.value_and_grad(loss, argnums=argnums)
  if not loop:
    step = jax.jit(value_and_grad)
    return _time(lambda: step(x, k, ct), reps)

  def body(k, x_ct):
    value, grads = value_and_grad(x_ct[0], k, x_ct[1])
    keep = value + (jnp.sum(grads[0]) if conv.needs_dx else 0.0)  # dx is used, not dropped
    return k - 1e-6 * grads[-1], keep

  xs, cts = jnp.stack([x] * loop), jnp.stack([ct] * loop)
  looped = jax.jit(lambda k, xs, cts: jax.lax.scan(body, k, (xs, cts)))
  rec = _time(lambda: looped(k, xs, cts), reps)
  return {"first_s": rec["first_s"], "median_s": rec["median_s"] / loop,
          "min_s": rec["min_s"] / loop, "times_s": [t / loop for t in rec["times_s"]],
          "loop": loop}


def time_torch_conv(conv: ConvShape, reps: int) -> dict:
  """PyTorch F.conv2d fwd+bwd on the same shape (NCHW; explicit pads, asymmetric ones by F.pad)."""
  import torch
  import torch.nn.functional as F
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.standard_normal((conv.batch, conv.cin) + conv.in_hw).astype(np.float32))
  kh, kw = conv.kernel
  w = torch.from_numpy((rng.standard_normal((conv.cout, conv.cin // conv.groups, kh, kw)) * 0.1)
                       .astype(np.float32))
  ct = torch.from_numpy(rng.standard_normal((conv.batch, conv.cout) + conv.out_hw)
                        .astype(np.float32))
  x.requires_grad_(conv.needs_dx)
  w.requires_grad_(True)
  (ph0, ph1), (pw0, pw1) = conv.pads
  symmetric = ph0 == ph1 and pw0 == pw1

  def run():
    x.grad = w.grad = None
    xin = x if symmetric else F.pad(x, (pw0, pw1, ph0, ph1))
    y = F.conv2d(xin, w, stride=conv.strides, padding=(ph0, pw0) if symmetric else 0,
                 groups=conv.groups)
    y.backward(ct)
    return None

  t = time.perf_counter()
  run()
  first = time.perf_counter() - t
  run()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
  return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times),
          "times_s": times}


def _strategy_changes(convs: list[ConvShape], strategy: dict[str, str]) -> int:
  """How many of the model's conv layers (with multiplicity) the strategy moves off 'auto'."""
  return sum(n for conv, n in convs if conv.impl(**strategy) != conv.impl())


def _ms(rec: dict | None) -> str:
  return f"{1e3 * rec['median_s']:9.2f}" if rec else f"{'-':>9}"


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {list(MODELS)}")
  p.add_argument("--reps", type=int, default=10, help="timed calls per measurement (median)")
  p.add_argument("--strategies", default=None,
                 help=f"whole-model presets, comma list of {list(STRATEGIES)} "
                 f"(default {DEFAULT_STRATEGIES}; smoke {SMOKE_STRATEGIES}); '' skips the models")
  p.add_argument("--impls", default=",".join(layers.CONV_FNS),
                 help="per-layer formulations to time (each only where valid for the kind)")
  p.add_argument("--loop", type=int, default=0,
                 help="time each conv as N calls inside one lax.scan, per call (0: called alone)")
  p.add_argument("--max-convs", type=int, default=0,
                 help="time at most this many distinct shapes per kind and model (0: all)")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                 help="also time PyTorch (default: if torch imports)")
  p.add_argument("--smoke", action="store_true",
                 help="tiny inputs (batch 2), Lite0 cut to 4 blocks, 1 rep, 2 shapes per kind, "
                 f"strategies {SMOKE_STRATEGIES}: checks the script runs (< 1 min), measures "
                 "nothing")
  p.add_argument("--out", default=None, help="JSON path (default: print only)")
  args = p.parse_args(argv)

  keys = [m for m in args.models.split(",") if m]
  for m in keys:
    if m not in MODELS:
      raise ConfigError("bench_conv.models", m, list(MODELS))
  impls = [i for i in args.impls.split(",") if i]
  for i in impls:
    if i not in layers.CONV_FNS:
      raise ConfigError("bench_conv.impls", i, list(layers.CONV_FNS))
  strategies = args.strategies if args.strategies is not None else (
      SMOKE_STRATEGIES if args.smoke else DEFAULT_STRATEGIES)
  strategies = [s for s in strategies.split(",") if s]
  for s in strategies:
    if s not in STRATEGIES:
      raise ConfigError("bench_conv.strategies", s, list(STRATEGIES))
  if args.loop < 0:
    raise ConfigError("bench_conv.loop", args.loop, "0 (each conv called alone) or N >= 1")
  reps = 1 if args.smoke else args.reps
  max_convs = args.max_convs or (2 if args.smoke else 0)
  use_torch = args.torch
  if use_torch is not False:
    try:
      import torch
      torch.set_num_threads(os.cpu_count() or 1)
      use_torch = True
    except ImportError:
      if use_torch:
        raise
      use_torch = False
  if os.environ.get(layers.CONV_IMPL_ENV):
    print(f"note: {layers.CONV_IMPL_ENV}={os.environ[layers.CONV_IMPL_ENV]!r} changes 'auto'",
          file=sys.stderr)

  specs = {}
  for key in keys:
    name, kwargs, n, shape, batch = MODELS[key]
    if args.smoke:
      shape, batch = SMOKE_MODELS[key], 2
      kwargs = dict(kwargs, **SMOKE_KWARGS.get(key, {}))
    specs[key] = (name, kwargs, n, shape, batch)
  meta = {"command": "python " + " ".join(shlex.quote(a) for a in [
      os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else argv)),
          "git_commit": bm.git("rev-parse", "HEAD"),
          "git_dirty": bool(bm.git("status", "--porcelain")),
          "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "hardware": {"cpu": bm.cpu_model(), "cores": os.cpu_count(),
                       "cpu_flags": bm.cpu_flags()},
          "versions": bm.versions(), "backend": jax.default_backend(),
          "loadavg_start": bm.loadavg(), "smoke": args.smoke, "reps": reps,
          "loop": args.loop,
          "env": {k: os.environ.get(k, "") for k in (layers.CONV_IMPL_ENV, "XLA_FLAGS",
                                                      "OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
          "cpu_conv_defaults": dict(layers.CPU_CONV_DEFAULTS),
          "models": {k: {"input_nhwc": [v[4], *v[3]], "kwargs": repr(v[1])}
                     for k, v in specs.items()}}
  layer_records: list[dict] = []
  model_records: list[dict] = []
  errors: list[dict] = []
  t0 = time.time()

  def save() -> None:
    if args.out:
      meta["loadavg_end"], meta["wall_s"] = bm.loadavg(), round(time.time() - t0, 1)
      bm.atomic_write(Path(args.out), json.dumps(dict(
          meta, layers=layer_records, model_steps=model_records, errors=errors), indent=1) + "\n")

  # ---- 1. per-layer
  all_convs: dict[str, list[tuple[ConvShape, int]]] = {}
  for key, (name, kwargs, n, shape, batch) in specs.items():
    found = conv_layers(name, kwargs, n, shape, batch)
    all_convs[key] = [(c, len(paths)) for c, paths in found]
    per_kind: dict[str, int] = {}
    print(f"\n## {key} {batch}x{'x'.join(map(str, shape))}: {sum(map(len, dict(found).values()))}"
          f" convs, {len(found)} distinct shapes; fwd+bwd ms (median of {reps})")
    cols = [i for i in impls] + (["torch"] if use_torch else [])
    print(f"{'layer shape':<34} {'kind':<9} {'n':>2} {'auto':>6} "
          + " ".join(f"{c:>9}" for c in cols) + "  best")
    for conv, paths in found:
      per_kind[conv.kind] = per_kind.get(conv.kind, 0) + 1
      if max_convs and per_kind[conv.kind] > max_convs:
        continue
      rec = {"model": key, "shape": conv.label(), "kind": conv.kind, "count": len(paths),
             "paths": paths, "auto": conv.impl(), **{
                 f: (list(v) if isinstance(v, tuple) else v)
                 for f, v in dataclasses.asdict(conv).items()}, "out_hw": list(conv.out_hw),
             "times": {}}
      for impl in impls:
        if impl not in layers.CONV_CHOICES[conv.kind]:
          continue
        try:
          rec["times"][impl] = time_conv(conv, impl, reps, args.loop)
        except Exception as e:  # noqa: BLE001 -- one failure must not lose the table
          errors.append({"model": key, "shape": conv.label(), "impl": impl, "error": repr(e)[:500]})
      if use_torch:
        try:
          rec["times"]["torch"] = time_torch_conv(conv, reps)
        except Exception as e:  # noqa: BLE001
          errors.append({"model": key, "shape": conv.label(), "impl": "torch",
                         "error": repr(e)[:500]})
      jax_times = {i: r["median_s"] for i, r in rec["times"].items() if i != "torch"}
      rec["best"] = min(jax_times, key=jax_times.get) if jax_times else None
      layer_records.append(rec)
      print(f"{conv.label():<34} {conv.kind:<9} {len(paths):>2} {rec['auto']:>6} "
            + " ".join(_ms(rec["times"].get(c)) for c in cols) + f"  {rec['best']}", flush=True)
      save()
    # per-model totals over the timed layers (count x median), per formulation and kind
    print("totals over timed layers (count x median, ms):")
    recs = [r for r in layer_records if r["model"] == key]
    for kind in layers.CONV_KINDS:
      kr = [r for r in recs if r["kind"] == kind]
      if not kr:
        continue
      tot = {c: sum(r["count"] * r["times"][c]["median_s"] for r in kr)
             for c in cols if all(c in r["times"] for r in kr)}
      auto = sum(r["count"] * r["times"][r["auto"]]["median_s"] for r in kr
                 if r["auto"] in r["times"])
      best = sum(r["count"] * r["times"][r["best"]]["median_s"] for r in kr if r["best"])
      print(f"  {kind:<9} auto {1e3 * auto:9.1f}  per-layer best {1e3 * best:9.1f}  "
            + "  ".join(f"{c} {1e3 * v:9.1f}" for c, v in tot.items()))

  # ---- 2. whole-model train steps
  if strategies:
    print(f"\n## train step (make_train_step, SGD momentum), s/step: median of {reps}")
    print(f"{'model':<20} {'strategy':<14} {'convs moved':>11} {'first s':>8} {'step s':>8}"
          f" {'img/s':>8} {'torch s / jax s':>15}")
  for key, (name, kwargs, n, shape, batch) in specs.items():
    if not strategies:
      break
    # jax_runner / torch_runner read launch/benchmark.py's SPECS; smoke shapes go in a copy.
    bm.SPECS = dict(bm.SPECS, **{key: (name, kwargs, n, tuple(shape), batch, 1)})
    torch_rec = None
    if use_torch and kwargs == MODELS[key][1]:  # (the twin has no cut-down smoke variant)
      try:
        run = bm.torch_runner(key, batch, "fp32")
        torch_rec = _time(run, reps)
        model_records.append({"model": key, "strategy": "pytorch", "batch": batch, **torch_rec})
      except Exception as e:  # noqa: BLE001
        errors.append({"model": key, "strategy": "pytorch", "error": repr(e)[:500]})
    for s in strategies:
      moved = _strategy_changes(all_convs[key], STRATEGIES[s])
      if s != "auto" and moved == 0:
        continue  # changes none of this model's convs: the same program as 'auto'
      try:
        with layers.conv_strategy(**STRATEGIES[s]):
          run = bm.jax_runner(key, batch, "float32")  # a fresh jitted step per strategy
          rec = _time(run, reps)  # its first call traces it, inside the context
      except Exception as e:  # noqa: BLE001
        errors.append({"model": key, "strategy": s, "error": repr(e)[:500]})
        continue
      rec = {"model": key, "strategy": s, "conv_strategy": STRATEGIES[s], "convs_moved": moved,
             "batch": batch, **rec}
      model_records.append(rec)
      ratio = (f"{torch_rec['median_s'] / rec['median_s']:15.2f}" if torch_rec
               else f"{'-':>15}")
      print(f"{key:<20} {s:<14} {moved:>11} {rec['first_s']:8.1f} {rec['median_s']:8.3f} "
            f"{batch / rec['median_s']:8.1f} {ratio}", flush=True)
      save()
    if torch_rec:
      print(f"{key:<20} {'pytorch':<14} {'':>11} {torch_rec['first_s']:8.1f} "
            f"{torch_rec['median_s']:8.3f} {batch / torch_rec['median_s']:8.1f}")
  save()
  for e in errors:
    print(f"error: {e}", file=sys.stderr)
  print(f"\n{round(time.time() - t0, 1)} s" + (f"; wrote {args.out}" if args.out else ""))


if __name__ == "__main__":
  try:
    main()
  except ConfigError as e:  # bad arguments: one line, exit 2
    print(e, file=sys.stderr)
    raise SystemExit(2)
