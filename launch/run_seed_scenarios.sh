#!/usr/bin/env bash
# Runs the seed-document scenarios (configs/seed00*_*.py) and writes the results/seedNNN/ tables
# and figures. CPU-shortened settings are in each config's docstring; on 2 CPU cores the whole
# script takes ~1 h. Usage: bash launch/run_seed_scenarios.sh [WORKROOT] [SCENARIO...]
# SCENARIO in: seed004_gtsrb seed004_catsdogs seed003 seed001 seed000 seed000_ham10000
# (default: all, this order).
# Finished runs (summary.json present) are skipped, so an interrupted script resumes.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
W="${1:-workdirs}"
shift || true
ALL=(seed004_gtsrb seed004_catsdogs seed003 seed001 seed000 seed000_ham10000)
if [ $# -gt 0 ]; then TODO=("$@"); else TODO=("${ALL[@]}"); fi
mkdir -p "$W/logs"

run() {  # name config workdir results-dir
  local name="$1" cfg="$2" wd="$3" res="$4" log="$W/logs/$1.log"
  echo "[seed scenarios] $name: $cfg -> $wd ($(date -u +%FT%TZ))"
  if [ -f "$wd/summary.json" ]; then  # a finished single run (comparisons skip runs themselves)
    echo "[seed scenarios] $name: finished run in $wd, not rerun"
  elif ! python -m tl_jax.main --config "$cfg" --workdir "$wd" > "$log" 2>&1; then
    echo "[seed scenarios] $name failed; last lines of $log:" >&2
    tail -5 "$log" >&2
    return 1
  fi
  grep '^\[tl_jax\]\|^|' "$log" || true
  python -m tl_jax.scenarios.tables --workdir "$wd" --out "$res" > /dev/null
}

for s in "${TODO[@]}"; do
  case "$s" in
    seed004_gtsrb)
      run "$s" configs/seed004_gtsrb_lenet.py "$W/seed004_gtsrb" results/seed004/gtsrb ;;
    seed004_catsdogs)
      run "$s" configs/seed004_catsdogs_vgglab.py "$W/seed004_catsdogs" results/seed004/catsdogs ;;
    seed003)
      run "$s" configs/seed003_cifar100_regularization.py "$W/seed003_cifar100" results/seed003 ;;
    seed001) run "$s" configs/seed001_catsdogs_effnet.py "$W/seed001" results/seed001 ;;
    seed000)
      run "$s" configs/seed000_catsdogs_five_scenarios.py "$W/seed000_catsdogs" results/seed000
      python -m tl_jax.scenarios.gradcam_panel --n 6 \
          --config configs/seed000_catsdogs_five_scenarios.py \
          --workdir "$W/seed000_catsdogs" --out results/seed000/gradcam_panel.png
      run seed000_imagenet96 configs/seed000_catsdogs_imagenet96.py "$W/seed000_imagenet96" \
          results/seed000/imagenet96 ;;
    seed000_ham10000)
      run "$s" configs/seed000_ham10000_five_scenarios.py "$W/seed000_ham10000" \
          results/seed000/ham10000
      python -m tl_jax.scenarios.gradcam_panel --n 7 --feature stage5 \
          --config configs/seed000_ham10000_five_scenarios.py \
          --workdir "$W/seed000_ham10000" --out results/seed000/ham10000/gradcam_panel.png ;;
    *) echo "unknown scenario $s; one of ${ALL[*]}" >&2; exit 2 ;;
  esac
done
