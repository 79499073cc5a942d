"""Train-step throughput of every tl_jax model, JAX (XLA:CPU) vs an equivalent PyTorch step.

Why: the project trains on CPU-only hosts, where XLA:CPU convolutions are the bottleneck; this
measures how far behind a PyTorch step with the same architecture, batch and optimiser (SGD with
momentum) a tl_jax step is, and whether XLA flags or bfloat16 close the gap.

Per model: both frameworks are built, warmed up (>= 3 steps; the first JAX step includes
compilation, reported separately), then timed in alternating blocks (JAX, PyTorch, PyTorch, JAX,
...) of `--steps` steps, `--repeats` blocks each, so slow drifts of machine load hit both alike.
Reported: median images/s over all timed steps, the IQR, and every step time.

Each variant runs in a fresh subprocess, because XLA reads XLA_FLAGS once at import. The JAX step
is tl_jax's: `make_train_step` (jitted, state donated) + `TrainState` + `make_optimizer` (SGD,
momentum 0.9); time is taken after `jax.block_until_ready`. The PyTorch step uses the twins of
`tl_jax.bench.torch_models` with `torch.set_num_threads(os.cpu_count())`. Both start from uint8
images and scale them to [0, 1] inside the step. Flax convolutions are NHWC; XLA picks its own
layout, so NCHW vs NHWC is not a JAX option (PyTorch NCHW is the default; `torch_channels_last`
times PyTorch in NHWC memory format).

  python launch/benchmark.py                                  # all models, default variant
  python launch/benchmark.py --models resnet32,vgg9 --variants default,onednn,bf16,no_im2col
Outputs: <out>/<hardware-slug>.json and .md (written atomically).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# key -> (tl_jax model name, kwargs, num_classes, (H, W, C), batch, timed steps per block)
SPECS = {  # small inputs first, then the 224x224 models from cheapest to dearest
    "lenet5": ("lenet5", {}, 10, (32, 32, 1), 128, 5),
    "alexnet_small": ("alexnet", {"variant": "small"}, 10, (32, 32, 3), 128, 5),
    "vgg9": ("vgg9", {}, 100, (32, 32, 3), 64, 5),
    "resnet32": ("resnet32", {}, 200, (32, 32, 3), 128, 5),
    "alexnet_imagenet": ("alexnet", {"variant": "imagenet"}, 1000, (224, 224, 3), 16, 5),
    "resnet50": ("resnet50", {}, 1000, (224, 224, 3), 8, 5),
    "efficientnet_lite0": ("efficientnet_lite0", {}, 1000, (224, 224, 3), 16, 5),
    "vgg16": ("vgg16", {}, 1000, (224, 224, 3), 8, 5),
}
# name -> (XLA_FLAGS, JAX compute dtype, tl_jax im2col for tiny maps, PyTorch mode, what it tests)
VARIANTS = {
    "default": ("", "float32", True, "fp32", "XLA defaults, float32"),
    "onednn": ("--xla_cpu_use_onednn=true", "float32", True, "fp32", "oneDNN kernels in XLA"),
    "xnnpack": ("--xla_cpu_use_xnnpack=true", "float32", True, "fp32", "XNNPACK kernels in XLA"),
    "ynn": ("--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution",
            "float32", True, "fp32", "YNNPACK dots and convolutions"),
    "no_eigen_mt": ("--xla_cpu_multi_thread_eigen=false", "float32", True, "fp32",
                    "single-threaded Eigen kernels"),
    "fast_math": ("--xla_cpu_enable_fast_math=true", "float32", True, "fp32", "XLA fast math"),
    "bf16": ("", "bfloat16", True, "bf16", "bf16 compute, f32 params (PyTorch: autocast bf16)"),
    "no_im2col": ("", "float32", False, "fp32", "tl_jax Conv im2col path for <=2x2 maps off"),
    "torch_channels_last": ("", "float32", True, "channels_last", "PyTorch NHWC memory format"),
}
# Models timed under each non-default variant unless --variant-models is given.
VARIANT_MODELS = {"no_im2col": "vgg9"}  # the im2col path only changes VGG-9's 2x2 maps
DEFAULT_VARIANT_MODELS = "resnet32,vgg9"
PAUSE_S = 0.5  # idle gap between timed blocks, so one framework's spinning threads settle


# ----------------------------------------------------------------------------- worker side
def _patch_no_im2col() -> None:
  """Makes every tl_jax Conv use XLA's convolution even on tiny maps (threshold 0)."""
  from tl_jax.models import alexnet, efficientnet, layers, resnet, vgg

  class ConvNoIm2col(layers.Conv):
    small_map_pixels: int = 0

  for mod in (alexnet, efficientnet, resnet, vgg):
    mod.Conv = ConvNoIm2col


class _CastModel:
  """Runs a Flax model with params and input cast to `dtype` (f32 master params, f32 logits)."""

  def __init__(self, model, dtype):
    self.model, self.dtype = model, dtype

  def apply(self, variables, x, **kw):
    import jax
    import jax.numpy as jnp
    v = dict(variables)
    v["params"] = jax.tree.map(lambda p: p.astype(self.dtype), v["params"])
    out = self.model.apply(v, x.astype(self.dtype), **kw)
    if kw.get("mutable"):
      (logits, feats), mutated = out
      return (logits.astype(jnp.float32), feats), mutated
    logits, feats = out
    return logits.astype(jnp.float32), feats


def jax_step_setup(key: str, batch: int, dtype: str = "float32", jit: bool = True):
  """(step, state, data, rng) of the tl_jax train step of model `key` (SPECS): make_train_step +
  SGD momentum, a random uint8 batch scaled inside the step; `jit=False` for use inside a
  caller's own loop (launch/bench_loop.py)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from tl_jax import models
  from tl_jax.train.optim import make_optimizer
  from tl_jax.train.state import TrainState
  from tl_jax.train.steps import make_train_step

  name, kwargs, n, shape, _, _ = SPECS[key]
  model = models.create_model(name, n, **kwargs)
  rng = np.random.default_rng(0)
  x0 = jnp.zeros((1,) + shape, jnp.float32)
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x0)
  tx = make_optimizer({"name": "sgd", "lr": 0.01, "momentum": 0.9}, 100, 1, variables["params"])
  state = TrainState.create(model.apply, variables["params"], variables.get("batch_stats"), tx)
  step_model = model if dtype == "float32" else _CastModel(model, jnp.dtype(dtype))
  step = make_train_step(step_model, jit=jit)
  data = {"image": jnp.asarray(rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)),
          "label": jnp.asarray(rng.integers(0, n, (batch,), dtype=np.int32))}
  return step, state, data, jax.random.key(1)


def jax_runner(key: str, batch: int, dtype: str):
  import jax
  step, state, data, key_ = jax_step_setup(key, batch, dtype)
  box = [state]

  def run() -> float:
    t = time.perf_counter()
    box[0], metrics = step(box[0], data, key_)
    jax.block_until_ready((box[0], metrics))
    return time.perf_counter() - t

  return run


def torch_runner(key: str, batch: int, mode: str):
  import contextlib
  import numpy as np
  import torch
  import torch.nn.functional as F
  from tl_jax.bench.torch_models import create_twin

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  name, kwargs, n, shape, _, _ = SPECS[key]
  model = create_twin(name, n, in_channels=shape[-1], **kwargs).train()
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.integers(0, 256, (batch, shape[2]) + shape[:2], dtype=np.uint8))
  y = torch.from_numpy(rng.integers(0, n, (batch,)).astype(np.int64))
  if mode == "channels_last":
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode == "bf16" else (
      contextlib.nullcontext)

  def run() -> float:
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with autocast():
      logits, _ = model(x.float().div_(255.0))
      loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    opt.step()
    loss.detach().item()
    return time.perf_counter() - t

  return run


def summary(times: list[float], batch: int) -> dict:
  import numpy as np
  ips = batch / np.asarray(times)
  q1, med, q3 = np.percentile(ips, [25, 50, 75])
  return {"median_img_s": float(med), "iqr_img_s": [float(q1), float(q3)],
          "median_step_s": float(np.median(times)), "step_times_s": [float(t) for t in times]}


def run_worker(args) -> None:
  """Times the requested models for one variant in this process (XLA_FLAGS already set)."""
  from tqdm import tqdm
  flags, dtype, im2col, torch_mode, _ = VARIANTS[args.variant]
  if not im2col:
    _patch_no_im2col()
  frameworks = args.frameworks.split(",")
  records, errors = [], []
  keys = args.models.split(",")
  bar = tqdm(total=len(keys) * args.repeats, desc=f"[{args.variant}]", file=sys.stderr,
             dynamic_ncols=True)
  for key in keys:
    if args.stop_at and time.time() > args.stop_at:
      errors.append({"model": key, "variant": args.variant, "error": "skipped: time budget"})
      bar.update(args.repeats)
      continue
    _, _, _, shape, batch, steps = SPECS[key]
    batch, steps = args.batch or batch, args.steps or steps
    bar.set_postfix_str(key)
    runners, times, first = {}, {}, {}
    try:
      for fw in frameworks:
        runners[fw] = (jax_runner(key, batch, dtype) if fw == "jax"
                       else torch_runner(key, batch, torch_mode))
        warm = [runners[fw]() for _ in range(args.warmup)]
        first[fw], times[fw] = warm[0], []
      for r in range(args.repeats):
        order = frameworks if r % 2 == 0 else frameworks[::-1]
        for fw in order:
          time.sleep(PAUSE_S)
          times[fw] += [runners[fw]() for _ in range(steps)]
        bar.update(1)
    except Exception as e:  # noqa: BLE001 -- one model failing must not lose the others
      errors.append({"model": key, "variant": args.variant, "error": repr(e)[:2000]})
      bar.update(args.repeats)
      continue
    for fw in frameworks:
      rec = {"model": key, "framework": "jax" if fw == "jax" else "pytorch",
             "variant": args.variant, "xla_flags": flags if fw == "jax" else "",
             "dtype": dtype if fw == "jax" else torch_mode, "batch": batch,
             "input_shape_nhwc": [batch, *shape], "warmup_steps": args.warmup,
             "timed_steps": len(times[fw]), "first_step_s": first[fw]}
      rec.update(summary(times[fw], batch))
      records.append(rec)
    atomic_write(Path(args.worker_out), json.dumps({"records": records, "errors": errors}))
  bar.close()
  atomic_write(Path(args.worker_out), json.dumps({"records": records, "errors": errors}))


# ----------------------------------------------------------------------------- driver side
def model_keys(text: str) -> list[str]:
  """--models text (comma-separated keys of SPECS) -> keys; an unknown key is one line and exit 2."""
  keys = [m.strip() for m in text.split(",") if m.strip()]
  for k in keys:
    if k not in SPECS:
      print(f"error: --models: got {k!r}; allowed: {', '.join(SPECS)}", file=sys.stderr)
      raise SystemExit(2)
  return keys


def xla_flops(compiled) -> float:
  """XLA's cost-analysis FLOP count of a compiled jax program (`jit(f).lower(...).compile()`);
  0.0 when XLA reports none. (Some jax versions return one dict per device in a list.)"""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def atomic_write(path: Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        return sorted(f for f in line.split(":", 1)[1].split()
                      if f.startswith(("avx", "amx", "fma")))
  except OSError:
    pass
  return []


def loadavg() -> list[float]:
  try:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
  except OSError:
    return []


def git(*cmd: str) -> str:
  try:
    return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def versions() -> dict:
  from importlib import metadata
  out = {"python": platform.python_version()}
  for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "numpy"):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      out[pkg] = None
  return out


def hardware_slug(cpu: str, cores: int) -> str:
  return re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") + f"-{cores}c"


def _markdown(meta: dict, records: list[dict], errors: list[dict]) -> str:
  lines = [f"# Train-step throughput on {meta['hardware']['cpu']} ({meta['hardware']['cores']} "
           "cores)", "", f"- command: `{meta['command']}`", f"- git commit: `{meta['git_commit']}`"
           + (" (working tree had uncommitted changes)" if meta["git_dirty"] else ""),
           f"- date (UTC): {meta['date_utc']}",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
           f"- CPU flags: {' '.join(meta['hardware']['cpu_flags'])}",
           f"- load average before/after: {meta['loadavg_start']} / {meta['loadavg_end']}",
           "- images/s: median over all timed steps (IQR in brackets); first step = compile "
           "+ run for JAX.", ""]
  by = {(r["model"], r["variant"], r["framework"]): r for r in records}
  variants = list(dict.fromkeys(r["variant"] for r in records))
  for v in variants:
    lines += [f"## Variant `{v}`: {VARIANTS[v][4]}", "",
              "| model | input (NHWC) | JAX img/s | PyTorch img/s | JAX / PyTorch | "
              "JAX first step s |", "|---|---|---|---|---|---|"]
    for key in dict.fromkeys(r["model"] for r in records if r["variant"] == v):
      j, t = by.get((key, v, "jax")), by.get((key, v, "pytorch"))
      fmt = lambda r: (f"{r['median_img_s']:.1f} [{r['iqr_img_s'][0]:.1f}-"
                       f"{r['iqr_img_s'][1]:.1f}]" if r else "-")
      ratio = f"{j['median_img_s'] / t['median_img_s']:.2f}" if j and t else "-"
      shape = "x".join(map(str, (j or t)["input_shape_nhwc"]))
      lines.append(f"| {key} | {shape} | {fmt(j)} | {fmt(t)} | {ratio} | "
                   f"{j['first_step_s']:.1f} |" if j else f"| {key} | {shape} | - | {fmt(t)} "
                   "| - | - |")
    lines.append("")
  if errors:
    lines += ["## Errors", ""] + [f"- {e['variant']} / {e['model']}: `{e['error'][:300]}`"
                                  for e in errors] + [""]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default=",".join(SPECS), help=f"comma list of {list(SPECS)}")
  p.add_argument("--batch", type=int, default=0, help="override every model's batch size")
  p.add_argument("--steps", type=int, default=0, help="timed steps per block (default per model)")
  p.add_argument("--repeats", type=int, default=2, help="timed blocks per framework")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--variants", default="default", help=f"comma list of {list(VARIANTS)}")
  p.add_argument("--variant-models", default=None,
                 help=f"models timed under non-default variants (default {DEFAULT_VARIANT_MODELS}"
                 f", per-variant {VARIANT_MODELS})")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
  p.add_argument("--timeout", type=float, default=1800, help="seconds per variant subprocess")
  p.add_argument("--max-minutes", type=float, default=0,
                 help="start no new model after this many minutes (0: no limit); jobs run "
                 "small-input defaults, the variants, the 224x224 defaults (see --large-after)")
  p.add_argument("--variant", help=argparse.SUPPRESS)      # worker mode
  p.add_argument("--worker-out", help=argparse.SUPPRESS)
  p.add_argument("--large-after", type=int, default=-1,
                 help="run the 224x224 defaults after this many variants (-1: after all)")
  p.add_argument("--stop-at", type=float, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker_out:
    return run_worker(args)

  from tl_jax.errors import ConfigError
  extra = args.variant_models.split(",") if args.variant_models else []
  for m in args.models.split(",") + extra:
    if m not in SPECS:
      raise ConfigError("benchmark.models", m, list(SPECS))
  variants = args.variants.split(",")
  for v in variants:
    if v not in VARIANTS:
      raise ConfigError("benchmark.variants", v, list(VARIANTS))
  for fw in args.frameworks.split(","):
    if fw not in ("jax", "torch"):
      raise ConfigError("benchmark.frameworks", fw, ["jax", "torch"])
  if args.warmup < 3 or args.repeats * (args.steps or 5) < 10:
    print("warning: fewer than 3 warm-up or 10 timed steps: not a reportable run", file=sys.stderr)

  from tqdm import tqdm
  cpu, cores = cpu_model(), os.cpu_count() or 1
  meta = {"command": "python " + " ".join(shlex.quote(a) for a in [
      os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else argv)),
          "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
          "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "hardware": {"cpu": cpu, "cores": cores, "cpu_flags": cpu_flags(),
                       "platform": platform.platform()},
          "versions": versions(), "loadavg_start": loadavg(),
          "env_XLA_FLAGS_ignored": os.environ.get("XLA_FLAGS", "")}
  records, errors, t0 = [], [], time.time()
  out, slug = Path(args.out), hardware_slug(cpu, cores)

  def save() -> None:  # after every variant, so an interrupted run keeps what it measured
    meta["loadavg_end"], meta["wall_s"] = loadavg(), round(time.time() - t0, 1)
    atomic_write(out / f"{slug}.json", json.dumps(dict(meta, records=records, errors=errors),
                                                   indent=1) + "\n")
    atomic_write(out / f"{slug}.md", _markdown(meta, records, errors) + "\n")

  # Jobs (variant, models): under a time budget the cheap comparisons come first.
  small = [m for m in args.models.split(",") if SPECS[m][3][0] <= 64]
  large = [m for m in args.models.split(",") if m not in small]
  others = [(v, (args.variant_models or VARIANT_MODELS.get(v, DEFAULT_VARIANT_MODELS)).split(","))
            for v in variants if v != "default"]
  cut = len(others) if args.large_after < 0 else args.large_after
  jobs = ([("default", small)] * bool(small) + others[:cut] + [("default", large)] * bool(large)
          + others[cut:])
  if "default" not in variants:
    jobs = [j for j in jobs if j[0] != "default"]
  stop_at = t0 + 60 * args.max_minutes if args.max_minutes else 0
  with tempfile.TemporaryDirectory() as tmp:
    for i, (v, models) in enumerate(tqdm(jobs, desc="jobs", file=sys.stderr, dynamic_ncols=True)):
      models = ",".join(models)
      if stop_at and time.time() > stop_at:
        errors.append({"model": models, "variant": v, "error": "skipped: --max-minutes reached"})
        save()
        continue
      wout = Path(tmp) / f"{i}_{v}.json"
      cmd = [sys.executable, os.path.abspath(__file__), "--variant", v, "--worker-out", str(wout),
             "--models", models, "--batch", str(args.batch), "--steps", str(args.steps),
             "--repeats", str(args.repeats), "--warmup", str(args.warmup),
             "--frameworks", args.frameworks, "--stop-at", str(stop_at)]
      env = dict(os.environ, XLA_FLAGS=VARIANTS[v][0],
                 PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
      # Past the budget a started model gets 5 more minutes; the worker saves after each model.
      timeout = min(args.timeout, max(60.0, stop_at + 300 - time.time())) if stop_at else (
          args.timeout)
      try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              timeout=timeout)
        rc = proc.returncode
      except subprocess.TimeoutExpired:
        rc = "timeout"
      if wout.exists():
        got = json.loads(wout.read_text())
        records += got["records"]
        errors += got["errors"]
      if rc != 0:
        errors.append({"model": models, "variant": v, "error": f"worker exit status {rc}"})
      save()
  print(f"wrote {out / slug}.json and .md ({meta['wall_s']} s)")


if __name__ == "__main__":
  main()
