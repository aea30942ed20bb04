#!/bin/bash
# Download the comparison loaders of tests/gpu/device-run.sh as wheels for the device
# machine's Python (3.12, manylinux x86_64; no network there) into tests/gpu/wheels/
# (gitignored, carried with the checkout; 9 MiB for the versions below, 64 MiB at most).
# PY_VERSION= for another Python. The wheels' own dependency is torch, which the device has.
set -eu
cd "$(dirname "$0")"
PYV=${PY_VERSION:-3.12}
PKGS=${WHEELS:-"fastsafetensors==0.5.0 instanttensor==0.2.2"}
PY=${PYTHON:-python3}
mkdir -p wheels
# manylinux2014 (glibc 2.17) alone finds nothing: these wheels are tagged manylinux_2_28
# shellcheck disable=SC2086
"$PY" -m pip download --only-binary=:all: --python-version "$PYV" --no-deps -d wheels \
	--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 $PKGS
du -ch wheels/*.whl | tail -n 1
[ "$(du -cb wheels/*.whl | tail -n 1 | cut -f1)" -le $((64 << 20)) ] ||
	{ echo "fetch-wheels.sh: wheels over 64 MiB: the carry limit" >&2; exit 1; }
ls -l wheels/
