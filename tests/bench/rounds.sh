#!/bin/bash
# rounds.sh ROUNDS KIND VARIANT...: row 7's method (tests/bench/bench.sh) with more than two
# mounts a round, for head-to-head comparisons of qvlmoefs options against the null FUSE
# filesystem. Each round mounts every VARIANT once, fresh, on warm sources, the order rotating
# by round; KIND is read (read() 1 MiB) or mmapcopy. A VARIANT is null:OPTS (tests/bench/
# qvnull.c) or qv:OPTS, OPTS the -o options (may be empty). Prints each round's seconds, then per
# variant the median, min and max GB/s and the median of its per-round ratio to the first
# variant (speed over its speed: make that the null one). Needs `make bench`'s build (qvbench,
# qvnull) and its checkpoint: BENCH_DIR (default /tmp/qvlmoefs-bench)/ckpt.
# Example: tests/bench/rounds.sh 11 read null: qv:io=uring,nosplice qv:io=uring
set -eu
cd "$(dirname "$0")/../.."
B=$PWD/${BUILD:-build}
W=${BENCH_DIR:-/tmp/qvlmoefs-bench}
S=$W/ckpt
M=$W/mnt-rounds
ROUNDS=$1
KIND=$2
shift 2
V=("$@")
n=${#V[@]}
[ -f "$S/.complete" ] || { echo "rounds.sh: no checkpoint in $S (run make bench first)" >&2; exit 1; }
mkdir -p "$M"
SHARDS=$(ls "$S"/*.safetensors)
BYTES=$(cat $SHARDS | wc -c)
MAN=$(mktemp)
OUT=$(mktemp)
trap 'fusermount3 -u "$M" 2>/dev/null; rm -f "$MAN" "$OUT"' EXIT

# the null filesystem shows the names and sizes of the view as qvlmoefs builds it now
"$B/qvlmoefs" "$S" "$M" -o io=uring
find "$M" -path "$M/.qvlmoefs" -prune -o -type f -printf '%s %P\n' >"$MAN"
fusermount3 -u "$M"

# one VARIANT: seconds of one pass through a fresh mount, warm sources
one() {
	local kind=${1%%:*} o=${1#*:}
	"$B/qvbench" read 1048576 $SHARDS >/dev/null
	if [ "$kind" = null ]; then "$B/qvnull" "$MAN" "$M" ${o:+-o "$o"}; else "$B/qvlmoefs" "$S" "$M" ${o:+-o "$o"}; fi
	case $KIND in
	read) "$B/qvbench" read 1048576 "$M"/*.safetensors ;;
	mmapcopy) "$B/qvbench" mmapcopy "$M"/*.safetensors ;;
	esac | awk '{print $2}'
	fusermount3 -u "$M"
}

for r in $(seq "$ROUNDS"); do
	line=()
	for j in $(seq 0 $((n - 1))); do
		k=$(((j + r) % n))
		line[k]=$(one "${V[$k]}")
	done
	echo "${line[*]}"
done | tee "$OUT"
for j in $(seq 0 $((n - 1))); do
	awk -v j=$((j + 1)) -v b="$BYTES" -v name="${V[$j]}" '{s[NR] = $j; r[NR] = $1 / $j} END {
		for (i = 1; i <= NR; i++) for (k = i + 1; k <= NR; k++) {
			if (s[k] < s[i]) { t = s[i]; s[i] = s[k]; s[k] = t }
			if (r[k] < r[i]) { t = r[i]; r[i] = r[k]; r[k] = t }
		}
		m = NR % 2 ? s[(NR + 1) / 2] : (s[NR / 2] + s[NR / 2 + 1]) / 2
		mr = NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
		printf "%-44s median %5.2f GB/s [%5.2f-%5.2f]  median ratio to the first %5.3f\n", name, b / m / 1e9, b / s[NR] / 1e9, b / s[1] / 1e9, mr
	}' "$OUT"
done
