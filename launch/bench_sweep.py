"""K seeds as one vmapped program vs K sequential runs of the same work (not a test).

    python launch/bench_sweep.py [--k 8] [--model lenet5] [--epochs 3] [--n_per_class 20]

Same data (scikit-learn digits upsampled to 32x32, N per class per seed, 10 validation images per
class), same keys and batches on both paths (tl_jax.sweep.vmapped.run_vmapped vs run_sequential);
compile time excluded (one warm-up call each). Reports images/s over the K runs and writes
sweep_<hardware>.json / .md atomically under --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import subprocess
import sys

import jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "launch"))

from bench_l2t import cpu_name, hardware_slug  # noqa: E402
from tl_jax import models  # noqa: E402
from tl_jax.data import augment  # noqa: E402
from tl_jax.data.sources_extra import load_digits  # noqa: E402
from tl_jax.data.sources import pil_resize  # noqa: E402
from tl_jax.sweep import vmapped  # noqa: E402
from tl_jax.train import optim  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--k", type=int, default=8)
  ap.add_argument("--model", default="lenet5")
  ap.add_argument("--epochs", type=int, default=3)
  ap.add_argument("--n_per_class", type=int, default=20)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
  args = ap.parse_args(argv)
  ds = load_digits()
  images = pil_resize(ds.images, (32, 32))
  kwargs = {"variant": "modern"} if args.model == "lenet5" else {}
  model = models.create_model(args.model, 10, **kwargs)
  seeds = list(range(args.k))
  data = vmapped.draw_seed_data(ds.labels, seeds, args.n_per_class, 10)
  n_train = data.train_idx.shape[1]
  spe = -(-n_train // args.batch)
  tx = optim.make_optimizer({"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "constant"},
                            spe, args.epochs, None)
  spec = vmapped.LoopSpec(args.batch, 256)
  aug = augment.make_augment({"augment": "none", "normalize": "zero_one"})
  pre = augment.make_preprocess({"normalize": "zero_one"})
  times = {"vmapped": [], "sequential": []}
  for _ in range(args.repeats):
    r = vmapped.time_both_paths(model, tx, images, ds.labels, data, spec, args.epochs, aug, pre)
    times["vmapped"].append(r["vmapped_s"])
    times["sequential"].append(r["sequential_s"])
  work = args.k * args.epochs * spe * args.batch
  res = {name: {"median_s": sorted(t)[len(t) // 2], "times_s": t,
                "images_per_s": work / sorted(t)[len(t) // 2]} for name, t in times.items()}
  commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  meta = {"command": "python launch/bench_sweep.py " + " ".join(argv or sys.argv[1:]),
          "git_commit": commit,
          "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
          "hardware": f"{cpu_name()}, {os.cpu_count()} cores" if jax.default_backend() == "cpu"
          else jax.devices()[0].device_kind, "backend": jax.default_backend(),
          "devices": jax.device_count(), "jax": jax.__version__, "k": args.k,
          "model": args.model, "epochs": args.epochs, "n_train_per_seed": n_train,
          "batch": args.batch, "images_trained_per_call": work,
          "load_average_at_end": os.getloadavg()}
  for name, r in res.items():
    print(f"{name:>10s}: {r['median_s']:.2f} s for K={args.k} ({r['images_per_s']:.0f} img/s)")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  slug = hardware_slug()
  tmp = out / f".sweep_{slug}.json.tmp"
  tmp.write_text(json.dumps({"meta": meta, "results": res}, indent=2))
  tmp.replace(out / f"sweep_{slug}.json")
  lines = [f"# K={args.k} seeds: one vmapped program vs sequential runs ({meta['hardware']})", "",
           f"Command: `{meta['command']}`; commit {commit}; {meta['date']}; jax {jax.__version__};"
           f" {args.model}, {args.epochs} epochs x {spe} steps of batch {args.batch} per seed; "
           f"median of {args.repeats} (compile excluded); 1-min load at the end "
           f"{meta['load_average_at_end'][0]:.2f}.", "",
           "| path | median s | img/s |", "|---|---:|---:|"]
  for name, r in res.items():
    lines.append(f"| {name} | {r['median_s']:.2f} | {r['images_per_s']:.0f} |")
  tmp = out / f".sweep_{slug}.md.tmp"
  tmp.write_text("\n".join(lines) + "\n")
  tmp.replace(out / f"sweep_{slug}.md")


if __name__ == "__main__":
  main()
