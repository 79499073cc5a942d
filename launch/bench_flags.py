"""XLA:CPU flags on the engine's train step (lax.scan), one fresh process per flag (not a test).

Why: XLA reads XLA_FLAGS once, at import, so each flag needs its own process. This runs
launch/bench_loop.py (the step inside the engine's scan, tl_jax's CPU defaults) once per variant,
with the default flags first and again last (so a drift of the machine during the sweep shows),
PyTorch's twin step in the two default runs only, and writes one JSON per variant plus a table of
scan img/s relative to the mean of the two default runs.

  python launch/bench_flags.py --out results/benchmarks/flags_cpu2
  python launch/bench_flags.py --smoke --out /tmp/flags    # LeNet-5, 2 variants, ~1 min

A flag XLA does not know aborts its process ("Unknown flag in XLA_FLAGS"); that variant is
reported as failed with the last line of its stderr, and the sweep goes on. Run it on a quiet
machine: the variants are not interleaved, so load changes between them read as flag effects.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "launch") not in sys.path:
  sys.path.insert(0, str(ROOT / "launch"))

import benchmark as bm  # noqa: E402  (model keys, atomic writes)

BASELINE = "default"
VARIANTS = {  # name -> XLA_FLAGS (added to whatever XLA_FLAGS the caller set)
    BASELINE: "",
    "concurrency_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "multi_output_fusion": "--xla_cpu_use_multi_output_fusion=true",
    "no_new_fusion_emitters": "--xla_cpu_disable_new_fusion_emitters=true",
    "no_ynn": "--xla_cpu_experimental_ynn_fusion_type=",
    # YNNPACK without its convolutions (dots, fusions kept): Eigen's convs, YNNPACK's matmuls
    "no_ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "ynn_dot_only": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",  # no fusions
    # also without YNNPACK's reductions (BatchNorm's statistics are reduce fusions)
    "no_ynn_conv_reduce": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce",
    # 'auto' with the concurrency-optimised scheduler (small models leave a core idle)
    "no_ynn_conv_concurrency": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution "
                               "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "no_xnn": "--xla_cpu_experimental_xnn_fusion_type=",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "vector_width_256": "--xla_cpu_prefer_vector_width=256",
    "fast_math": "--xla_cpu_enable_fast_math=true",
}
SMOKE_VARIANTS = (BASELINE, "concurrency_scheduler")


def run_variant(name: str, flags: str, models: str, steps: int, reps: int, torch: bool,
                out: Path, smoke: bool, timeout_s: int) -> dict:
  """One bench_loop process under `flags`; {'name', 'flags', 'ok', 'error', 'json'}."""
  cmd = [sys.executable, str(ROOT / "launch" / "bench_loop.py"), "--strategies", "auto",
         "--xla-flags", "none", "--out", str(out)]  # the variant's XLA_FLAGS alone
  cmd += ["--smoke"] if smoke else ["--models", models, "--steps", str(steps), "--reps", str(reps)]
  cmd += [] if torch else ["--no-torch"]
  env = dict(os.environ, XLA_FLAGS=" ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags)
                                           if f))
  print(f"[bench_flags] {name}: XLA_FLAGS={env['XLA_FLAGS']!r}", flush=True)
  try:
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    ok, err = p.returncode == 0 and out.is_file(), (p.stderr.strip().splitlines() or [""])[-1]
  except subprocess.TimeoutExpired:
    ok, err = False, f"timed out after {timeout_s} s"
  if not ok:
    print(f"[bench_flags] {name} failed: {err}", flush=True)
  return {"name": name, "flags": flags, "ok": ok, "error": "" if ok else err,
          "json": str(out) if ok else ""}


def scan_img_s(path: str) -> dict[str, float]:
  """{model: img/s of the step in the scan} from a bench_loop JSON."""
  recs = json.loads(Path(path).read_text())["records"]
  return {r["model"]: r["auto/scan"]["median_img_s"] for r in recs}


def torch_img_s(path: str) -> dict[str, float]:
  recs = json.loads(Path(path).read_text())["records"]
  return {r["model"]: r["torch/alone"]["median_img_s"] for r in recs if "torch/alone" in r}


def table(runs: list[dict]) -> str:
  """Markdown: scan img/s per model and variant, and the ratio to the mean of the default runs."""
  ok = [r for r in runs if r["ok"]]
  base = [scan_img_s(r["json"]) for r in ok if r["name"] == BASELINE]
  models = sorted({m for r in ok for m in scan_img_s(r["json"])})
  ref = {m: statistics.fmean(b[m] for b in base if m in b) for m in models
         if any(m in b for b in base)}
  lines = ["| variant | XLA_FLAGS | " + " | ".join(f"{m} img/s (x default)" for m in models) + " |",
           "|---|---|" + "---:|" * len(models)]
  for r in runs:
    if not r["ok"]:
      lines.append(f"| {r['name']} | `{r['flags']}` | failed: {r['error']} |")
      continue
    v = scan_img_s(r["json"])
    cells = [f"{v[m]:.1f} ({v[m] / ref[m]:.2f})" if m in v and m in ref else "-" for m in models]
    lines.append(f"| {r['name']} | `{r['flags'] or '(none)'}` | " + " | ".join(cells) + " |")
  tor = [torch_img_s(r["json"]) for r in ok if r["name"] == BASELINE]
  if tor and all(tor):
    lines.append("| PyTorch (in the default runs) | | " + " | ".join(
        f"{statistics.fmean(t[m] for t in tor if m in t):.1f}" if any(m in t for t in tor)
        else "-" for m in models) + " |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variants", default=",".join(v for v in VARIANTS if v != BASELINE),
                 help=f"comma list of {list(VARIANTS)} (the default runs first and last anyway)")
  p.add_argument("--models", default="resnet32,vgg9")
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--timeout", type=int, default=900, help="seconds per variant")
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--out", required=True, help="directory for <variant>.json and summary.md")
  args = p.parse_args(argv)
  names = [v.strip() for v in args.variants.split(",") if v.strip()]
  for v in names:
    if v not in VARIANTS:
      print(f"error: --variants: got {v!r}; allowed: {', '.join(VARIANTS)}", file=sys.stderr)
      raise SystemExit(2)
  bm.model_keys(args.models)
  if args.smoke:
    names = list(SMOKE_VARIANTS[1:])
  order = [BASELINE] + [v for v in names if v != BASELINE] + [BASELINE]
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  runs = []
  for i, name in enumerate(order):
    tag = name if name != BASELINE else ("default_first" if i == 0 else "default_last")
    runs.append(run_variant(name, VARIANTS[name], args.models, args.steps, args.reps,
                            torch=name == BASELINE, out=out / f"{tag}.json", smoke=args.smoke,
                            timeout_s=args.timeout))
  text = table(runs)
  meta = {"command": "python " + " ".join(["launch/bench_flags.py"] + (argv or sys.argv[1:])),
          "git_commit": bm.git("rev-parse", "HEAD"), "runs": runs}
  bm.atomic_write(out / "summary.json", json.dumps(meta, indent=1) + "\n")
  bm.atomic_write(out / "summary.md", text)
  print(text)


if __name__ == "__main__":
  main()
