#!/bin/bash
# make check-valgrind: the unit tests, and a daemon serving forward, reverse and rank views and
# computed ones (an FP8 release dequantized and stacked, a transformers-5 layout transposed),
# under valgrind memcheck; any error or definite leak fails. One closing summary line.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
VG="valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite"
T=$(mktemp -d /tmp/qvlmoefs-vg.XXXXXX)
trap 'fusermount3 -u "$T/m" 2>/dev/null; rm -rf "$T"' EXIT
pass=0 fail=0

result() { # result NAME RC
	if [ "$2" -eq 0 ]; then echo "ok - $1"; pass=$((pass + 1)); else echo "FAIL - $1"; fail=$((fail + 1)); fi
}

$VG "$BUILD/unit" >"$T/unit.log" 2>&1
result "unit tests under valgrind" $?
"$BUILD/qvlmoefs-mkckpt" --experts 10 "$T/hf" >/dev/null
"$BUILD/qvlmoefs-mkckpt" --experts 10 --naming native --extra-state "$T/nat" >/dev/null
"$BUILD/qvlmoefs-mkckpt" --fp8 per-expert --hidden 160 --moe-inter 136 "$T/fp8" >/dev/null
"$BUILD/qvlmoefs-mkckpt" --linear-experts "$T/tf5" >/dev/null
mkdir -p "$T/m"
daemon() { # daemon NAME SRC CHECK-ARGS... -- MOUNT-OPTIONS
	local name=$1 src=$2 rc
	shift 2
	local args=() opts=""
	while [ "$1" != "--" ]; do args+=("$1"); shift; done
	opts=$2
	$VG "$BUILD/qvlmoefs" -f "$src" "$T/m" -o "$opts" >"$T/$name.log" 2>&1 &
	local pid=$!
	for _ in $(seq 1 200); do mountpoint -q "$T/m" && break; sleep 0.05; done
	if [ "${args[1]:-}" = --read-all ]; then # computed views: every byte read (no checker)
		find "$T/m${args[0]}" -type f -exec cat {} + >/dev/null 2>>"$T/$name.log"
	else
		python3 tests/check_view.py "$src" "$T/m${args[0]}" "${args[@]:1}" >>"$T/$name.log" 2>&1
	fi
	rc=$?
	fusermount3 -u "$T/m"
	wait $pid || rc=1
	[ $rc -eq 0 ] || sed 's/^/    /' "$T/$name.log" | tail -n 40
	result "daemon under valgrind: $name" $rc
}
daemon forward "$T/hf" "" -- view=native
daemon reverse-pread "$T/nat" "" -- io=pread
daemon rank "$T/hf" /ep-rank-1 --ep-size 4 --ep-rank 1 -- ep_size=4,ep_shard_size=1
daemon fp8-ranks "$T/fp8" "" --read-all -- ep_size=2,ep_shared
daemon tf5-layout "$T/tf5" "" --read-all -- view=native
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
