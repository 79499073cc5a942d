"""K seeds through the engine: one vmapped program, one lax.map program, or K separate runs
(not a test; a benchmark for a quiet machine).

    python launch/bench_sweep.py --method scratch --k 8 [--batch 128] [--epochs 4]
    python launch/bench_sweep.py --method l2t_ww --k 8 --epochs 2
    python launch/bench_sweep.py --flops                    # XLA cost analysis, every method
    python launch/bench_sweep.py --method scratch --k 4 --modes map,two_procs   # 1 vs 2 processes
    python launch/bench_sweep.py --model lenet5 --train_batches 8 --k 4 --modes vmap,map,two_procs

The thesis shapes: VGG-9 target at 32x32, batch 128 (one full batch per epoch, as N = 10 per
class gives 100 images), 15 pairs from a ResNet-32 source for L2T (random weights: timing does
not depend on them). `--model` swaps the scratch target (LeNet-5, ResNet-32: the small models
whose ops are too small to fill two cores) and `--train_batches` gives an epoch more than one
batch. Each (method, mode) runs in its own subprocess so that its peak resident
memory (ru_maxrss) is its own; the epoch times are the engine's per-epoch wall times (one
compiled call per epoch) and the first epoch, which compiles, is excluded. `--flops` prints the
FLOPs of one compiled step per method from `jit(...).lower(...).compile().cost_analysis()`.
Results go to --out (results/benchmarks/engine) as bench_sweep_<what>.json (atomically); the README is written by hand
from them, with the command beside each number. XLA flags: this script sets none (XLA's
defaults); to measure what the sweep runs, export the command lines' `auto` flags
(`tl_jax.runtime.AUTO_FLAGS`) as XLA_FLAGS, which every child inherits and the JSON records.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "launch"):
  if str(_p) not in sys.path:
    sys.path.insert(0, str(_p))

import benchmark as bm  # noqa: E402  (launch/benchmark.py: xla_flops)

MODES = ("vmap", "map", "separate", "two_procs")
# two_procs: two processes at once, each pinned to one core (taskset) with half the seeds as one
# lax.map program - the alternative to one process using both cores for K seeds
METHODS = ("scratch", "ufm", "l2t_ww", "l2t_www")
MODELS = ("vgg9", "lenet5", "resnet32")  # scratch targets; the L2T methods train VGG-9


def build(method: str, batch: int, epochs: int, model: str = "vgg9", train_batches: int = 1):
  """(segment, consts, variables_of_one_seed, image pool, labels): the thesis shapes by default
  (`train_batches` batches of training images, then 128 validation images)."""
  import jax
  import numpy as np
  from tl_jax import models
  from tl_jax.data import augment
  from tl_jax.engine import fit as engine
  from tl_jax.engine.learners import FeatureMatchingLearner, SupervisedLearner
  from tl_jax.kt import KTConfig, KnowledgeTransfer, pairs_for_models
  from tl_jax.kt import matching
  from tl_jax.train import optim
  inp = {"augment": "crop_flip", "normalize": "imagenet"}
  aug, pre = augment.make_augment(inp), augment.make_preprocess(inp)
  target = models.create_model(model, 10)
  x0 = np.zeros((1, 32, 32, 3), np.float32)
  tv = jax.jit(lambda k: target.init({"params": k, "dropout": k}, x0, train=False))(
      jax.random.key(0))
  ocfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
          "decay_type": "coupled", "schedule": "cosine", "schedule_unit": "epoch"}
  consts = None
  if method == "scratch":
    tx = optim.make_optimizer(ocfg, train_batches, epochs, tv["params"])
    learner = SupervisedLearner(target, tx, aug, pre)
  else:
    source = models.create_model("resnet32", 200)
    consts = jax.jit(lambda k: source.init(k, x0, train=False))(jax.random.key(1))
    from tl_jax.config import base_config
    pairs = pairs_for_models(base_config().kt.pairs, source, consts, target, tv, (32, 32, 3))
    regs = jax.eval_shape(lambda: matching.init_regressors(pairs, jax.random.key(0)))
    tx = optim.make_optimizer(ocfg, 1, epochs, tv["params"], extra_params=regs)
    kt = KnowledgeTransfer(source, target, pairs, KTConfig(method=method),
                           optim.make_schedule(ocfg, 1, epochs), preprocess=aug, tx=tx)
    learner = FeatureMatchingLearner(kt, pre)
  seg = engine.Segment("train", epochs, learner, 0.1)
  rng = np.random.default_rng(0)
  n = batch * train_batches + 128  # the training batches + 128 validation images
  images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  return seg, consts, dict(tv), images, labels


def child(args) -> dict:
  """One measurement in this process: K seeds of `method` in `mode`."""
  import jax
  import numpy as np
  from tl_jax.engine import fit as engine
  # 'separate' compiles the same program K times; the persistent cache makes the repeats cheap
  # (compile time is excluded from the steady-state numbers either way)
  jax.config.update("jax_compilation_cache_dir", args.cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  seg, consts, tv, images, labels = build(args.method, args.batch, args.epochs, args.model,
                                          args.train_batches)
  n_train = args.batch * args.train_batches
  cfg = engine.FitConfig(batch_size=args.batch, eval_batch_size=128,
                         seed_loop="map" if args.mode == "separate" else args.mode)
  groups = [[s] for s in range(args.k)] if args.mode == "separate" else [list(range(args.k))]
  per_epoch = np.zeros(args.epochs)
  t0 = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    for g in groups:
      k = len(g)
      data = engine.SeedData(images, labels,
                             np.tile(np.arange(n_train, dtype=np.int32), (k, 1)),
                             np.arange(n_train, n_train + 128), 10)
      variables = jax.tree.map(lambda x: np.stack([np.asarray(x)] * k), tv)
      res = engine.fit([seg], data, g, variables, cfg,
                       [pathlib.Path(tmp) / f"s{s}" for s in g], consts=consts)
      per_epoch += np.array([r["time_s"] for r in res.histories[0]])
  steady = per_epoch[1:]
  return {"method": args.method, "model": args.model, "mode": args.mode, "k": args.k,
          "batch": args.batch, "train_batches": args.train_batches,
          "epoch_s_all_seeds": per_epoch.tolist(), "median_epoch_s": float(np.median(steady)),
          "images_per_s": args.k * n_train / float(np.median(steady)),
          "first_epoch_s_incl_compile": float(per_epoch[0]), "wall_s": time.time() - t0,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def flops(batch: int) -> dict:
  """FLOPs of one compiled training step (K = 1) per method, from XLA's cost analysis."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  out = {}
  for method in METHODS:
    seg, consts, tv, images, labels = build(method, batch, 1)
    state = jax.jit(seg.learner.init)(jax.random.key(0), tv)
    b = {"image": jnp.asarray(images[:batch]), "label": jnp.asarray(labels[:batch]),
         "mask": jnp.ones(batch, jnp.float32)}
    train = bm.xla_flops(jax.jit(seg.learner.step).lower(state, b, jax.random.key(1),
                                                         consts).compile())
    ev = bm.xla_flops(jax.jit(seg.learner.eval_logits).lower(seg.learner.eval_variables(state),
                                                             b["image"]).compile())
    out[method] = {"train_step_flops": train, "eval_flops_per_image": ev / batch}
    print(f"{method:>8s}: {train / 1e9:10.1f} GFLOP per step of batch {batch}; "
          f"eval {ev / batch / 1e6:.1f} MFLOP per image", flush=True)
  del np
  return out


def run_child(args, mode: str, k: int, cache: str, cpu: int | None = None,
              wait: bool = True):
  """Runs one measurement in a subprocess (pinned to core `cpu` when given); its result dict,
  or the Popen when wait=False."""
  cmd = [sys.executable, __file__, "--method", args.method, "--model", args.model,
         "--train_batches", str(args.train_batches), "--k", str(k), "--batch", str(args.batch),
         "--epochs", str(args.epochs), "--mode", mode, "--cache_dir", cache]
  if cpu is not None:
    cmd = ["taskset", "-c", str(cpu)] + cmd
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT)
  return collect(proc) if wait else proc


def collect(proc) -> dict | None:
  out, err = proc.communicate()
  line = [x for x in out.splitlines() if x.startswith("RESULT ")]
  if proc.returncode or not line:
    print(err[-3000:], file=sys.stderr)
    return None
  return json.loads(line[0][len("RESULT "):])


def two_procs(args, cache: str) -> dict | None:
  """K/2 seeds in each of two processes at once, one core each: throughput = the sum."""
  if args.k % 2:
    print(f"error: --k: got {args.k}; allowed: an even number for two_procs", file=sys.stderr)
    return None
  procs = [run_child(args, "map", args.k // 2, cache, cpu=i, wait=False) for i in range(2)]
  parts = [collect(p) for p in procs]
  if any(p is None for p in parts):
    return None
  return {"method": args.method, "model": args.model, "mode": "two_procs", "k": args.k,
          "batch": args.batch, "train_batches": args.train_batches,
          "median_epoch_s": max(p["median_epoch_s"] for p in parts),
          "images_per_s": sum(p["images_per_s"] for p in parts),
          "peak_rss_mib": sum(p["peak_rss_mib"] for p in parts), "processes": parts}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--method", default="scratch", choices=METHODS)
  ap.add_argument("--model", default="vgg9", choices=MODELS, help="scratch target")
  ap.add_argument("--train_batches", type=int, default=1, help="training batches per epoch")
  ap.add_argument("--k", type=int, default=8)
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--epochs", type=int, default=4, help="epochs per run (the first compiles)")
  ap.add_argument("--modes", default=",".join(MODES))
  ap.add_argument("--mode", help=argparse.SUPPRESS)  # child process
  ap.add_argument("--cache_dir", help=argparse.SUPPRESS)
  ap.add_argument("--flops", action="store_true")
  ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "engine"))
  args = ap.parse_args(argv)
  if args.model != "vgg9" and args.method != "scratch":
    print(f"error: --model: got {args.model!r} with --method {args.method}; allowed: vgg9 "
          "(the L2T target) unless --method scratch", file=sys.stderr)
    return 2
  if args.train_batches < 1:
    print(f"error: --train_batches: got {args.train_batches}; allowed: an integer >= 1",
          file=sys.stderr)
    return 2
  if args.mode:
    print("RESULT " + json.dumps(child(args)), flush=True)
    return 0
  import jax
  from tl_jax.analysis.report import git_commit, hardware_description
  meta = {"command": "python launch/bench_sweep.py " + " ".join(argv or sys.argv[1:]),
          "commit": git_commit(), "hardware": hardware_description(),
          "backend": jax.default_backend(), "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),  # the caller's: this script sets none
          "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
  results = []
  if args.flops:
    results.append({"flops": flops(args.batch), "batch": args.batch})
  else:
    cache = tempfile.mkdtemp(prefix="tl_jax_bench_cache_")
    for mode in args.modes.split(","):
      if mode not in MODES:
        print(f"error: --modes: got {mode!r}; allowed: {', '.join(MODES)}", file=sys.stderr)
        return 2
      r = two_procs(args, cache) if mode == "two_procs" else run_child(args, mode, args.k, cache)
      if r is None:
        return 1
      print(f"{args.method} {args.model} K={args.k} {mode:>8s}: {r['median_epoch_s']:.2f} s "
            f"per epoch of all seeds ({r['images_per_s']:.1f} img/s), peak RSS {r['peak_rss_mib']:.0f} MiB",
            flush=True)
      results.append(r)
  meta["load_average_at_end"] = os.getloadavg()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  model = "" if args.model == "vgg9" else f"_{args.model}"
  name = "flops" if args.flops else f"{args.method}{model}_k{args.k}_b{args.batch}"
  path = out / f"bench_sweep_{name}.json"
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
  tmp.replace(path)
  print(path)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
