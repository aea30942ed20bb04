#!/bin/bash
# make check-loaders: PyTorch's file mapping, numpy.memmap, MAP_SHARED and read() on forward,
# reverse, rank and consolidated views, every tensor compared with its source (numpy-cut).
# One closing line "N passed, N failed".
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${BUILD:-build}
QV=$ROOT/$BUILD/qvlmoefs
MK=$ROOT/$BUILD/qvlmoefs-mkckpt
PY=/usr/bin/python3 # Debian's python3-torch and python3-numpy live here
CL="$PY $ROOT/tests/loaders/check_loaders.py"
T=$(mktemp -d /tmp/qvlmoefs-loaders.XXXXXX)
M=$T/m
pass=0 fail=0
trap 'mountpoint -q "$M" && fusermount3 -u "$M"; rm -rf "$T"' EXIT
mkdir -p "$M"

# case NAME SOURCE MOUNT-OPTIONS SUBFOLDER CHECK-ARGS... (EXPECT= the checkpoint to compare
# with, when it is not SOURCE: a sharded save is compared with the checkpoint it was cut from)
case_() {
	local name=$1 src=$2 opts=$3 sub=$4 rc=0
	shift 4
	"$QV" "$src" "$M" ${opts:+-o "$opts"} 2>>"$T/log" || rc=1
	[ $rc -eq 0 ] && { $CL "${EXPECT:-$src}" "$M$sub" "$@" || rc=1; }
	mountpoint -q "$M" && fusermount3 -u "$M"
	if [ $rc -eq 0 ]; then echo "ok - $name"; pass=$((pass + 1)); else echo "FAIL - $name"; fail=$((fail + 1)); fi
}

"$MK" --experts 10 "$T/hf" >/dev/null
"$MK" --experts 10 --naming native --extra-state --shards 3 "$T/native" >/dev/null
"$MK" --experts 16 "$T/h16" >/dev/null
"$MK" --experts 16 --sharded-save 8 --save-shard-size 2 --dense-split "$T/save" >/dev/null

case_ "forward native view" "$T/hf" "" ""
case_ "reverse HF view" "$T/native" "" "" --view hf
case_ "identity view" "$T/hf" "view=hf" "" --view hf
for r in 0 3; do
	case_ "rank $r of 4 (folders)" "$T/hf" "ep_size=4" "/ep-rank-$r" --ep-size 4 --ep-rank $r
done
case_ "rank 1 of 4, shard 1 of 2" "$T/native" "ep_size=4,ep_rank=1,ep_shard_size=2,ep_shard_rank=1,view=hf" "" \
	--view hf --ep-size 4 --ep-rank 1 --ep-shard-size 2 --ep-shard-rank 1
EXPECT=$T/h16 case_ "consolidated sharded save" "$T/save" "" "" --view hf
EXPECT=$T/h16 case_ "sharded save as rank 2 of 3" "$T/save" "ep_size=3,ep_rank=2,view=native" "" \
	--view native --ep-size 3 --ep-rank 2
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
