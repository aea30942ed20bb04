#!/bin/bash
# The GPU measurement, one script for a device machine (H100 or H200, no network), at most
# 8 minutes: build (no CUDA toolkit needed: the runtime is loaded with dlopen), find libcudart
# (the system's, or the nvidia-* wheels torch brought), install the comparison loaders from
# tests/gpu/wheels/ (tests/gpu/fetch-wheels.sh) when they do not import, then
# tests/gpu/device_run.py: GPU check, an 8.6 GB checkpoint with the real 30B-A3B schema and
# dims (5 of 48 layers), the /dev/fuse check, every row warm and cold, the table and ratios.
# Everything it prints lands in $OUT (device-run.log, table.md, results.json) when OUT is set.
#
# Environment: OUT; DEVICE_RUN_DIR (work folder, default build/device-run, kept between runs
# so a second run reuses the checkpoint); DEVICE_RUN_MKCKPT (qvlmoefs-mkckpt options instead
# of "--preset 30b-a3b --layers 5", for small CPU runs); DEVICE_RUN_BUDGET (seconds, 450);
# DEVICE_RUN_REPS (3); PYTHON (python3); DEVICE_RUN_WHEELS (tests/gpu/wheels);
# DEVICE_RUN_BUILD=prebuilt (tests/gpu/prebuilt/ without trying make). Without a GPU, torch,
# FUSE or a working DONTNEED, the rows that need it say so and the rest run;
# tests/integration/test_device_run.py runs it so on a CPU against tests/gpu/fake_cudart.c.
set -u -o pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
T0=$(date +%s)
BUDGET=${DEVICE_RUN_BUDGET:-450}
W=${DEVICE_RUN_DIR:-$ROOT/build/device-run}
OUT=${OUT:-$W/out}
PY=${PYTHON:-python3}
WHEELS=${DEVICE_RUN_WHEELS:-$ROOT/tests/gpu/wheels}
mkdir -p "$W" "$OUT" || exit 1

# A CUDA runtime the loader can find: as is, else CUDA_HOME, else next to torch's wheels.
find_cudart() {
	local probe='import ctypes, sys
for n in ("libcudart.so", "libcudart.so.13", "libcudart.so.12"):
    try:
        ctypes.CDLL(n); sys.exit(0)
    except OSError:
        pass
sys.exit(1)'
	if "$PY" -c "$probe" 2>/dev/null; then
		echo "CUDA runtime: found by the loader as is"
		unversioned
		return
	fi
	local d
	for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" $("$PY" - 2>/dev/null <<'PY'
import glob, os, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
for p in sorted({os.path.dirname(f) for s in dirs for f in glob.glob(f"{s}/nvidia/**/libcudart.so*", recursive=True)}):
    print(p)
PY
); do
		if ls "$d"/libcudart.so* >/dev/null 2>&1; then
			export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
			if "$PY" -c "$probe" 2>/dev/null; then
				echo "CUDA runtime: $d"
				unversioned
				return
			fi
		fi
	done
	echo "CUDA runtime: none found (no libcudart.so*): the GPU rows will say no GPU"
}

# fastsafetensors dlopens plain "libcudart.so", which torch's wheels do not ship (only .so.12
# or .so.13): a link to the runtime found, in a folder of our own, put first on the path.
unversioned() {
	local lib
	"$PY" -c 'import ctypes; ctypes.CDLL("libcudart.so")' 2>/dev/null && return
	lib=$("$PY" -c 'import ctypes
for n in ("libcudart.so.13", "libcudart.so.12"):
    try:
        ctypes.CDLL(n)
        break
    except OSError:
        pass
print(next((l.split()[-1] for l in open("/proc/self/maps") if "libcudart.so" in l), ""))' 2>/dev/null)
	[ -n "$lib" ] || return 0
	mkdir -p "$W/cudart"
	ln -sf "$lib" "$W/cudart/libcudart.so"
	export LD_LIBRARY_PATH="$W/cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	echo "CUDA runtime: $W/cudart/libcudart.so -> $lib (for loaders that ask for the plain name)"
}

# The build here, or tests/gpu/prebuilt/ (tests/gpu/prebuild.sh) where this machine cannot.
build() {
	if [ "${DEVICE_RUN_BUILD:-make}" = make ] && command -v cc >/dev/null &&
		make -s -j"$(nproc)" all >"$W/build.log" 2>&1; then
		BIN=$ROOT/build
		echo "build: make ($(./build/qvlmoefs -V | tail -n 1))"
	elif [ -x tests/gpu/prebuilt/qvlmoefs ]; then
		BIN=$ROOT/tests/gpu/prebuilt
		export LD_LIBRARY_PATH="$BIN/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
		echo "build: make failed or not asked for ($(tail -n 1 "$W/build.log" 2>/dev/null || echo 'no cc')):" \
			"using the carried tests/gpu/prebuilt/ ($("$BIN/qvlmoefs" -V | tail -n 1))"
	else
		echo "build: make failed: $(tail -n 1 "$W/build.log" 2>/dev/null || echo 'no C compiler')"
		echo "       (and no tests/gpu/prebuilt/: run tests/gpu/prebuild.sh where it builds, and carry it)"
		return 1
	fi
}

# fastsafetensors and instanttensor from the carried wheels, when they do not import as is.
wheels() {
	local pkg missing=() w
	for pkg in fastsafetensors instanttensor; do
		"$PY" -c "import $pkg" 2>/dev/null || missing+=("$pkg")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		echo "loaders: fastsafetensors and instanttensor import as installed"
		return
	fi
	local lib=$W/pylib
	for pkg in "${missing[@]}"; do
		w=$(ls "$WHEELS"/"$pkg"-*.whl 2>/dev/null | head -n 1)
		if [ -z "$w" ]; then
			echo "loaders: $pkg missing and no wheel in $WHEELS (tests/gpu/fetch-wheels.sh)"
			continue
		fi
		"$PY" -m pip install -q --no-deps --no-index --target "$lib" "$w" >/dev/null 2>&1 ||
			"$PY" -m zipfile -e "$w" "$lib" # a wheel is a zip file: no pip needed
		echo "loaders: $(basename "$w") into $lib"
	done
	export PYTHONPATH="$lib${PYTHONPATH:+:$PYTHONPATH}"
}

main() {
	echo "== qvlmoefs device run, $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET} s"
	echo "== $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)"
	"$PY" -c 'import sys; print("python", sys.version.split()[0])' || { echo "no $PY"; return 1; }
	find_cudart
	build || return 1
	wheels
	"$PY" - <<'PY' || true
for m in ("torch", "safetensors", "fastsafetensors", "instanttensor", "transformers"):
    try:
        x = __import__(m)
        extra = f", cuda {x.version.cuda}, available {x.cuda.is_available()}" if m == "torch" else ""
        print(f"{m} {getattr(x, '__version__', '?')}{extra}")
    except Exception as e:
        print(f"{m}: missing ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
PY
	local left=$((T0 + BUDGET - $(date +%s)))
	timeout $((left + 20)) "$PY" tests/gpu/device_run.py --bin "$BIN" --work "$W" --out "$OUT" \
		--deadline $((T0 + BUDGET - 10)) --reps "${DEVICE_RUN_REPS:-3}" \
		--mkckpt "${DEVICE_RUN_MKCKPT:-}" --python "$PY"
	local rc=$?
	echo "== device-run.sh: exit $rc after $(($(date +%s) - T0)) s; results in $OUT"
	return $rc
}

main 2>&1 | tee "$OUT/device-run.log"
