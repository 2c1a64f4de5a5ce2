#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install nnunet-ext into it with its test tools.
# Sourced by scripts/demo.sh and scripts/test.sh. Set NNUNET_EXT_VENV to use another location.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NNUNET_EXT_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "Creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
# Reinstall only when the dependencies changed (a hash of pyproject.toml is kept beside the venv).
stamp="$venv/.nnunet_ext_installed"
want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$venv/bin/python" -c "import nnunet_ext" 2>/dev/null; then
  echo "Installing nnunet-ext and its dependencies into $venv (first time: a few minutes, ~6 GB with PyTorch)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$repo[test]"
  echo "$want" > "$stamp"
fi
# The morphometrics kernels compiled ahead of time (about 10 s, again only when _kernels.py changes): without them
# every process imports and initialises numba (0.6 s of CPU) and a fresh install's first run compiles for 8 s.
if ! "$venv/bin/python" -c "import sys; from nnunet_ext.morphometrics.kernels import using_aot; sys.exit(not using_aot())" 2>/dev/null; then
  "$venv/bin/python" -m nnunet_ext.morphometrics.compile_kernels \
    || echo "warning: ahead-of-time morphometrics kernels not built; numba's JIT kernels serve instead"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
