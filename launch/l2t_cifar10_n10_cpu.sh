#!/usr/bin/env bash
# The N = 10 column of the thesis's CIFAR-10 table (configs/l2t_thesis.py:cifar10) at the full
# protocol on a CPU, one seed per sweep unit, each finished seed kept in results/ as it lands.
#
#   bash launch/l2t_cifar10_n10_cpu.sh            # run the pending cells in ORDER, then report
#   COMMIT=1 bash launch/l2t_cifar10_n10_cpu.sh   # also `git commit` each finished cell
#
# Runs from a clean clone of HEAD (CODE_DIR), so editing the checkout meanwhile cannot change the
# code a cell runs; every kept cell records the commit that produced it (provenance.json).
# A later sitting continues: cells whose summary is already in results/ are skipped (their kept
# files are copied back into the sweep root so the report sees every finished cell).
# L2T-ww seed 0 also records the float32-vs-float64 meta-gradient probe every 10 iterations
# (kt.precision_probe_every; it reads the state and changes nothing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/launch/env.sh"
WD="${WD:-$ROOT/workdirs/l2t_cifar10_n10}"
OUT="$ROOT/results/l2t_cifar10_n10"
CODE_DIR="${CODE_DIR:-$ROOT/workdirs/l2t_cifar10_n10_code}"
ORDER="${ORDER:-l2t_ww:0 scratch:0 ufm:0 l2t_www:0 scratch:1 scratch:2 l2t_ww:1 ufm:1 l2t_www:1 l2t_ww:2 ufm:2 l2t_www:2}"
KEEP="summary.json config.json metrics.jsonl history.json meta_precision.jsonl trace.jsonl curves.png confusion_matrix.png"

if [ -n "$(git -C "$ROOT" status --porcelain -- tl_jax configs launch setup.cfg)" ]; then
  echo "error: tl_jax/, configs/ or launch/ has uncommitted changes; allowed: a clean checkout (results must come from committed code)" >&2
  exit 2
fi
COMMIT_ID="$(git -C "$ROOT" rev-parse --short HEAD)"
rm -rf "$CODE_DIR" && git clone -q "$ROOT" "$CODE_DIR"
export PYTHONPATH="$CODE_DIR${PYTHONPATH:+:$PYTHONPATH}"
export TL_JAX_SHARED="${TL_JAX_SHARED:-$(cd "$ROOT/.." && pwd)/shared}"
mkdir -p "$WD" "$OUT/runs"

for cell in $ORDER; do
  m="${cell%%:*}"; s="${cell##*:}"
  rel="$m/n10/seed$s"
  if [ -f "$OUT/runs/$rel/summary.json" ]; then
    mkdir -p "$WD/$rel" && cp -n "$OUT/runs/$rel"/* "$WD/$rel/" 2>/dev/null || true
    echo "[n10] kept: $rel ($(python -c "import json;print(json.load(open('$OUT/runs/$rel/provenance.json'))['commit'])"))"
    continue
  fi
  extra=()
  if [ "$cell" = "l2t_ww:0" ]; then extra=(10); fi
  echo "[n10] running $rel on $COMMIT_ID ($(date -u +%H:%M:%S))"
  (cd "$CODE_DIR" && python - "$WD" "$m" "$s" "${extra[@]}" <<'EOF'
import sys
import ml_collections
from configs import l2t_thesis
from tl_jax.sweep import grid
wd, method, seed, *extra = sys.argv[1:]
c = l2t_thesis.get_config("cifar10")
c.train.progress = False
c.sweep = ml_collections.ConfigDict({"methods": (method,), "n_per_class": (10,),
                                     "seeds": [int(seed)], "seeds_per_unit": 1})
if extra:
  c.kt.precision_probe_every = int(extra[0])
grid.run_grid(c, wd)
EOF
  )
  if [ ! -f "$WD/$rel/summary.json" ]; then echo "[n10] FAILED: $rel (see the log above)"; continue; fi
  tmp="$OUT/runs/.tmp_${m}_${s}"; rm -rf "$tmp"; mkdir -p "$tmp"
  for f in $KEEP; do [ -f "$WD/$rel/$f" ] && cp "$WD/$rel/$f" "$tmp/"; done
  python - "$tmp/provenance.json" "$COMMIT_ID" <<'EOF'
import json, os, platform, sys, datetime
json.dump({"commit": sys.argv[2], "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "hardware": f"{platform.machine()} {os.cpu_count()} CPU cores ({platform.processor() or 'cpu'})",
           "command": "bash launch/l2t_cifar10_n10_cpu.sh"}, open(sys.argv[1], "w"), indent=1)
EOF
  mkdir -p "$(dirname "$OUT/runs/$rel")" && rm -rf "$OUT/runs/$rel" && mv "$tmp" "$OUT/runs/$rel"
  echo "[n10] kept: $rel"
  if [ "${COMMIT:-0}" = "1" ]; then
    for i in 1 2 3 4 5; do
      git -C "$ROOT" add "$OUT/runs/$rel" && git -C "$ROOT" commit -q -m "l2t_cifar10_n10: $rel (code $COMMIT_ID)" -- "$OUT/runs/$rel" && break
      sleep 5
    done
  fi
done
python -m tl_jax.analysis.report --runs "$WD" --out "$OUT/report" --methods scratch,ufm,l2t_ww,l2t_www \
    --compare l2t_www,l2t_ww --compare l2t_ww,ufm --compare l2t_www,ufm --compare ufm,scratch
python -m tl_jax.analysis.lambdas --runs "$WD" --out "$OUT/figures/lambdas.png" --table "$OUT/lambdas.md" \
    --title "CIFAR-10 N = 10: matching weights λ per layer pair over training"
if [ -f "$WD/l2t_ww/n10/seed0/meta_precision.jsonl" ]; then
  python -m tl_jax.analysis.meta_precision --runs "$WD/l2t_ww/n10/seed0" \
      --out "$OUT/figures/meta_precision_l2t_ww_seed0.png" \
      --title "L2T-ww, CIFAR-10 N = 10, seed 0: float32 vs float64 meta-gradient (CPU)"
fi
