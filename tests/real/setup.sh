#!/bin/bash
# The virtual environment of `make check-real`, built once from tests/real/requirements.txt
# and printed (its python) on stdout. Wheels are kept in $QVLMOEFS_REAL_CACHE/wheels (default
# ~/.cache/qvlmoefs-real, outside the checkout), so a second run downloads nothing; the
# environment is kept beside them, named after the hash of requirements.txt, and rebuilt only
# when the pins change. Everything is pinned and installed with --no-deps: pip resolves nothing.
set -eu
cd "$(dirname "$0")/../.."
REQ=tests/real/requirements.txt
CACHE=${QVLMOEFS_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qvlmoefs-real}
PY=${PYTHON:-python3}
VENV=$CACHE/venv-$(sha256sum "$REQ" | cut -c1-16)
if [ -f "$VENV/.complete" ]; then
	echo "$VENV/bin/python"
	exit 0
fi
log() { echo "check-real: $*" >&2; }
mkdir -p "$CACHE/wheels"
"$PY" -m venv --help >/dev/null 2>&1 || { log "$PY has no venv module (apt-get install python3-venv)"; exit 1; }
# only what the cache lacks is fetched: an offline install is tried first
t0=$(date +%s)
rm -rf "$VENV"
"$PY" -m venv "$VENV"
if ! "$VENV/bin/pip" install -q --no-index --no-deps --find-links "$CACHE/wheels" -r "$REQ" >/dev/null 2>&1; then
	log "downloading the pinned wheels into $CACHE/wheels (about 3 GB the first time)"
	"$VENV/bin/pip" download -q --no-deps -d "$CACHE/wheels" -r "$REQ" >&2
	"$VENV/bin/pip" install -q --no-index --no-deps --find-links "$CACHE/wheels" -r "$REQ" >&2
fi
"$VENV/bin/python" -c "import torch, safetensors, transformers, nemo_automodel, pytest" >&2
touch "$VENV/.complete"
# environments of older pins are dead weight
for old in "$CACHE"/venv-*; do
	[ "$old" = "$VENV" ] || rm -rf "$old"
done
log "environment ready in $(($(date +%s) - t0)) s: $VENV"
echo "$VENV/bin/python"
