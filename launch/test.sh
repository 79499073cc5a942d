#!/usr/bin/env bash
# Builds the venv from setup.cfg (first time only) and runs the whole test suite.
# Tests that need ../shared skip with a reason when it is absent. Extra args go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest -n 2 --dist loadfile -q "$@"
