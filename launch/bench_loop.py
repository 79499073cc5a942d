"""Train steps inside a compiled loop, as the engine runs them, on XLA:CPU (not a test).

Why: tl_jax's engine (tl_jax/engine/fit.py) runs an epoch as one `lax.scan` over its steps and K
seeds as a `lax.map`, so what a real CPU run costs is the step *inside a while loop*, not the
step called alone (launch/benchmark.py). XLA:CPU compiles some convolutions differently there:
jax's kernel gradient stays in a layout its fast kernels do not take and runs as a naive loop
(tl_jax.models.layers.conv_nhwc). This measures, per model and conv strategy, the per-step time
of (a) the jitted step called alone and (b) the same step inside one jitted `lax.scan` over
--steps batches, with PyTorch's twin step (launch/benchmark.py `torch_runner`) beside it.

  python launch/bench_loop.py --reps 5 --out results/benchmarks/loop_cpu2.json
  python launch/bench_loop.py --smoke        # LeNet-5 only, 2 steps, 1 rep

Strategies: 'lax' = every dense/1x1 conv as plain XLA convolution (the CPU default before
`conv_lax_loopsafe`), 'auto' = today's CPU defaults (layers.CPU_CONV_DEFAULTS). --materialize
'auto' (the default: residual streams through `tl_jax.models.materialize` on CPU) and/or 'off'
(XLA fuses them freely, as before); runners are named strategy[+mat_off]/alone|scan. Pairing: every
rep times each runner of a model once, in turn, with a short pause between, and medians over
reps are reported. Output: a table on stdout and JSON at --out (command, commit, versions, CPU,
load averages before/after).
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

import benchmark as bm  # noqa: E402  (launch/benchmark.py: SPECS, step setup, machine metadata)
from tl_jax import runtime  # noqa: E402
from tl_jax.errors import ConfigError  # noqa: E402
from tl_jax.models import layers  # noqa: E402
from tl_jax.models.materialize import MODES, materialize_mode  # noqa: E402

DEFAULT_MODELS = "lenet5,alexnet_small,vgg9,resnet32"
PAUSE_S = 0.3


def jax_runners(key: str, batch: int, steps: int, strategy: str, materialize: str = "auto"):
  """(alone, in_scan) timers of model `key`'s train step traced under conv `strategy` and
  `materialize_mode(materialize)`; each returns seconds per step."""
  preset = {} if strategy == "auto" else {"dense": strategy, "pointwise": strategy}
  with layers.conv_strategy(**preset), materialize_mode(materialize):
    step, state, data, rng = bm.jax_step_setup(key, batch, jit=False)
    alone = jax.jit(step, donate_argnums=0)
    stacked = jax.tree.map(lambda a: jnp.stack([a] * steps), data)

    def body(st, batch_):
      st, met = step(st, batch_, rng)
      return st, met["loss"]

    looped = jax.jit(lambda st, xs: jax.lax.scan(body, st, xs), donate_argnums=0)
    box = [jax.block_until_ready(alone(state, data, rng)[0])]   # traced (compiled) here,
    box[0] = jax.block_until_ready(looped(box[0], stacked)[0])  # inside the context

  def time_alone() -> float:
    t = time.perf_counter()
    for _ in range(steps):
      box[0], met = alone(box[0], data, rng)
    jax.block_until_ready((box[0], met))
    return (time.perf_counter() - t) / steps

  def time_scan() -> float:
    t = time.perf_counter()
    box[0], losses = looped(box[0], stacked)
    jax.block_until_ready((box[0], losses))
    return (time.perf_counter() - t) / steps

  return time_alone, time_scan


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default=DEFAULT_MODELS, help=f"keys of SPECS ({', '.join(bm.SPECS)})")
  p.add_argument("--strategies", default="lax,auto")
  p.add_argument("--materialize", default="auto", help=f"modes, comma-separated ({', '.join(MODES)})")
  p.add_argument("--steps", type=int, default=8, help="steps per scan (and per alone block)")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--out", default="")
  p.add_argument("--xla-flags", default="auto",
                 help="XLA:CPU flags put before XLA_FLAGS, as train.xla_cpu_flags: 'auto' (the "
                      "command lines' default), 'none', or '--xla_...' flags")
  args = p.parse_args(argv)
  try:  # before anything starts the backend (XLA reads XLA_FLAGS once)
    runtime.merge_xla_flags(runtime.parse_xla_cpu_flags(args.xla_flags, "--xla-flags"))
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)
  models = ["lenet5"] if args.smoke else bm.model_keys(args.models)
  strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
  allowed = layers.CONV_CHOICES["dense"]  # a strategy applies to dense and 1x1 convs alike
  for s in strategies:
    if s not in allowed:
      print(f"error: --strategies: got {s!r}; allowed: {', '.join(allowed)}", file=sys.stderr)
      raise SystemExit(2)
  mats = [m.strip() for m in args.materialize.split(",") if m.strip()]
  for m in mats:
    if m not in MODES:
      print(f"error: --materialize: got {m!r}; allowed: {', '.join(MODES)}", file=sys.stderr)
      raise SystemExit(2)
  steps, reps = (2, 1) if args.smoke else (args.steps, args.reps)
  t0 = time.time()
  meta = {"command": "python " + shlex.join(["launch/bench_loop.py"] + (argv or sys.argv[1:])),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "git_commit": bm.git("rev-parse", "HEAD"), "git_dirty": bool(bm.git("status",
                                                                             "--porcelain")),
          "hardware": {"cpu": bm.cpu_model(), "cores": os.cpu_count()},
          "versions": bm.versions(), "backend": jax.default_backend(),
          "loadavg_start": bm.loadavg(), "steps": steps, "reps": reps,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "conv_impl_env": os.environ.get(layers.CONV_IMPL_ENV, "")}
  records = []
  for key in models:
    batch = bm.SPECS[key][4]
    timers: dict[str, object] = {}
    for s in strategies:
      for mat in mats:
        name, tc = s if mat == "auto" else f"{s}+mat_{mat}", time.time()
        timers[f"{name}/alone"], timers[f"{name}/scan"] = jax_runners(key, batch, steps, s, mat)
        print(f"[bench_loop] {key} {name}: compiled in {time.time() - tc:.0f} s", flush=True)
    if args.torch:
      run = bm.torch_runner(key, batch, "fp32")
      run()
      timers["torch/alone"] = lambda run=run: statistics.fmean(run() for _ in range(steps))
    times: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(reps):
      for name, fn in timers.items():
        times[name].append(fn())
        time.sleep(PAUSE_S)
    rec = {"model": key, "batch": batch}
    for name, ts in times.items():
      med = statistics.median(ts)
      rec[name] = {"median_step_s": med, "median_img_s": batch / med, "step_times_s": ts}
    records.append(rec)
    line = "  ".join(f"{n} {rec[n]['median_img_s']:.0f}" for n in times)
    print(f"[bench_loop] {key} b{batch} img/s: {line}", flush=True)
  meta["loadavg_end"], meta["wall_s"] = bm.loadavg(), round(time.time() - t0, 1)
  print("\n| model | batch | " + " | ".join(f"{n} img/s" for n in records[0] if "/" in n)
        + " |")
  for r in records:
    print(f"| {r['model']} | {r['batch']} | " + " | ".join(
        f"{r[n]['median_img_s']:.1f}" for n in r if "/" in n) + " |")
  if args.out:
    bm.atomic_write(Path(args.out), json.dumps(dict(meta, records=records), indent=1) + "\n")
    print(f"[bench_loop] wrote {args.out}")


if __name__ == "__main__":
  main()
