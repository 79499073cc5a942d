# Sourced by the launch scripts: creates (once) and activates the project venv from setup.cfg.
# TL_JAX_VENV overrides its location; EXTRAS picks the optional dependency groups.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TL_JAX_VENV:-$ROOT/.venv}"
EXTRAS="${EXTRAS:-test,all}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[tl_jax] creating venv at $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# Reinstall only when setup.cfg changed since the last install.
STAMP="$VENV/.tl_jax_installed"
WANT="$(sha256sum "$ROOT/setup.cfg" | cut -c1-16)-$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[tl_jax] installing tl_jax[$EXTRAS] into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export KERAS_BACKEND="${KERAS_BACKEND:-jax}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# Persistent XLA compilation cache: cuts repeated cold starts (see results/benchmarks).
export TL_JAX_COMPILATION_CACHE="${TL_JAX_COMPILATION_CACHE:-$ROOT/.cache/jax}"
cd "$ROOT"

# For gpu_host.sh / tpu_vm.sh: install jax's accelerator wheels matching the pinned jax once.
#   ensure_jax_backend gpu cuda12    |    ensure_jax_backend tpu tpu
ensure_jax_backend() {
  local backend="$1" extra="$2"
  if ! python -c "import jax; assert jax.default_backend() == '$backend'" 2>/dev/null; then
    python -m pip install -q "jax[$extra]==$(python -c 'import jax; print(jax.__version__)')"
  fi
}
