"""Max-pool formulations on XLA:CPU, per model, first and second order (not a test).

Why: `nn.max_pool`'s gradient is a select-and-scatter, which XLA:CPU expands into full-size iotas
and a scatter; `tl_jax.models.layers.max_pool` computes non-overlapping windows on CPU as a
reshape + max with a first-maximum VJP of elementwise ops, and overlapping ones (AlexNet's and
ResNet-50's 3x3/2) as one strided slice per tap with a VJP of masked interior pads (same values
and gradients, tests/test_max_pool.py). This times, for the pools of each model (found by tracing the model at
its benchmark shape, launch/benchmark.py SPECS), fwd+bwd and the second order the L2T
meta-gradient needs (the gradient of a gradient norm), each alone (jit) and per iteration of a
`lax.scan` (as the engine runs steps), under both formulations; median of --reps.

  python launch/bench_pool.py --reps 7 --out results/benchmarks/pool_cpu2.json
  python launch/bench_pool.py --smoke      # VGG-9's two smallest pools, one rep
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "launch"):
  if str(_p) not in sys.path:
    sys.path.insert(0, str(_p))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

import benchmark as bm  # noqa: E402
from tl_jax import models  # noqa: E402
from tl_jax.models import alexnet, cnn, layers, lenet, resnet, tiny, vgg  # noqa: E402

DEFAULT_MODELS = "alexnet_small,vgg9,alexnet_imagenet,resnet50"  # LeNet-5 (classic) avg-pools
SCAN_LEN = 4


def pool_calls(key: str) -> list[tuple[tuple[int, ...], tuple[int, int], tuple[int, int]]]:
  """(input shape, window, strides) of every `layers.max_pool` call of model `key` at its
  benchmark batch and input shape."""
  name, kwargs, n, shape, batch, _ = bm.SPECS[key]
  calls = []

  def record(x, window, strides, **kw):
    calls.append((tuple(x.shape), tuple(window), tuple(strides)))
    return layers.max_pool(x, window, strides, **kw)

  mods = (alexnet, cnn, lenet, resnet, tiny, vgg)
  saved = [m.max_pool for m in mods]
  for m in mods:
    m.max_pool = record
  try:
    model = models.create_model(name, n, **kwargs)
    x = jax.ShapeDtypeStruct((batch,) + shape, jnp.float32)
    jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)
  finally:
    for m, f in zip(mods, saved):
      m.max_pool = f
  return calls


def timers(calls, impl: str, order: int):
  pool = {"nn": lambda x, w, s: nn.max_pool(x, w, s),
          "tl_jax": lambda x, w, s: layers.max_pool(x, w, s, backend="cpu")}[impl]
  xs = [jax.random.normal(jax.random.key(i), shape) for i, (shape, _, _) in enumerate(calls)]

  def loss(xs):
    return sum((pool(x, w, s) ** 3).sum() for x, (_, w, s) in zip(xs, calls))

  fn = jax.grad(loss)
  if order == 2:
    fn = jax.grad(lambda xs: sum((g ** 2).sum() for g in jax.grad(loss)(xs)))
  alone = jax.jit(fn)

  def body(c, _):
    g = fn([x + c for x in xs])
    return c + 1e-6 * g[0].mean(), None

  looped = jax.jit(lambda c: jax.lax.scan(body, c, None, length=SCAN_LEN)[0])
  jax.block_until_ready((alone(xs), looped(0.0)))

  def t_alone():
    t = time.perf_counter()
    jax.block_until_ready(alone(xs))
    return time.perf_counter() - t

  def t_scan():
    t = time.perf_counter()
    jax.block_until_ready(looped(0.0))
    return (time.perf_counter() - t) / SCAN_LEN

  return t_alone, t_scan


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default=DEFAULT_MODELS, help=f"keys of SPECS ({', '.join(bm.SPECS)})")
  p.add_argument("--reps", type=int, default=7)
  p.add_argument("--smoke", action="store_true", help="VGG-9's two smallest pools, 1 rep")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  keys = ["vgg9"] if args.smoke else bm.model_keys(args.models)
  reps = 1 if args.smoke else args.reps
  meta = {"command": "python " + shlex.join(["launch/bench_pool.py"] + (argv or sys.argv[1:])),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "git_commit": bm.git("rev-parse", "HEAD"),
          "git_dirty": bool(bm.git("status", "--porcelain", "--untracked-files=no")),
          "hardware": {"cpu": bm.cpu_model(), "cores": os.cpu_count()},
          "versions": bm.versions(), "loadavg_start": bm.loadavg(), "reps": reps,
          "scan_length": SCAN_LEN}
  records = []
  for key in keys:
    calls = pool_calls(key)[-2:] if args.smoke else pool_calls(key)
    if not calls:
      print(f"[bench_pool] {key}: no layers.max_pool call", flush=True)
      continue
    rec = {"model": key, "pools": [list(map(list, c)) for c in calls]}
    fns = {}
    for order in (1, 2):
      for impl in ("nn", "tl_jax"):
        a, s = timers(calls, impl, order)
        fns[f"order{order}/{impl}/alone"], fns[f"order{order}/{impl}/scan"] = a, s
    times = {k: [] for k in fns}
    for _ in range(reps):
      for k, f in fns.items():
        times[k].append(f())
    for k, ts in times.items():
      rec[k] = {"median_ms": 1e3 * statistics.median(ts), "times_s": ts}
    records.append(rec)
    print(f"[bench_pool] {key} ({len(calls)} pools): " + "  ".join(
        f"{k} {rec[k]['median_ms']:.1f} ms" for k in times), flush=True)
  meta["loadavg_end"] = bm.loadavg()
  if args.out:
    bm.atomic_write(Path(args.out), json.dumps(dict(meta, records=records), indent=1) + "\n")
    print(f"[bench_pool] wrote {args.out}")


if __name__ == "__main__":
  main()
