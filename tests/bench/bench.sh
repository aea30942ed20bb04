#!/bin/bash
# make bench: read-path benchmarks of qvlmoefs, each row against a baseline measured in the same
# run; medians of BENCH_REPS (default 5) repetitions. Row 7 is the ceiling: qvlmoefs against a
# null FUSE filesystem (tests/bench/qvnull.c) in BENCH_PAIRS (default 7) interleaved pairs of
# fresh mounts (BENCH_QV_OPTS: more qvlmoefs options there). Prints a table and writes
# $BENCH_OUT/results.tsv. Uses /dev/fuse; the 4 MiB readahead window needs root. A quick run:
# BENCH_LAYERS=1 BENCH_REPS=1 BENCH_PAIRS=3.
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${BUILD:-build}
REPS=${BENCH_REPS:-5}
ROWS=${BENCH_ROWS:-1 2 3 4 5 6 7 8 9 10} # a subset, e.g. BENCH_ROWS="1 6"
PAIRS=${BENCH_PAIRS:-7}
QVX=${BENCH_QV_OPTS:+,$BENCH_QV_OPTS} # more -o options of qvlmoefs in row 7, e.g. nosplice
LAYERS=${BENCH_LAYERS:-8} # 8: the 2.4 GB checkpoint of doc/performance.md's table; 1: 0.3 GB
OUT=${BENCH_OUT:-$ROOT/$BUILD/bench}
W=${BENCH_DIR:-/tmp/qvlmoefs-bench}
QV=$ROOT/$BUILD/qvlmoefs
MK=$ROOT/$BUILD/qvlmoefs-mkckpt
QB=$ROOT/$BUILD/qvbench
PT=$ROOT/$BUILD/passthrough_ll
QN=$ROOT/$BUILD/qvnull
EP=$ROOT/tests/ep_check.py
mkdir -p "$OUT" "$W"
TSV=$OUT/results.tsv
want() { case " $ROWS " in *" $1 "*) return 0 ;; esac; return 1; }

unmount_all() {
	awk -v t="$W/" 'index($2, t) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
		fusermount3 -u "$m" 2>/dev/null || umount -l "$m"
	done
}
trap unmount_all EXIT
unmount_all

# ---- fixtures: ~0.3 GB a layer (2.4 GB at the default 8) with 64 experts, sparse full-size
# layouts, 100k tensors
SRC=$W/ckpt
[ "$LAYERS" = 8 ] || SRC=$W/ckpt-$LAYERS
if [ ! -f "$SRC/.complete" ]; then
	rm -rf "$SRC"
	"$MK" --hidden 1024 --moe-inter 768 --experts 64 --layers "$LAYERS" --shards 4 "$SRC" >/dev/null
	touch "$SRC/.complete"
fi
for p in 30b-a3b 235b-a22b; do # the layouts of row 6
	want 6 || break
	[ -f "$W/$p/.complete" ] || { rm -rf "$W/$p"; "$MK" --preset $p --sparse "$W/$p" >/dev/null && touch "$W/$p/.complete"; }
done
! want 6 || [ -f "$W/30b-fp8-sparse/.complete" ] || { rm -rf "$W/30b-fp8-sparse"; "$MK" --preset 30b-a3b --sparse \
	--fp8 per-expert "$W/30b-fp8-sparse" >/dev/null && touch "$W/30b-fp8-sparse/.complete"; }
! want 6 || [ -f "$W/235b-dcp64/.complete" ] || { rm -rf "$W/235b-dcp64"; "$MK" --preset 235b-a22b --sparse \
	--sharded-save 64 --save-shard-size 2 --dense-split "$W/235b-dcp64" >/dev/null &&
	touch "$W/235b-dcp64/.complete"; }
! want 6 || [ -f "$W/100k/.complete" ] || { rm -rf "$W/100k"; "$MK" --layers 9080 --hidden 16 --moe-inter 8 \
	--experts 4 --vocab 64 --heads 2 --kv-heads 1 --head-dim 8 --vision-depth 1 \
	--vision-hidden 8 --vision-inter 8 --shards 64 --sparse "$W/100k" >/dev/null && touch "$W/100k/.complete"; }
SHARDS=$(ls "$SRC"/*.safetensors)
BYTES=$(cat $SHARDS | wc -c)

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
secs() { awk '{print $2}'; }

M=$W/mnt
mkdir -p "$M"
# the daemon's lines (there is no syslog on every machine) go to a log beside the fixtures
mount_qv() { "$QV" "$SRC" "$M" -o "$1,log=$W/qvlmoefs.log"; }
stat_field() {
	python3 -c 'import json,os,sys; print(json.loads(os.getxattr(sys.argv[1], "user.qvlmoefs.stats"))[sys.argv[2]])' "$1" "$2"
}
warm_sources() { $QB read 1048576 $SHARDS >/dev/null; }
evict_sources() { $QB evict $SHARDS; }
vshards() { ls "$M"/*.safetensors; }

# time_direct KIND: median seconds reading the sources (KIND warm|cold)
time_direct() {
	for _ in $(seq $REPS); do
		if [ "$1" = cold ]; then evict_sources; else warm_sources; fi
		$QB read 1048576 $SHARDS | secs
	done | median
}

# time_qv OPTS KIND: fresh mount each repetition; KIND cold|warm|mmap|coldsrc
time_qv() {
	for _ in $(seq $REPS); do
		if [ "$2" = coldsrc ]; then evict_sources; else warm_sources; fi
		mount_qv "$1"
		case $2 in
		warm) # steady state: three re-reads after the first read filled the page cache
			$QB read 1048576 $(vshards) >/dev/null
			for _ in 1 2 3; do $QB read 1048576 $(vshards) | secs; done ;;
		mmap) $QB mmap 4 $(vshards) | secs ;;
		*) $QB read 1048576 $(vshards) | secs ;;
		esac
		fusermount3 -u "$M"
	done | median
}

time_ptll() {
	for _ in $(seq $REPS); do
		warm_sources
		"$PT" -o source="$SRC" "$M"
		$QB read 1048576 "$M"/*.safetensors | secs
		fusermount3 -u "$M"
	done | median
}

time_mmap_direct() {
	for _ in $(seq $REPS); do
		warm_sources
		$QB mmap 4 $SHARDS | secs
	done | median
}

# EP load: 8 ranks of ep_size=32 read concurrently from evicted sources; prints the median
# repetition's "seconds source-bytes served-bytes"
ep_load() {
	local s=() t0 t1
	for _ in $(seq $REPS); do
		evict_sources
		mount_qv "ep_size=32,$1"
		t0=$(date +%s.%N)
		for r in 0 1 2 3 4 5 6 7; do
			$QB read 1048576 "$M/ep-rank-$r"/* >/dev/null &
		done
		wait
		t1=$(date +%s.%N)
		echo "$(echo "$t1 - $t0" | bc) $(stat_field "$M" bytes_from_sources) $(stat_field "$M" bytes_served)"
		fusermount3 -u "$M"
	done | sort -g | awk '{v[NR]=$0} END {print v[int((NR+1)/2)]}'
}

ep_full_readers() {
	local t0 t1
	for _ in $(seq $REPS); do
		evict_sources
		t0=$(date +%s.%N)
		for r in 0 1 2 3 4 5 6 7; do $QB read 1048576 $SHARDS >/dev/null & done
		wait
		t1=$(date +%s.%N)
		echo "$t1 - $t0" | bc
	done | median
}

# mount to ready: median ms and peak RSS (KiB) of the daemon for one layout
mount_ready() {
	local src=$1 out ms pid rss
	for _ in $(seq $REPS); do
		out=$($QB ready "$M" model.safetensors.index.json "$QV" -f "$src" "$M")
		ms=${out% *} pid=${out#* }
		rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
		fusermount3 -u "$M"
		wait $pid 2>/dev/null || true
		echo "$ms $rss"
	done | sort -g | awk '{v[NR]=$0} END {print v[int((NR+1)/2)]}'
}

# ---- row 7, the ceiling: the null filesystem shows the view's names and sizes (MANIFEST)
MANIFEST=$W/manifest-$LAYERS
mount_null() { "$QN" "$MANIFEST" "$M" ${1:+-o "$1"}; }
make_manifest() {
	mount_qv io=uring
	find "$M" -path "$M/.qvlmoefs" -prune -o -type f -printf '%s %P\n' >"$MANIFEST"
	fusermount3 -u "$M"
}

# measure KIND FILES: seconds of one pass (KIND read|mmapcopy)
measure() {
	local k=$1
	shift
	case $k in
	read) $QB read 1048576 "$@" | secs ;;
	mmapcopy) $QB mmapcopy "$@" | secs ;;
	esac
}

# pairs KIND QV_OPTS NULL_OPTS: PAIRS lines "qv_seconds null_seconds", each pair on fresh
# mounts with warm sources, the order alternating (odd pairs: null first)
pairs() {
	local i a s q n
	for i in $(seq $PAIRS); do
		for a in $( ((i % 2)) && echo null qv || echo qv null); do
			warm_sources
			if [ $a = qv ]; then mount_qv "$2"; else mount_null "$3"; fi
			s=$(measure "$1" $(vshards))
			fusermount3 -u "$M"
			if [ $a = qv ]; then q=$s; else n=$s; fi
		done
		echo "$q $n"
	done
}

# pair_row LABEL KIND QV_OPTS NULL_OPTS: median, min, max of each side and the median of the
# per-pair ratios (qvlmoefs speed / null speed = null seconds / qvlmoefs seconds)
pair_row() {
	local p qm qlo qhi nm nlo nhi rm
	p=$(pairs "$2" "$3" "$4")
	# every pair as measured (odd pairs: null first), for whoever doubts a median
	echo "$p" | awk -v l="$1" '{printf "7\tpair %d %s\t%s\t\tnull FUSE\t%s\t%.4f\t%s first\n", NR, l, $1, $2, $2 / $1, NR % 2 ? "null" : "qvlmoefs"}' >>"$TSV"
	set -- "$1" $(echo "$p" | awk '{print $1}' | median) $(echo "$p" | awk '{print $1}' | sort -g | sed -n '1p;$p') \
		$(echo "$p" | awk '{print $2}' | median) $(echo "$p" | awk '{print $2}' | sort -g | sed -n '1p;$p') \
		$(echo "$p" | awk '{printf "%.6f\n", $2 / $1}' | median)
	printf '7    %-30s qvlmoefs %6.2f GB/s [%5.2f-%5.2f]  null %6.2f GB/s [%5.2f-%5.2f]  pair ratio %5.3f\n' "$1" \
		"$(gbps "$2")" "$(gbps "$4")" "$(gbps "$3")" "$(gbps "$5")" "$(gbps "$7")" "$(gbps "$6")" "$8"
	printf '7\t%s\t%s\t%s\tnull FUSE\t%s\t%s\tqv_min_max=%s,%s null_min_max=%s,%s pairs=%s\n' "$1" "$2" "$(gbps "$2")" \
		"$5" "$8" "$3" "$4" "$6" "$7" "$PAIRS" >>"$TSV"
}

# ---- row 8, the EP node: ranks 0-7 of ep_size=32 read at once from evicted sources
RANKS8="0 1 2 3 4 5 6 7"
ep_lists() {
	for r in $RANKS8; do
		[ -s "$W/extents-$LAYERS-$r" ] || python3 "$EP" extents "$SRC" 32 $r >"$W/extents-$LAYERS-$r"
	done
}

# eight readers pread()ing exactly their rank's source bytes (experts slices, dense, the rest)
ep_slice_readers() {
	local t0 t1
	for _ in $(seq $REPS); do
		evict_sources
		t0=$(date +%s.%N)
		for r in $RANKS8; do $QB extents "$W/extents-$LAYERS-$r" >/dev/null & done
		wait
		t1=$(date +%s.%N)
		echo "$t1 - $t0" | bc
	done | median
}

# ep_node OPTS: the median repetition's "seconds bytes_served wchar" of a fresh mount (its
# daemon's writes to /dev/fuse, from /proc/PID/io) whose ranks 0-7 are read by 8 readers
ep_node() {
	local t0 t1 out pid served wchar
	for _ in $(seq $REPS); do
		evict_sources
		out=$($QB ready "$M" ep-rank-0 "$QV" -f "$SRC" "$M" -o "ep_size=32,$1")
		pid=${out#* }
		t0=$(date +%s.%N)
		for r in $RANKS8; do $QB read 1048576 "$M/ep-rank-$r"/* >/dev/null & done
		wait
		t1=$(date +%s.%N)
		served=$(stat_field "$M" bytes_served)
		wchar=$(awk '/^wchar/ {print $2}' /proc/$pid/io)
		fusermount3 -u "$M"
		echo "$(echo "$t1 - $t0" | bc) $served $wchar"
	done | sort -g | awk '{v[NR]=$0} END {print v[int((NR+1)/2)]}'
}

gbps() { echo "scale=3; $BYTES / $1 / 1000000000" | bc; }
ratio() { echo "scale=3; $2 / $1" | bc; } # ratio A B = speed of A relative to B = tB / tA

printf 'row\tcase\tseconds\tGB/s\tbaseline\tbaseline_seconds\tratio\n' >"$TSV"
row() { # row ID CASE SECONDS BASELINE_NAME BASELINE_SECONDS [BYTES]
	local r g
	r=$(ratio "$3" "$5")
	g=$(echo "scale=3; ${6:-$BYTES} / $3 / 1000000000" | bc)
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$g" "$4" "$5" "$r" >>"$TSV"
	printf '%-4s %-44s %8.3f s %7.2f GB/s   vs %-22s %8.3f s  ratio %6.3f\n' \
		"$1" "$2" "$3" "$g" "$4" "$5" "$r"
}

echo "qvlmoefs bench: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $REPS reps (medians), checkpoint $(echo "scale=2; $BYTES/1000000000" | bc) GB"
if want 1 || want 2; then
	direct_warm=$(time_direct warm)
fi
want 4 && direct_cold=$(time_direct cold)
want 1 && ptll=$(time_ptll)
for io in uring pread; do
	if want 1; then
		cold=$(time_qv "io=$io" cold)
		row 1 "cold read, io=$io" "$cold" "direct source read" "$direct_warm"
		row 1 "cold read, io=$io" "$cold" "passthrough_ll" "$ptll"
		if [ $io = uring ]; then
			dio=$(time_qv "io=$io,direct_io" cold)
			row 1 "cold read, io=$io, -o direct_io" "$dio" "direct source read" "$direct_warm"
		fi
	fi
	[ $io = uring ] && want 2 && row 2 "warm re-read, io=$io" "$(time_qv "io=$io" warm)" "direct source read" "$direct_warm"
	[ $io = uring ] && want 3 && row 3 "mmap MAP_PRIVATE 4 threads" "$(time_qv "io=$io" mmap)" "mmap of sources" "$(time_mmap_direct)"
	want 4 && row 4 "cold source read, io=$io" "$(time_qv "io=$io" coldsrc)" "cold direct read" "$direct_cold"
done
want 5 && full=$(ep_full_readers)
want 5 && minimal=$(python3 "$EP" minbytes "$SRC" 32 0,1,2,3,4,5,6,7)
for io in uring pread; do
	want 5 || break
	set -- $(ep_load "io=$io")
	# GB/s here: the bytes the 8 ranks' views hold
	row 5 "EP load ranks 0-7 of 32, io=$io" "$1" "8 full-file readers" "$full" "$3"
	printf '5    source bytes read %s, minimal %s: %s x\n' "$2" "$minimal" "$(echo "scale=4; $2 / $minimal" | bc)"
	printf '5\tsource bytes io=%s\t%s\t\tminimal bytes\t%s\t%s\n' "$io" "$2" "$minimal" "$(echo "scale=4; $2 / $minimal" | bc)" >>"$TSV"
done
for l in 30b-a3b 30b-fp8-sparse 235b-a22b 235b-dcp64 100k; do
	want 6 || break
	n=$(python3 -c 'import json,os,sys
d = sys.argv[1]
p = f"{d}/model.safetensors.index.json"
print(len(json.load(open(p))["weight_map"]) if os.path.exists(p) else
      len(json.load(open(f"{d}/.hf_metadata/fqn_to_file_index_mapping.json"))))' "$W/$l")
	set -- $(mount_ready "$W/$l")
	printf '6    mount to ready %-10s %7d tensors %9.1f ms %6.2f ms/1k tensors  peak RSS %6.1f MiB\n' \
		"$l" "$n" "$1" "$(echo "scale=3; $1 * 1000 / $n" | bc)" "$(echo "scale=1; $2 / 1024" | bc)"
	printf '6\tmount to ready %s\t%s\t\ttensors\t%s\tRSS_KiB=%s\n' "$l" "$1" "$n" "$2" >>"$TSV"
done
if want 6; then
	# RSS must not grow with bytes read: the daemon's RSS after the listing, and after reading
	# the whole 2.4 GB checkpoint three times
	set -- $($QB ready "$M" model.safetensors.index.json "$QV" -f "$SRC" "$M")
	pid=$2
	rss0=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
	for _ in 1 2 3; do $QB read 1048576 "$M"/*.safetensors >/dev/null; $QB evict "$M"/*.safetensors; done
	rss1=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
	fusermount3 -u "$M"
	printf '6    daemon RSS %.1f MiB after mount, %.1f MiB after reading %s GB three times\n' \
		"$(echo "scale=1; $rss0 / 1024" | bc)" "$(echo "scale=1; $rss1 / 1024" | bc)" \
		"$(echo "scale=2; $BYTES / 1000000000" | bc)"
	printf '6\tdaemon RSS KiB after mount / after reads\t%s\t\t\t%s\t\n' "$rss0" "$rss1" >>"$TSV"
fi
if want 7; then
	make_manifest
	echo "7    ceiling: $PAIRS interleaved pairs of fresh mounts (qvlmoefs, null FUSE), warm sources; medians [min-max]"
	pair_row "read() 1 MiB, page cache" read io=uring$QVX ""
	pair_row "read() 1 MiB, -o direct_io" read io=uring,direct_io$QVX direct_io
	pair_row "mmap MAP_PRIVATE copy, 1 thr" mmapcopy io=uring$QVX ""
fi
if want 8; then
	ep_lists
	node=$(python3 "$EP" nodebytes "$SRC" 32 0,1,2,3,4,5,6,7)
	slices=$(ep_slice_readers)
	[ -n "${full:-}" ] || full=$(ep_full_readers)
	echo "8    EP node: ranks 0-7 of ep_size=32 at once, evicted sources; node bytes (their experts + the rest once) $node"
	for o in io=uring io=uring,ep_shared; do
		set -- $(ep_node "$o")
		printf '8    %-22s %7.3f s  vs 8 slice readers %7.3f s ratio %5.3f  vs 8 full readers %7.3f s ratio %5.3f  carried %s (wchar %s) = %5.3f x node bytes\n' \
			"$o" "$1" "$slices" "$(ratio "$1" "$slices")" "$full" "$(ratio "$1" "$full")" "$2" "$3" \
			"$(echo "scale=4; $2 / $node" | bc)"
		printf '8\tEP node %s\t%s\t\t8 slice readers\t%s\t%s\tfull=%s served=%s wchar=%s node_bytes=%s\n' "$o" "$1" "$slices" \
			"$(ratio "$1" "$slices")" "$full" "$2" "$3" "$node" >>"$TSV"
	done
fi
if want 9; then
	# the FP8 kernel alone (not yet behind a view: issue 23), one thread, against memcpy of the
	# same output bytes; the limit is the core, not memory
	"$ROOT/$BUILD/xfbench" "$REPS" | while IFS=$'\t' read -r name s gbs r; do
		case $name in vector*) echo "9    $name" && continue ;; esac
		printf '9    %-34s %8.4f s %6.2f GB/s of BF16   vs memcpy of the output  ratio %5.3f\n' \
			"$name" "$s" "$gbs" "$r"
		printf '9\t%s\t%s\t%s\tmemcpy of the output\t\t%s\n' "$name" "$s" "$gbs" "$r" >>"$TSV"
	done
fi
if want 10; then
	# computed views (issue 23), on Qwen3-VL-30B-A3B's dims (H 2048, I 768, 128 experts; 2
	# layers): rank 0 of ep_size=8 (16 experts a layer) with -o ep_shared, whose -experts files
	# hold the rank's expert tensors alone. The FP8 release's (per-expert F8_E4M3 weights with
	# 128x128 scales: dequantized, transposed, stacked) against the BF16 Hub checkpoint's
	# (renamed and sliced: spliced, and copied with nosplice), fresh mounts, warm sources, in
	# interleaved rounds; then the bytes the FP8 view read against the rank's FP8 minimum (its
	# experts' weights and scales).
	for f in bf16 fp8; do
		[ -f "$W/30b-$f/.complete" ] && continue
		rm -rf "$W/30b-$f"
		"$MK" --preset 30b-a3b --layers 2 $([ $f = fp8 ] && echo --fp8 per-expert) "$W/30b-$f" >/dev/null
		touch "$W/30b-$f/.complete"
	done
	xfiles() { ls "$M"/ep-rank-0/*-experts.safetensors; }
	# rounds of four fresh mounts, the order rotating: the FP8 view, the rename view (spliced),
	# the rename view with -o nosplice (copied, as computed bytes always are), and the FP8 view
	# whose blocks are read but not computed (QVLMOEFS_TEST_FAULTS=skip_compute, wrong bytes:
	# the ceiling of the computed path with a kernel that costs nothing)
	xrounds() {
		local i a s f n c k
		for i in $(seq $PAIRS); do
			for a in $(echo fp8 bf16 bf16c fp8x fp8 bf16 bf16c | cut -d' ' -f$((i % 4 + 1))-$((i % 4 + 4))); do
				$QB read 1048576 "$W/30b-${a%[cx]}"/*.safetensors >/dev/null
				env $([ $a = fp8x ] && echo QVLMOEFS_TEST_FAULTS=skip_compute) "$QV" "$W/30b-${a%[cx]}" "$M" \
					-o "ep_size=8,ep_shared,log=$W/qvlmoefs.log$([ $a = bf16c ] && echo ,nosplice)"
				s=$($QB read 1048576 $(xfiles) | secs)
				[ $a = fp8 ] && stat_field "$M" bytes_from_sources >"$W/fp8-src-bytes"
				fusermount3 -u "$M"
				case $a in fp8) f=$s ;; bf16) n=$s ;; bf16c) c=$s ;; fp8x) k=$s ;; esac
			done
			echo "$f $n $c $k"
		done
	}
	"$QV" "$W/30b-bf16" "$M" -o "ep_size=8,ep_shared"
	xbytes=$(cat $(xfiles) | wc -c)
	fusermount3 -u "$M"
	p=$(xrounds)
	echo "$p" | awk '{printf "10\tround %d\t%s\t\trename view, nosplice\t%s\t%.4f\t%.4f vs spliced %s\n", NR, $1, $3, $3 / $1, $2 / $1, $2}' >>"$TSV"
	set -- $(echo "$p" | awk '{print $1}' | median) $(echo "$p" | awk '{print $2}' | median) \
		$(echo "$p" | awk '{printf "%.6f\n", $2 / $1}' | median) \
		$(echo "$p" | awk '{print $3}' | median) $(echo "$p" | awk '{printf "%.6f\n", $3 / $1}' | median) \
		$(echo "$p" | awk '{print $4}' | median) $(echo "$p" | awk '{printf "%.6f\n", $2 / $4}' | median)
	minfp8=$(python3 - "$W/30b-fp8" <<'PY'
import json, struct, sys, glob
need = 0
for f in glob.glob(sys.argv[1] + "/*.safetensors"):
    with open(f, "rb") as fh:
        h = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
    for k, v in h.items():
        head, sep, tail = k.partition(".mlp.experts.")
        if sep and tail[0].isdigit() and int(tail.split(".")[0]) < 16:  # rank 0 of 8: 0-15
            need += v["data_offsets"][1] - v["data_offsets"][0]
print(need)
PY
)
	got=$(cat "$W/fp8-src-bytes")
	printf '10   FP8 rank view, 30B-A3B dims: %s GB of experts  fp8 %.3f s (%.2f GB/s)  rename %.3f s (%.2f GB/s)  ratio %5.3f\n' \
		"$(echo "scale=3; $xbytes / 1000000000" | bc)" "$1" "$(echo "scale=3; $xbytes / $1 / 1000000000" | bc)" \
		"$2" "$(echo "scale=3; $xbytes / $2 / 1000000000" | bc)" "$3"
	printf '10   the same against the rename view with -o nosplice (copied like computed bytes) %.3f s (%.2f GB/s)  ratio %5.3f\n' \
		"$4" "$(echo "scale=3; $xbytes / $4 / 1000000000" | bc)" "$5"
	printf '10   the FP8 view with its kernel skipped (the computed path'"'"'s ceiling) %.3f s (%.2f GB/s)  ratio to rename %5.3f\n' \
		"$6" "$(echo "scale=3; $xbytes / $6 / 1000000000" | bc)" "$7"
	printf '10   FP8 source bytes read %s, FP8 minimum %s: %s x\n' "$got" "$minfp8" "$(echo "scale=4; $got / $minfp8" | bc)"
	printf '10\tFP8 rank view (30B-A3B dims)\t%s\t\trename view\t%s\t%s\trounds=%s bytes=%s\n' "$1" "$2" "$3" "$PAIRS" "$xbytes" >>"$TSV"
	printf '10\tFP8 rank view (30B-A3B dims)\t%s\t\trename view, nosplice\t%s\t%s\trounds=%s\n' "$1" "$4" "$5" "$PAIRS" >>"$TSV"
	printf '10\tFP8 view, kernel skipped (skip_compute)\t%s\t\trename view\t%s\t%s\trounds=%s\n' "$6" "$2" "$7" "$PAIRS" >>"$TSV"
	printf '10\tFP8 source bytes\t%s\t\tFP8 minimum\t%s\t%s\n' "$got" "$minfp8" "$(echo "scale=4; $got / $minfp8" | bc)" >>"$TSV"
fi
echo "results: $TSV"
