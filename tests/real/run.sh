#!/bin/bash
# make check-real: the real stack (official safetensors, NeMo Automodel's adapter and
# checkpointer, transformers, torch.distributed.checkpoint) against real mounts, in the pinned
# environment of setup.sh; pytest's summary, then one line "N passed, N failed[, N skipped]".
set -u
cd "$(dirname "$0")/../.."
PY=$(tests/real/setup.sh) || { echo "check-real: could not build the environment"; echo "0 passed, 1 failed"; exit 1; }
# the suite runs offline: nothing may reach for a hub
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
BUILD=${BUILD:-build} "$PY" -m pytest tests/real ${PYTEST_ARGS:-} "$@"
