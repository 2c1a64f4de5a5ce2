#!/usr/bin/env bash
# The main job: set up (or reuse) the environment, then run the whole pipeline on synthetic data on the CPU.
# Extra arguments go to 'nnunet-ext demo' (e.g. --out DIR).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"
exec nnunet-ext demo "$@"
