#!/usr/bin/env bash
# Builds the venv from setup.cfg (first time only) and runs the embedded default experiment:
# LeNet-5 transfer on scikit-learn digits (no download), a few minutes on 2 CPU cores.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
WORKDIR="${1:-/tmp/tl_jax_quickstart}"
shift || true
python -m tl_jax.main --config configs/quickstart.py --workdir "$WORKDIR" "$@"
