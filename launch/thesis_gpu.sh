#!/usr/bin/env bash
# The N = 10 column of the thesis's CIFAR-10 table on one GPU host (4 methods x up to 30 seeds x
# 200 epochs, each method one compiled program), sized by launch/thesis_gpu.py to finish within
# 8 minutes of GPU time including compilation; writes the table to results/l2t_cifar10_gpu_n10/.
#   bash launch/thesis_gpu.sh [WORKDIR] [--budget_s 480] [--utilisation 0.25]
#   SMOKE=1 bash launch/thesis_gpu.sh WORKDIR --out DIR     # CPU smoke mode (the test suite)
# Needs ../shared (CIFAR-10, the L2T-ww ResNet-32 weights) or TL_JAX_SHARED.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKDIR="${1:-/tmp/tl_jax_thesis_n10}"
shift || true
if [ "${SMOKE:-0}" = "1" ]; then
  source "$ROOT/launch/env.sh"
  exec python "$ROOT/launch/thesis_gpu.py" --workdir "$WORKDIR" --smoke "$@"
fi
exec bash "$ROOT/launch/gpu_host.sh" python "$ROOT/launch/thesis_gpu.py" --workdir "$WORKDIR" "$@"
