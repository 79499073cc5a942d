"""Per-iteration cost of UFM / L2T-ww / L2T-www vs a plain VGG-9 train step (not a test).

    python launch/bench_l2t.py [--batch 64] [--steps 10] [--warmup 3] [--methods ...]
                               [--out results/benchmarks] [--gemm]

ResNet-32 source (the shared L2T-ww weights when present, else random) -> VGG-9 target, 32x32,
15 pairs, T = 2. Each method's jitted iteration is timed with block_until_ready; median and IQR
over --steps timed iterations after --warmup. Writes l2t_<hardware>.json and .md atomically.

Methods: 'plain' (VGG-9 SGD step), 'ufm', 'l2t_ww', 'l2t_www' (tl_jax, jitted) and their PyTorch
counterparts 'torch_plain', 'torch_ufm', 'torch_l2t_ww', 'torch_l2t_www'
(tl_jax/bench/torch_l2t.py: the same iteration, tested equal to tl_jax's in
tests/test_bench_torch_l2t.py), started from the same weights (the torch objects are filled from
the tl_jax state) with torch.set_num_threads(os.cpu_count()). Both frameworks augment inside the
timed step (pad-4 crop + flip + ImageNet normalisation of the same uint8 batch; torch does it with
torch ops and its own RNG).

Work per step: each tl_jax program is compiled ahead of time and its XLA cost-analysis FLOP
count is reported with the achieved GFLOP/s (torch_* runs the same iteration, so the same count
is used for it); --gemm adds what a large float32 matmul achieves on the machine (XLA's and
PyTorch's), the ceiling no convolution network's step reaches.

XLA:CPU flags: --xla-flags (default 'auto', the flags `tl_jax.main` and launch/sweep.py run with;
'none' for XLA's defaults), recorded in the output with whatever XLA_FLAGS the caller set.

Torch threads: --torch-threads (default os.cpu_count()). --omp-wait-policy (default PASSIVE) is
exported as OMP_WAIT_POLICY before torch loads its OpenMP runtime: with the default spin-waiting
(ACTIVE) a torch step on a machine whose cores are busy with other work stalls at every parallel
region (measured on the loaded 2-core dev box, batch 4: torch_l2t_ww 31 s/iteration with
spinning, 1.6 s passive, 1.3 s with 1 thread). Pass --omp-wait-policy '' to keep the runtime's
default on an idle machine. Both are recorded in the output.
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
for _p in (ROOT, ROOT / "launch"):
  if str(_p) not in sys.path:
    sys.path.insert(0, str(_p))

import benchmark as bm  # noqa: E402  (launch/benchmark.py: xla_flops)

from tl_jax import models, paths, runtime  # noqa: E402
from tl_jax.errors import ConfigError  # noqa: E402
from tl_jax.data import augment  # noqa: E402
from tl_jax.kt.bilevel import KnowledgeTransfer, KTConfig  # noqa: E402
from tl_jax.kt.pairs import feature_shapes, parse_pairs  # noqa: E402
from tl_jax.train import optim, steps  # noqa: E402
from tl_jax.train.state import TrainState  # noqa: E402

PAIRS = ",".join(f"{m}-{n}" for m in (4, 9, 14) for n in range(5))
JAX_METHODS = ("plain", "ufm", "l2t_ww", "l2t_www")
TORCH_METHODS = tuple(f"torch_{m}" for m in JAX_METHODS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def time_calls(step, warmup: int, n: int) -> np.ndarray:
  """Wall times of n calls of `step()` after `warmup` calls; `step` must return only when its
  work is done (JAX: block_until_ready inside; torch CPU ops are synchronous)."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(n):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return np.asarray(times)


def gemm_gflop_per_s(torch_threads: int | None = None) -> dict[str, float]:
  """What a large float32 matmul achieves here (the ceiling of a conv net's step): XLA's and,
  given `torch_threads`, PyTorch's GFLOP/s on 2048^3, median of 7 after one warm-up."""
  n, out = 2048, {}
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  mm = jax.jit(lambda m: m @ m)
  out["xla"] = 2 * n ** 3 / float(np.median(time_calls(lambda: mm(a).block_until_ready(), 1, 7))) / 1e9
  if torch_threads:
    import torch
    torch.set_num_threads(torch_threads)
    t = torch.from_numpy(np.asarray(a).copy())
    out["torch"] = 2 * n ** 3 / float(np.median(time_calls(lambda: t @ t, 1, 7))) / 1e9
  return out


def jax_step(fn, state, batch, key):
  """A no-argument closure advancing `state` by one donated, jitted step and waiting for it."""
  box = [state]

  def step():
    box[0], m = fn(box[0], batch, key)
    jax.block_until_ready((box[0], m))
  return step


def torch_augment(images, gen):
  """uint8 NHWC -> float NCHW: zero-pad 4, random 32x32 crop, random h-flip, ImageNet
  normalisation; the torch counterpart of augment.make_augment(crop_flip, imagenet)."""
  import torch
  x = images.permute(0, 3, 1, 2).float()
  b, _, h, w = x.shape
  padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
  off = torch.randint(0, 9, (b, 2), generator=gen)
  rows = (off[:, :1] + torch.arange(h))[:, None, :, None]          # (B, 1, H, 1)
  cols = (off[:, 1:] + torch.arange(w))[:, None, None, :]          # (B, 1, 1, W)
  bidx = torch.arange(b)[:, None, None, None]
  cidx = torch.arange(x.shape[1])[None, :, None, None]
  out = padded[bidx, cidx, rows, cols]
  flip = torch.rand(b, generator=gen) < 0.5
  out = torch.where(flip[:, None, None, None], out.flip(3), out)
  mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
  std = torch.tensor(IMAGENET_STD)[None, :, None, None]
  return (out / 255.0 - mean) / std


def torch_step_fn(method, batch, target, source, t_vars, s_vars, pairs, key, threads):
  """A no-argument closure running one torch step of `method` on `batch` (numpy arrays)."""
  import torch
  import torch.nn.functional as F
  from tl_jax.bench import torch_l2t
  from tl_jax.weights import torch_twins
  torch.set_num_threads(threads)
  images = torch.from_numpy(np.asarray(batch["image"]).copy())
  labels = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64))
  gen = torch.Generator().manual_seed(0)
  tgt = torch_twins.VGG9(10)
  base = method[len("torch_"):]
  if base == "plain":
    torch_twins.load_twin_from_flax(tgt, t_vars).train()
    opt = torch.optim.SGD(tgt.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step():
      logits, _ = tgt(torch_augment(images, gen))
      loss = F.cross_entropy(logits, labels)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    return step
  kt = KnowledgeTransfer(source, target, pairs, KTConfig(method=base), lambda s: jnp.asarray(0.1))
  state = kt.init(key, t_vars)
  tkt = torch_l2t.from_tl_jax(kt, state, s_vars, torch_twins.ResNet32L2T(200), tgt, lr=0.1)
  return lambda: tkt.iteration(torch_augment(images, gen), labels, 0.1)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--methods", default=",".join(JAX_METHODS + TORCH_METHODS))
  ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
  ap.add_argument("--torch-threads", type=int, default=os.cpu_count())
  ap.add_argument("--omp-wait-policy", default="PASSIVE",
                  help="OMP_WAIT_POLICY for torch's OpenMP ('' = leave unset); see the docstring")
  ap.add_argument("--gemm", action="store_true",
                  help="also time a float32 2048^3 matmul (XLA; torch too when torch methods run)")
  ap.add_argument("--xla-flags", default="auto",
                  help="XLA:CPU flags put before XLA_FLAGS, as train.xla_cpu_flags: 'auto' (the "
                       "command lines' default), 'none', or '--xla_...' flags")
  args = ap.parse_args(argv)
  try:  # before anything starts the backend (XLA reads XLA_FLAGS once)
    xla_flags = runtime.merge_xla_flags(runtime.parse_xla_cpu_flags(args.xla_flags, "--xla-flags"))
  except ConfigError as e:
    ap.error(str(e))
  if args.omp_wait_policy and "torch" not in sys.modules:
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
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
  results, gflop = {}, {}
  methods = args.methods.split(",")
  bad = sorted(set(methods) - set(JAX_METHODS + TORCH_METHODS))
  if bad:
    ap.error(f"unknown --methods {bad}; allowed {JAX_METHODS + TORCH_METHODS}")
  for method in methods:
    t0 = time.perf_counter()
    if method in TORCH_METHODS:
      step = torch_step_fn(method, batch, target, source, t_vars, s_vars, pairs, key,
                           args.torch_threads)
      times = time_calls(step, args.warmup, args.steps)
    elif method == "plain":
      cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
             "schedule": "constant"}
      tx = optim.make_optimizer(cfg, 1, 1, t_vars["params"])
      state = TrainState.create(target.apply, t_vars["params"], t_vars["batch_stats"], tx)
      fn, extra = steps.make_train_step(target, aug), ()
    else:
      kt = KnowledgeTransfer(source, target, pairs, KTConfig(method=method),
                             lambda s: jnp.asarray(0.1), preprocess=aug)
      state = kt.init(key, t_vars)
      # the frozen source is an argument of every (jitted, state-donating) iteration, on device
      # once here so the timed calls do not transfer it
      s_dev = jax.device_put(s_vars)
      fn, extra = kt.l2t_iteration, (s_dev,)
    if method not in TORCH_METHODS:
      state = jax.tree.map(jnp.array, state)  # fresh buffers (the step donates its input)
      compiled = fn.lower(state, batch, key, *extra).compile()  # the timed program
      gflop[method] = bm.xla_flops(compiled) / 1e9
      step = lambda st, b, k, c=compiled, e=extra: c(st, b, k, *e)  # noqa: E731
      times = time_calls(jax_step(step, state, batch, key), args.warmup, args.steps)
    med = float(np.median(times))
    results[method] = {"median_s": med, "iqr_s": float(np.subtract(*np.percentile(times, [75, 25]))),
                       "images_per_s": args.batch / med, "times_s": times.tolist(),
                       "compile_and_warmup_s": time.perf_counter() - t0 - float(times.sum())}
    print(f"{method:>13s}: {med:.3f} s/iteration ({args.batch / med:.1f} img/s)", flush=True)
  for m, r in results.items():  # torch runs the same iteration: the same work per step
    g = gflop.get(m[len("torch_"):] if m in TORCH_METHODS else m)
    if g:
      r["xla_gflop"] = g
      r["gflop_per_s"] = g / r["median_s"]
  with_torch = any(m in TORCH_METHODS for m in results)
  gemm = gemm_gflop_per_s(args.torch_threads if with_torch else None) if args.gemm else {}
  if "plain" in results:
    for m, r in results.items():
      r["ratio_to_plain"] = r["median_s"] / results["plain"]["median_s"]
  for m, r in results.items():  # vs the plain step of the same framework
    own = "torch_plain" if m in TORCH_METHODS else "plain"
    if own in results:
      r["ratio_to_own_plain"] = r["median_s"] / results[own]["median_s"]
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
          "load_average_at_end": os.getloadavg(), "xla_flags": xla_flags, "gemm": gemm}
  if any(m in TORCH_METHODS for m in results):
    import torch
    meta["torch"] = torch.__version__
    meta["torch_threads"] = torch.get_num_threads()
    meta["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(unset)")
    meta["torch_note"] = ("torch_* = tl_jax/bench/torch_l2t.py (same iteration, tested equal), same "
                          "initial weights; crop/flip + normalisation in torch inside the timed step")
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
           f"{args.warmup} warm-up; 1-min load average at the end {meta['load_average_at_end'][0]:.2f};"
           f" XLA_FLAGS `{xla_flags or '(none)'}`.", "",
           "| step | median s | IQR s | img/s | x plain step | x same-framework plain | "
           "XLA GFLOP | GFLOP/s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  nan = float("nan")
  for m, r in results.items():
    lines.append(f"| {m} | {r['median_s']:.3f} | {r['iqr_s']:.3f} | {r['images_per_s']:.1f} | "
                 f"{r.get('ratio_to_plain', nan):.2f} | {r.get('ratio_to_own_plain', nan):.2f} | "
                 f"{r.get('xla_gflop', nan):.1f} | {r.get('gflop_per_s', nan):.1f} |")
  lines += ["", "XLA GFLOP: `compiled.cost_analysis()['flops']` of tl_jax's program (for torch_* "
            "the same method's count: the same iteration)."]
  if gemm:
    lines += ["", "float32 2048^3 matmul, GFLOP/s (median of 7): " + ", ".join(
        f"{k} {v:.1f}" for k, v in gemm.items()) + "."]
  if "torch_note" in meta:
    lines += ["", f"torch {meta['torch']}, {meta['torch_threads']} threads, OMP_WAIT_POLICY "
              f"{meta['omp_wait_policy']}: {meta['torch_note']}. "
              "JAX methods augment on device with jax.random (same transforms)."]
  tmp = out / f".l2t_{slug}.md.tmp"
  tmp.write_text("\n".join(lines) + "\n")
  tmp.replace(out / f"l2t_{slug}.md")


if __name__ == "__main__":
  main()
