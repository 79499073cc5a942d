"""Per-iteration cost of UFM / L2T-ww / L2T-www vs a plain VGG-9 train step (not a test).

    python launch/bench_l2t.py [--batch 64] [--steps 10] [--warmup 3] [--out results/benchmarks]

ResNet-32 source (the shared L2T-ww weights when present, else random) -> VGG-9 target, 32x32,
15 pairs, T = 2. Each method's jitted iteration is timed with block_until_ready; median and IQR
over --steps timed iterations after --warmup. Writes l2t_<hardware>.json and .md atomically.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_jax import models, paths  # noqa: E402
from tl_jax.data import augment  # noqa: E402
from tl_jax.kt.bilevel import KnowledgeTransfer, KTConfig  # noqa: E402
from tl_jax.kt.pairs import feature_shapes, parse_pairs  # noqa: E402
from tl_jax.train import optim, steps  # noqa: E402
from tl_jax.train.state import TrainState  # noqa: E402

PAIRS = ",".join(f"{m}-{n}" for m in (4, 9, 14) for n in range(5))


def cpu_name() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def hardware_slug() -> str:
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return f"cpu{os.cpu_count()}"
  return dev.device_kind.lower().replace(" ", "-")


def time_fn(fn, state, batch, key, warmup, n):
  for _ in range(warmup):
    state, m = fn(state, batch, key)
  jax.block_until_ready(state)
  times = []
  for _ in range(n):
    t = time.perf_counter()
    state, m = fn(state, batch, key)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t)
  return np.asarray(times)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--methods", default="plain,ufm,l2t_ww,l2t_www")
  ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
  args = ap.parse_args(argv)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)),
           "label": jnp.asarray(rng.integers(0, 10, args.batch).astype(np.int32))}
  key = jax.random.key(0)
  target = models.create_model("vgg9", 10)
  x0 = jnp.zeros((1, 32, 32, 3))
  t_vars = target.init(key, x0)
  source = models.create_model("resnet32", 200)
  weights = "random"
  if paths.shared_root() is not None:
    from tl_jax.weights.resnet32_l2t import load_resnet32_l2t
    s_vars, weights = load_resnet32_l2t(model=source), "L2T-ww Tiny ImageNet checkpoint"
  else:
    s_vars = source.init(key, x0)
  pairs = parse_pairs(PAIRS, feature_shapes(source, s_vars, (32, 32, 3)),
                      feature_shapes(target, t_vars, (32, 32, 3)))
  aug = augment.make_augment({"augment": "crop_flip", "normalize": "imagenet"})
  results = {}
  for method in args.methods.split(","):
    t0 = time.perf_counter()
    if method == "plain":
      cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
             "schedule": "constant"}
      tx = optim.make_optimizer(cfg, 1, 1, t_vars["params"])
      state = TrainState.create(target.apply, t_vars["params"], t_vars["batch_stats"], tx)
      fn = steps.make_train_step(target, aug)
    else:
      kt = KnowledgeTransfer(source, target, pairs, KTConfig(method=method),
                             lambda s: jnp.asarray(0.1), preprocess=aug)
      state = kt.init(key, t_vars, s_vars)
      fn = kt.l2t_iteration
    state = jax.tree.map(jnp.array, state)  # fresh buffers (the step donates its input)
    times = time_fn(fn, state, batch, key, args.warmup, args.steps)
    med = float(np.median(times))
    results[method] = {"median_s": med, "iqr_s": float(np.subtract(*np.percentile(times, [75, 25]))),
                       "images_per_s": args.batch / med, "times_s": times.tolist(),
                       "compile_and_warmup_s": time.perf_counter() - t0 - float(times.sum())}
    print(f"{method:>8s}: {med:.3f} s/iteration ({args.batch / med:.1f} img/s)", flush=True)
  if "plain" in results:
    for m, r in results.items():
      r["ratio_to_plain"] = r["median_s"] / results["plain"]["median_s"]
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
  except OSError:
    commit = "unknown"
  meta = {"command": "python launch/bench_l2t.py " + " ".join(argv or sys.argv[1:]),
          "git_commit": commit, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
          "hardware": f"{cpu_name()}, {os.cpu_count()} cores" if jax.default_backend() == "cpu"
          else str(jax.devices()[0].device_kind), "jax": jax.__version__, "batch": args.batch,
          "input": "32x32x3", "pairs": len(pairs), "inner_steps": 2, "source_weights": weights,
          "load_average_at_end": os.getloadavg()}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  slug = hardware_slug()
  data = {"meta": meta, "results": results}
  tmp = out / f".l2t_{slug}.json.tmp"
  tmp.write_text(json.dumps(data, indent=2))
  tmp.replace(out / f"l2t_{slug}.json")
  lines = [f"# L2T iteration cost ({meta['hardware']})", "",
           f"Command: `{meta['command']}`; commit {commit}; {meta['date']}; jax {jax.__version__};"
           f" batch {args.batch}, 32x32, {len(pairs)} pairs, T=2; median of {args.steps} after "
           f"{args.warmup} warm-up; 1-min load average at the end {meta['load_average_at_end'][0]:.2f}.", "",
           "| step | median s | IQR s | img/s | x plain step |", "|---|---:|---:|---:|---:|"]
  for m, r in results.items():
    lines.append(f"| {m} | {r['median_s']:.3f} | {r['iqr_s']:.3f} | {r['images_per_s']:.1f} | "
                 f"{r.get('ratio_to_plain', float('nan')):.1f} |")
  tmp = out / f".l2t_{slug}.md.tmp"
  tmp.write_text("\n".join(lines) + "\n")
  tmp.replace(out / f"l2t_{slug}.md")


if __name__ == "__main__":
  main()
