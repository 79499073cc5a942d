#!/usr/bin/env bash
# Run a tl_jax config or sweep on a single- or multi-GPU Linux host.
#   bash launch/gpu_host.sh python -m tl_jax.main --config configs/<name>.py --workdir /data/runs/x
#   bash launch/gpu_host.sh python launch/sweep.py --config configs/<sweep>.py --workdir /data/sweeps/y
# Installs jax with CUDA 12 wheels into .venv-gpu (once), then runs the given command.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TL_JAX_VENV="${TL_JAX_VENV:-$ROOT/.venv-gpu}"
source "$ROOT/launch/env.sh"
ensure_jax_backend gpu cuda12
# Memory: let several seeds share the GPU without XLA grabbing 75% up front; keep the allocator
# from fragmenting on long sweeps. Raise the fraction for single large runs.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
# Faster GEMM/conv autotuning; deterministic reductions cost ~10% but make seeds reproducible.
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true}"
export TF_CPP_MIN_LOG_LEVEL=2
python -c "import jax; print('[tl_jax] devices:', jax.devices())"
exec "$@"
