#!/usr/bin/env bash
# Run tl_jax on a Cloud TPU VM (single host, or every host of a pod slice).
#   Single host:  bash launch/tpu_vm.sh python launch/sweep.py --config configs/<sweep>.py --workdir gs-or-local-dir
#   Pod slice:    run the same command on every host at once (e.g. `gcloud compute tpus tpu-vm ssh
#                 NAME --worker=all --command "cd tl_jax && bash launch/tpu_vm.sh ..."`).
#                 tl_jax calls jax.distributed.initialize() when TL_JAX_MULTIHOST=1; each host then
#                 sees all devices, the seed axis is sharded across them (tl_jax/engine/fit.py),
#                 and only process 0 writes reports. Alternatively give each host its own cells with
#                 `python launch/sweep.py --print_commands --num_hosts H`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TL_JAX_VENV="${TL_JAX_VENV:-$ROOT/.venv-tpu}"
source "$ROOT/launch/env.sh"
ensure_jax_backend tpu tpu
# Large host->device transfers of whole datasets: raise the TPU host-memory limits moderately.
export TPU_PREMAPPED_BUFFER_SIZE="${TPU_PREMAPPED_BUFFER_SIZE:-4294967296}"
export TF_CPP_MIN_LOG_LEVEL=2
python -c "import jax; print('[tl_jax] process', jax.process_index(), 'devices:', jax.device_count())"
exec "$@"
