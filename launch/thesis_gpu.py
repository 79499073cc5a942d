"""The N = 10 column of the thesis's CIFAR-10 table on one GPU: scratch, UFM, L2T-ww, L2T-www,
200 epochs, each method's seeds as ONE compiled program (tl_jax.experiment.run_seeds), then the
report table. Run through `bash launch/thesis_gpu.sh [WORKDIR]`.

How many seeds: as many as the cost-analysis projection says fit in --budget_s (default 8 min,
compilation included), at most 30. The projection uses the FLOPs of one compiled step per
method (results/benchmarks/engine/bench_sweep_flops.json, from `python launch/bench_sweep.py --flops`),
the device's float32 peak and an assumed utilisation (--utilisation); the arithmetic is printed
and written beside the table, and so is the measured wall time, so the assumption can be
checked. Matrix multiplications and convolutions run at precision 'highest' (no TF32): the L2T
meta-gradient is already marginal in float32 (the KT iteration also sets it itself,
`kt.matmul_precision`); the header printed and written beside the table states the precision,
`kt.meta_dtype` and the BN conventions used.

`--smoke` (CPU, in the test suite): 1 seed, 1 epoch, 1 image per class, L2T-www only (the KT step
with the most parts, at the real shapes; each method's numerics are tested in
tests/test_engine.py), so the path cannot rot.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("scratch", "ufm", "l2t_ww", "l2t_www")
SMOKE_METHODS = ("l2t_www",)
# float32 peak (FLOP/s, non-tensor-core FMA) by device kind; an unknown GPU falls back to the
# H100's number and says so.
FP32_PEAK = {"H100": 67e12, "H200": 67e12, "A100": 19.5e12, "V100": 15.7e12, "L4": 30e12,
             "cpu": 1e11}


def peak_flops(kind: str) -> tuple[float, str]:
  for name, v in FP32_PEAK.items():
    if name.lower() in kind.lower():
      return v, name
  return FP32_PEAK["H100"], f"unknown device {kind!r}: assumed H100"


def plan(flops: dict, n_train: int, n_val: int, batch: int, epochs: int, budget_s: float,
         utilisation: float, peak: float, compile_s: float, max_seeds: int = 30
         ) -> tuple[int, list[str]]:
  """(seeds, lines of arithmetic): the largest seed count whose projected time fits."""
  steps = epochs * math.ceil(n_train / batch)
  rate = peak * utilisation
  lines = [f"projection: {epochs} epochs x {math.ceil(n_train / batch)} step(s) of batch {batch}"
           f" + {n_val} validation images per epoch, at {rate / 1e12:.1f} TFLOP/s "
           f"({utilisation:.0%} of {peak / 1e12:.1f})"]
  per_seed = 0.0
  for m in METHODS:
    f = flops[m]
    t = (steps * f["train_step_flops"] + epochs * n_val * f["eval_flops_per_image"]) / rate
    per_seed += t
    lines.append(f"  {m:>8s}: {f['train_step_flops'] / 1e9:.1f} GFLOP/step -> {t:.2f} s per seed")
  avail = budget_s - compile_s * len(METHODS)
  seeds = max(1, min(max_seeds, int(avail // per_seed))) if per_seed > 0 else max_seeds
  lines.append(f"  all methods: {per_seed:.2f} s per seed; budget {budget_s:.0f} s - "
               f"{len(METHODS)} x {compile_s:.0f} s compilation = {avail:.0f} s -> {seeds} seeds"
               + ("" if seeds >= max_seeds else f" (fewer than {max_seeds}: the projection "
                                                 "says 30 do not fit)"))
  return seeds, lines


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="/tmp/tl_jax_thesis_n10")
  ap.add_argument("--out", default=str(ROOT / "results" / "l2t_cifar10_gpu_n10"))
  ap.add_argument("--budget_s", type=float, default=480.0)
  ap.add_argument("--utilisation", type=float, default=0.25)
  ap.add_argument("--compile_s", type=float, default=60.0, help="assumed per method")
  ap.add_argument("--flops", default=str(ROOT / "results" / "benchmarks" / "engine" /
                                         "bench_sweep_flops.json"))
  ap.add_argument("--smoke", action="store_true")
  args = ap.parse_args(argv)

  import jax
  jax.config.update("jax_default_matmul_precision", "highest")
  from configs import l2t_thesis
  from tl_jax.analysis import report
  from tl_jax.sweep import grid
  t0 = time.time()
  config = l2t_thesis.get_config("cifar10")
  config.sweep.n_per_class = (10,)
  epochs, n_train = int(config.train.num_epochs), 10 * 10
  n_val = 10 * int(config.data.val_per_class)
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  peak, peak_name = peak_flops(kind if dev.platform != "cpu" else "cpu")
  if args.smoke:
    config.train.num_epochs = 1
    config.data.n_per_class = 1
    config.sweep.n_per_class = (1,)
    config.data.val_per_class = 2
    config.train.batch_size = 10  # one batch of the 10 images, not 10 real rows padded to 128
    config.train.checkpoint_every = 0
    config.sweep.methods = SMOKE_METHODS
    seeds, lines = 1, [f"smoke mode: 1 seed, 1 epoch, 1 image per class (one batch of 10), {', '.join(SMOKE_METHODS)}"]
  else:
    flops = json.loads(pathlib.Path(args.flops).read_text())["results"][0]["flops"]
    seeds, lines = plan(flops, n_train, n_val, int(config.train.batch_size), epochs,
                        args.budget_s, args.utilisation, peak, args.compile_s)
  config.sweep.seeds = seeds
  config.sweep.seeds_per_unit = 0
  header = [f"device: {kind} ({jax.device_count()} device(s)); float32 peak used: {peak_name}",
            "precision: jax_default_matmul_precision='highest' (no TF32) for every step; the "
            f"KT iteration sets its own: kt.matmul_precision={config.kt.matmul_precision!r}, "
            f"kt.meta_dtype={config.kt.meta_dtype!r}; BN: kt.bn_updates="
            f"{config.kt.bn_updates!r}, model.bn_running_var={config.model.bn_running_var!r}",
            *lines]
  print("\n".join(header), flush=True)
  rep = grid.run_grid(config, args.workdir)
  if rep.failed:
    for c, err in rep.failed:
      print(f"FAILED {c.workdir}: {err}", file=sys.stderr)
    return 1
  wall = time.time() - t0
  out = pathlib.Path(args.out)
  report.build_report(args.workdir, out)
  note = header + [f"wall time (compilation included): {wall:.0f} s",
                   f"command: python launch/thesis_gpu.py {' '.join(argv or sys.argv[1:])}"]
  (out / "run.txt").write_text("\n".join(note) + "\n")
  print("\n".join(note[-2:]))
  print(f"table and figures: {out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
