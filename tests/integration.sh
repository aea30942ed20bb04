#!/bin/bash
# Integration tests: really mount views of generated checkpoints and check every byte with an
# independent checker (tests/check_view.py). Needs /dev/fuse and fusermount3; prints one
# closing line "N passed, N failed[, N skipped]".
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build}
QV=$ROOT/$BUILD/qvlmoefs
MK=$ROOT/$BUILD/qvlmoefs-mkckpt
CHECK="python3 $ROOT/tests/check_view.py"
T=$(mktemp -d /tmp/qvlmoefs-it.XXXXXX)
pass=0 fail=0 skip=0
# a daemonized process has no stderr: sanitizer reports go to files that the suite checks
export ASAN_OPTIONS="log_path=$T/san:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="log_path=$T/san:print_stacktrace=1:${UBSAN_OPTIONS:-}"
export TSAN_OPTIONS="log_path=$T/san:${TSAN_OPTIONS:-}"

unmount_all() { # every mount below $T, deepest first; tests run in subshells, so look it up
	awk -v t="$T/" 'index($2, t) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
		fusermount3 -u "$m" 2>/dev/null || umount -l "$m"
	done
}

cleanup() {
	unmount_all
	rm -rf "$T"
}
trap cleanup EXIT

# mnt SRC MNT [options...]: mount a view (daemonized), remembered for cleanup
mnt() {
	local src=$1 m=$2
	shift 2
	mkdir -p "$m"
	timeout 60 "$QV" "$src" "$m" "$@" || return 1
	mountpoint -q "$m"
}

umnt() {
	timeout 30 fusermount3 -u "$1"
}

run_test() { # run_test NAME: runs function t_NAME, output to a log shown on failure
	local name=$1 log=$T/$1.log rc
	(set -e; "t_$name") >"$log" 2>&1
	rc=$?
	[ -n "${VERBOSE:-}" ] && sed 's/^/    /' "$log"
	if [ $rc -eq 0 ]; then
		echo "ok - $name"
		pass=$((pass + 1))
	elif [ $rc -eq 77 ]; then
		echo "skip - $name: $(tail -n 1 "$log")"
		skip=$((skip + 1))
	else
		echo "FAIL - $name"
		sed 's/^/    /' "$log" | tail -n 30
		fail=$((fail + 1))
	fi
	unmount_all
}

expect_fail() { # expect_fail CMD...: the command must fail
	if "$@"; then
		echo "expected failure: $*"
		return 1
	fi
	return 0
}

# ---- fixtures ------------------------------------------------------------------------
"$MK" "$T/hf" >/dev/null
"$MK" --naming native --extra-state "$T/native" >/dev/null
"$MK" --unpadded --shuffle-keys --no-metadata --data-order reverse --scale-inv --shards 3 \
	"$T/odd" >/dev/null
"$MK" --no-prefix --data-order name --shards 1 "$T/noprefix" >/dev/null
"$MK" --experts 10 "$T/e10" >/dev/null
"$MK" --experts 10 --naming native --shards 3 "$T/e10n" >/dev/null
EP=$ROOT/tests/ep_check.py

# ---- tests ---------------------------------------------------------------------------
t_forward_native_view() {
	mnt "$T/hf" "$T/m"
	$CHECK "$T/hf" "$T/m" --view native
	grep -q gate_and_up_projs "$T/m/model.safetensors.index.json"
	! grep -q '"[^"]*experts.gate_up_proj"' "$T/m/model.safetensors.index.json"
}

t_reverse_hf_view() {
	mnt "$T/native" "$T/m"
	$CHECK "$T/native" "$T/m" --view hf
	! grep -q _extra_state "$T/m/model.safetensors.index.json"
}

t_reverse_custom_exclude() {
	mnt "$T/native" "$T/m" -o 'exclude=model\.visual\..*'
	$CHECK "$T/native" "$T/m" --view hf --exclude 'model\.visual\..*'
	grep -q _extra_state "$T/m/model.safetensors.index.json"
	# the pattern sees the converted (HF) name, as in Automodel's to_hf
	mnt "$T/native" "$T/m2" -o 'exclude=.*\.gate_up_proj$'
	$CHECK "$T/native" "$T/m2" --view hf --exclude '.*\.gate_up_proj$'
	! grep -q 'experts.gate_up_proj"' "$T/m2/model.safetensors.index.json"
	grep -q 'experts.down_proj"' "$T/m2/model.safetensors.index.json"
}

t_identity_views() {
	mnt "$T/hf" "$T/m1" -o view=hf
	$CHECK "$T/hf" "$T/m1" --view hf
	mnt "$T/native" "$T/m2" -o view=native
	$CHECK "$T/native" "$T/m2" --view native
}

t_unusual_sources() {
	mnt "$T/odd" "$T/m1"
	$CHECK "$T/odd" "$T/m1"
	! grep -q _scale_inv "$T/m1/model.safetensors.index.json"
	mnt "$T/noprefix" "$T/m2"
	$CHECK "$T/noprefix" "$T/m2"
}

t_hf_cache_snapshot() {
	local repo=$T/cache/models--Qwen--tiny rev=0123abcd
	mkdir -p "$repo/blobs" "$repo/snapshots/$rev"
	for f in "$T/hf"/*; do
		local h
		h=$(sha256sum "$f" | cut -c1-40)
		cp "$f" "$repo/blobs/$h"
		ln -s "../../blobs/$h" "$repo/snapshots/$rev/$(basename "$f")"
	done
	mnt "$repo/snapshots/$rev" "$T/m"
	$CHECK "$repo/snapshots/$rev" "$T/m"
	[ ! -L "$T/m/config.json" ] && [ -f "$T/m/config.json" ]
}

t_nested_and_links() {
	local s=$T/nested
	cp -r "$T/hf" "$s"
	mkdir -p "$s/sub/deeper" "$s/more"
	echo "hello" >"$s/sub/deeper/notes.txt"
	cp "$T/hf/model-00001-of-00002.safetensors" "$s/more/extra.safetensors"
	ln -s ../config.json "$s/sub/config-link.json"
	ln -s /etc/passwd "$s/escape"
	ln -s ../../../../../../etc "$s/sub/escape-dir"
	ln -s nowhere "$s/dangling"
	mkfifo "$s/fifo"
	[ "$(id -u)" -ne 0 ] || mknod "$s/chardev" c 1 3
	python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$s/sock"
	mnt "$s" "$T/m"
	$CHECK "$s" "$T/m"
	[ ! -e "$T/m/escape" ] && [ ! -e "$T/m/fifo" ] && [ ! -e "$T/m/dangling" ]
	[ ! -e "$T/m/chardev" ] && [ ! -e "$T/m/sock" ]
	[ ! -e "$T/m/sub/escape-dir" ]
	cmp "$s/sub/deeper/notes.txt" "$T/m/sub/deeper/notes.txt"
	cmp "$s/config.json" "$T/m/sub/config-link.json"
}

t_erofs() {
	mnt "$T/hf" "$T/m"
	local f=$T/m/config.json out
	for cmd in "touch $T/m/new" "sh -c 'echo x >> $f'" "mkdir $T/m/d" "rm -f $f" \
		"mv $f $T/m/x" "chmod 777 $f" "truncate -s 0 $f" "ln -s x $T/m/l" \
		"ln $f $T/m/hard" "chown 1:1 $f" "touch -d 2001-01-01 $f" "rmdir $T/m/nodir" \
		"python3 -c 'import os; os.setxattr(\"$f\", \"user.x\", b\"1\")'"; do
		if out=$(eval "$cmd" 2>&1); then
			echo "mutation succeeded: $cmd"
			return 1
		fi
		case $out in *"Read-only file system"*|*"Errno 30"*) ;; *)
			echo "unexpected error for $cmd: $out"; return 1 ;;
		esac
	done
	[ "$(stat -c %a "$f")" = 444 ] && [ "$(stat -c %a "$T/m")" = 555 ]
	cmp "$T/hf/config.json" "$f"
}

t_mmap_equals_read() {
	mnt "$T/hf" "$T/m"
	python3 - "$T/m" <<'PY'
import mmap, os, sys
d = sys.argv[1]
for name in sorted(os.listdir(d)):
    p = os.path.join(d, name)
    if os.path.isdir(p):
        continue
    data = open(p, 'rb').read()
    assert len(data) == os.path.getsize(p), name
    for flags in (mmap.MAP_PRIVATE, mmap.MAP_SHARED):
        with open(p, 'rb') as f:
            mm = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
            assert mm[:] == data, (name, flags)
            mm.close()
print("mmap ok")
PY
}

t_concurrent_readers() {
	mnt "$T/hf" "$T/m"
	local ref=$T/ref
	mkdir -p "$ref"
	cp "$T/m"/* "$ref/"
	for i in $(seq 1 8); do
		(for f in "$T/m"/*; do cat "$f"; done | md5sum >"$T/sum.$i") &
	done
	wait
	local want
	want=$(for f in "$ref"/*; do cat "$f"; done | md5sum)
	for i in $(seq 1 8); do [ "$(cat "$T/sum.$i")" = "$want" ]; done
}

t_uring_and_pread_identical() {
	mnt "$T/odd" "$T/m1" -o io=uring
	mnt "$T/odd" "$T/m2" -o io=pread
	diff -r -x .qvlmoefs "$T/m1" "$T/m2"
	$CHECK "$T/odd" "$T/m2"
}

t_clean_unmount_exit_code() {
	mkdir -p "$T/m"
	"$QV" -f "$T/hf" "$T/m" &
	local pid=$!
	for _ in $(seq 1 100); do mountpoint -q "$T/m" && break; sleep 0.05; done
	mountpoint -q "$T/m"
	cat "$T/m/config.json" >/dev/null
	umnt "$T/m"
	wait $pid
	"$QV" -f "$T/hf" "$T/m" &
	pid=$!
	for _ in $(seq 1 100); do mountpoint -q "$T/m" && break; sleep 0.05; done
	umount "$T/m"
	wait $pid
}

t_mount_t_fuse() {
	[ "$(id -u)" -eq 0 ] || { echo "mount -t needs root"; return 77; }
	local had=0
	[ -e /sbin/mount.fuse.qvlmoefs ] && had=1
	make -s -C "$ROOT" install BUILD="$BUILD" PREFIX=/usr/local >/dev/null
	mkdir -p "$T/m"
	local rc=0
	mount -t fuse.qvlmoefs "$T/hf" "$T/m" -o ro,view=native,nofail || rc=1
	[ $rc -eq 0 ] && $CHECK "$T/hf" "$T/m" --view native || rc=1
	grep -q "fuse.qvlmoefs" /proc/mounts || rc=1
	umount "$T/m" || rc=1
	[ $had -eq 1 ] || make -s -C "$ROOT" uninstall PREFIX=/usr/local >/dev/null
	return $rc
}

# bad SRC: mounting must fail before mounting, with one line that names the file
bad_source() {
	local name=$1 want=$2 out
	mkdir -p "$T/m"
	if out=$("$QV" "$T/bad/$name" "$T/m" 2>&1); then
		echo "mount of $name succeeded"
		return 1
	fi
	mountpoint -q "$T/m" && { echo "mounted anyway"; return 1; }
	[ "$(echo "$out" | wc -l)" -eq 1 ] || { echo "not one line: $out"; return 1; }
	case $out in *model-00001-of-00001.safetensors*"$want"*) echo "ok: $out" ;; *)
		echo "message for $name lacks file or '$want': $out"; return 1 ;;
	esac
}

t_malformed_sources_rejected() {
	python3 - "$T/bad" <<'PY'
import json, os, struct, sys
root = sys.argv[1]
def write(name, header, data=b"", raw=None, hlen=None):
    d = os.path.join(root, name); os.makedirs(d, exist_ok=True)
    h = raw if raw is not None else json.dumps(header).encode()
    with open(os.path.join(d, "model-00001-of-00001.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", hlen if hlen is not None else len(h)) + h + data)
t = lambda b, e, s=None: {"dtype": "BF16", "shape": s or [(e - b) // 2], "data_offsets": [b, e]}
write("badjson", None, raw=b'{"a": {"dtype": "BF16", ')
write("dupkey", None, raw=b'{"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]},"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}', data=b"xx")
write("dtype", {"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 2]}}, b"xx")
write("overlap", {"a": t(0, 4), "b": t(2, 6)}, b"x" * 6)
write("pastend", {"a": t(0, 8)}, b"x" * 4)
write("hdrlen", None, raw=b'{}', hlen=1000)
write("hole", {"a": t(0, 2), "b": t(4, 6)}, b"x" * 6)
write("shape", {"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 2]}}, b"xx")
PY
	bad_source badjson "not valid JSON"
	bad_source dupkey "duplicate header key"
	bad_source dtype "unknown dtype"
	bad_source overlap "overlaps"
	bad_source pastend "past end"
	bad_source hdrlen "past end of file"
	bad_source hole "hole"
	bad_source shape "shape x dtype"
}

t_bad_options_rejected() {
	mkdir -p "$T/m"
	expect_fail "$QV" "$T/hf" "$T/m" -o view=bogus
	expect_fail "$QV" "$T/hf" "$T/m" -o io=aio
	expect_fail "$QV" "$T/hf" "$T/m" -o gpu=0
	expect_fail "$QV" "$T/hf" "$T/m" -o ep_rank=1
	expect_fail "$QV" "$T/nonexistent" "$T/m"
	expect_fail "$QV" "$T/hf" "$T/m" -o exclude='(?=x)'
	! mountpoint -q "$T/m"
}

t_help_and_version() {
	"$QV" --help | grep -q "view=native|hf"
	"$QV" --help | grep -q "allow_other"
	"$QV" -V | grep -q "qvlmoefs version"
}

t_statfs_and_listing() {
	mnt "$T/hf" "$T/m"
	df "$T/m" >/dev/null
	[ "$(ls "$T/m" | wc -l)" -eq "$(ls "$T/hf" | wc -l)" ]
	local i1 i2
	i1=$(stat -c %i "$T/m/config.json")
	umnt "$T/m"
	mnt "$T/hf" "$T/m"
	i2=$(stat -c %i "$T/m/config.json")
	[ "$i1" = "$i2" ] # stable inode numbers across mounts
}

# stat_field MNT NAME: one counter of the daemon (user.qvlmoefs.stats on the root)
stat_field() {
	python3 -c 'import json,os,sys; print(json.loads(os.getxattr(sys.argv[1], "user.qvlmoefs.stats"))[sys.argv[2]])' "$1" "$2"
}

read_all() { # read every file below a folder with plain reads (not the inspection folder)
	find "$1" -name .qvlmoefs -prune -o -type f -print0 | xargs -0 cat >/dev/null
}

t_ep_every_rank() {
	local src w r
	for src in hf native e10 e10n; do
		for w in 1 2 4 8; do
			mnt "$T/$src" "$T/m" -o ep_size=$w
			for r in $(seq 0 $((w - 1))); do
				$CHECK "$T/$src" "$T/m/ep-rank-$r" --ep-size $w --ep-rank $r >/dev/null ||
					{ echo "src=$src W=$w R=$r"; return 1; }
			done
			umnt "$T/m"
		done
	done
}

t_ep_single_rank_and_shard_cut() {
	local src
	for src in e10 e10n; do
		mnt "$T/$src" "$T/m" -o ep_size=4,ep_rank=3,ep_shard_size=2,ep_shard_rank=1
		$CHECK "$T/$src" "$T/m" --ep-size 4 --ep-rank 3 --ep-shard-size 2 --ep-shard-rank 1
		umnt "$T/m"
		mnt "$T/$src" "$T/m" -o ep_size=4,ep_rank=2,view=hf
		$CHECK "$T/$src" "$T/m" --view hf --ep-size 4 --ep-rank 2
		umnt "$T/m"
	done
	# E = 10 over W = 4 gives 3, 3, 2, 2 experts
	mnt "$T/e10" "$T/m" -o ep_size=4
	local shapes=""
	for r in 0 1 2 3; do
		shapes+=$(python3 -c 'import json,struct,sys
f=open(sys.argv[1],"rb"); n=struct.unpack("<Q",f.read(8))[0]; h=json.loads(f.read(n))
print([v["shape"][0] for k,v in h.items() if k.endswith("gate_and_up_projs")][0], h["__metadata__"]["qvlmoefs.expert_start"], h["__metadata__"]["qvlmoefs.expert_end"], end=" ")' "$T/m/ep-rank-$r/model-00002-of-00002.safetensors")
	done
	[ "$shapes" = "3 0 3 3 3 6 2 6 8 2 8 10 " ] || { echo "got: $shapes"; return 1; }
}

t_ep_reassembly() {
	mnt "$T/e10" "$T/m" -o ep_size=4,ep_shard_size=2
	python3 "$EP" reassemble "$T/e10" "$T/m" 4 2
	umnt "$T/m"
	mnt "$T/e10n" "$T/m" -o ep_size=3
	python3 "$EP" reassemble "$T/e10n" "$T/m" 3
	umnt "$T/m"
	mnt "$T/hf" "$T/m" -o ep_size=8
	python3 "$EP" reassemble "$T/hf" "$T/m" 8
}

# within_1pct GOT WANT: GOT is at least WANT and at most 1% above it
within_1pct() {
	echo "source bytes read: $1, minimal: $2"
	[ "$1" -ge "$2" ] && [ $(($1 * 100)) -le $(($2 * 101)) ]
}

t_ep_source_bytes_one_rank() {
	local r got want
	for r in 0 3; do
		mnt "$T/e10" "$T/m" -o ep_size=4,ep_rank=$r
		read_all "$T/m"
		got=$(stat_field "$T/m" bytes_from_sources)
		want=$(python3 "$EP" minbytes "$T/e10" 4 $r)
		within_1pct "$got" "$want"
		umnt "$T/m"
	done
	mnt "$T/e10" "$T/m" -o ep_size=4,ep_rank=1,ep_shard_size=2,ep_shard_rank=0
	read_all "$T/m"
	within_1pct "$(stat_field "$T/m" bytes_from_sources)" "$(python3 "$EP" minbytes "$T/e10" 4 1 2 0)"
}

t_ep_multirank_folders_lazy() {
	mnt "$T/e10" "$T/m" -o ep_size=12 2>/dev/null && { echo "ep_size=12 > 10 experts mounted"; return 1; }
	mnt "$T/e10" "$T/m" -o ep_size=10
	[ "$(ls "$T/m" | tr '\n' ' ')" = "$(printf 'ep-rank-%s ' 0 1 2 3 4 5 6 7 8 9 | tr ' ' '\n' | sort | tr '\n' ' ')" ]
	local n0 n1 n2
	n0=$(stat_field "$T/m" nodes)
	ls "$T/m/ep-rank-7" >/dev/null
	n1=$(stat_field "$T/m" nodes)
	ls "$T/m/ep-rank-7" >/dev/null
	cat "$T/m/ep-rank-7/config.json" >/dev/null
	n2=$(stat_field "$T/m" nodes)
	echo "nodes: $n0 before, $n1 after one rank, $n2 again"
	[ "$n0" -eq 11 ] && [ "$n1" -gt "$n0" ] && [ "$n2" -eq "$n1" ]
	$CHECK "$T/e10" "$T/m/ep-rank-7" --ep-size 10 --ep-rank 7
	umnt "$T/m"
	mnt "$T/e10" "$T/m" -o ep_size=2,ep_shard_size=2
	[ "$(ls "$T/m" | tr '\n' ' ')" = "ep-rank-0-shard-0 ep-rank-0-shard-1 ep-rank-1-shard-0 ep-rank-1-shard-1 " ]
	$CHECK "$T/e10" "$T/m/ep-rank-1-shard-1" --ep-size 2 --ep-rank 1 --ep-shard-size 2 --ep-shard-rank 1
}

t_ep_validation_errors() {
	local out
	mkdir -p "$T/m"
	for o in ep_size=2,ep_rank=2 ep_size=11 ep_size=2,ep_shard_size=3,ep_shard_rank=3 \
		ep_size=2,ep_shard_size=3 ep_rank=1 ep_size=2,ep_shard_rank=1 ep_size=0; do
		if out=$("$QV" "$T/e10" "$T/m" -o $o 2>&1); then
			echo "-o $o mounted"
			return 1
		fi
		echo "-o $o: $out"
		[ "$(echo "$out" | grep -vc 'do not divide')" -eq 1 ]
	done
	out=$("$QV" "$T/e10" "$T/m" -o ep_size=2,ep_shard_size=3 2>&1) || true
	case $out in *"down_proj"*"dim 1 (40) is not divisible by ep_shard_size=3"*) ;; *) return 1 ;; esac
	out=$("$QV" "$T/e10" "$T/m" -o ep_size=4,ep_rank=0 2>&1)
	umnt "$T/m"
	case $out in *"10 experts do not divide by ep_size=4"*) ;; *) echo "no warning: $out"; return 1 ;; esac
}

t_ep_e128_w8_reads_only_its_slices() {
	"$MK" --experts 128 --layers 2 "$T/e128" >/dev/null
	mnt "$T/e128" "$T/m" -o ep_size=8
	local r
	for r in $(seq 0 7); do
		read_all "$T/m/ep-rank-$r"
	done
	local got
	got=$(stat_field "$T/m" bytes_from_sources)
	python3 - "$got" "$T/e128" "$EP" <<'PY'
import sys, subprocess
got, src, ep = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# expert bytes of the whole checkpoint and dense bytes (tensors + pass-through files) of one view
allr = int(subprocess.check_output(["python3", ep, "minbytes", src, "8", "0,1,2,3,4,5,6,7"]))
one = int(subprocess.check_output(["python3", ep, "minbytes", src, "1", "0"]))
# allr = E + 8D and one = E + D, so E and D follow
dense = (allr - one) // 7
experts = one - dense
limit = 1.01 * experts + 8 * dense
print(f"8 ranks read {got} source bytes; experts {experts}, dense {dense}, limit {limit:.0f}")
sys.exit(0 if got <= limit else 1)
PY
	for r in 0 5; do
		$CHECK "$T/e128" "$T/m/ep-rank-$r" --ep-size 8 --ep-rank $r >/dev/null
	done
}

t_node_mount_script() {
	QVLMOEFS=$QV "$ROOT/mount-scripts/qvlmoefs-node-mount" "$T/e10" "$T/m" 4 view=native
	QVLMOEFS=$QV "$ROOT/mount-scripts/qvlmoefs-node-mount" "$T/e10" "$T/m" 4 | grep -q "already mounted"
	$CHECK "$T/e10" "$T/m/ep-rank-2" --ep-size 4 --ep-rank 2
}

# daemon_fg SRC MNT [opts...]: mount in the foreground in the background; sets DPID
daemon_fg() {
	local src=$1 m=$2
	shift 2
	mkdir -p "$m"
	"$QV" -f "$src" "$m" "$@" 2>>"$T/daemon.log" &
	DPID=$!
	for _ in $(seq 1 200); do mountpoint -q "$m" && return 0; sleep 0.05; done
	echo "mount of $src did not appear"
	return 1
}

t_stress() {
	local secs=${STRESS_SECONDS:-10} threads=${STRESS_THREADS:-16}
	daemon_fg "$T/e10" "$T/m1"
	local p1=$DPID
	daemon_fg "$T/e10n" "$T/m2" -o ep_size=4
	local p2=$DPID
	$CHECK "$T/e10" "$T/m1"
	$CHECK "$T/e10n" "$T/m2/ep-rank-1" --ep-size 4 --ep-rank 1
	mkdir -p "$T/ref1" "$T/ref2"
	cp "$T/m1"/* "$T/ref1/"
	cp "$T/m2/ep-rank-1"/* "$T/ref2/"
	# descriptors of source files held by the daemons (rings come and go with worker threads)
	srcfds() { ls -l /proc/$1/fd | grep -c " $T/e10"; }
	local fd1 fd2
	fd1=$(srcfds $p1) fd2=$(srcfds $p2)
	"$ROOT/$BUILD/stress" "$secs" "$threads" "$T/m1:$T/ref1" "$T/m2/ep-rank-1:$T/ref2"
	sleep 0.5 # releases are asynchronous
	echo "daemon source fds: $fd1 -> $(srcfds $p1), $fd2 -> $(srcfds $p2)"
	[ "$(srcfds $p1)" -eq "$fd1" ] && [ "$(srcfds $p2)" -eq "$fd2" ]
	umnt "$T/m1" && umnt "$T/m2"
	wait $p1 && wait $p2
}

# mutate the source under an open view file; every read must be right or EIO, never short
t_sources_change_under_mount() {
	local mode opts
	for opts in "" "-o direct_io"; do
		for mode in truncate overwrite delete rename_replace chmod; do
			rm -rf "$T/chg" && cp -r "$T/e10" "$T/chg"
			mnt "$T/chg" "$T/m" $opts
			python3 - "$T/chg" "$T/m" "$mode" <<'PY'
import errno, os, shutil, sys
src, mnt, mode = sys.argv[1:]
name = "model-00002-of-00002.safetensors"
want = open(os.path.join(mnt, name), "rb").read()
f = os.open(os.path.join(mnt, name), os.O_RDONLY)
pos, step, eio = 0, 65536, 0
first = os.read(f, step); assert first == want[:len(first)]; pos = len(first)
s = os.path.join(src, name)
if mode == "truncate": os.truncate(s, os.path.getsize(s) // 2)
elif mode == "overwrite":
    with open(s, "r+b") as g: g.seek(os.path.getsize(s) // 2); g.write(b"\xAA" * 4096)
elif mode == "delete": os.unlink(s)
elif mode == "rename_replace":
    shutil.copy(s, s + ".new")
    with open(s + ".new", "r+b") as g: g.seek(os.path.getsize(s) // 2); g.write(b"\x55" * 4096)
    os.rename(s + ".new", s)
elif mode == "chmod": os.chmod(s, 0)
while pos < len(want):
    try:
        got = os.pread(f, step, pos)
    except OSError as e:
        assert e.errno == errno.EIO, e; eio += 1; pos += step; continue
    assert len(got) == min(step, len(want) - pos), f"short read at {pos}: {len(got)}"
    assert got == want[pos:pos + len(got)], f"WRONG BYTES at {pos}"
    pos += len(got)
os.close(f)
try:
    again = open(os.path.join(mnt, name), "rb").read()
    assert again == want, "reopened file served different bytes"
    reopen = "same bytes"
except OSError as e:
    assert e.errno == errno.EIO, e; reopen = "EIO"
assert open(os.path.join(mnt, "config.json"), "rb").read()  # the daemon still serves
print(f"{mode}: {eio} reads gave EIO, reopen: {reopen}")
PY
			umnt "$T/m"
		done
	done
}

t_sighup_rescan() {
	rm -rf "$T/rs" && cp -r "$T/e10" "$T/rs"
	daemon_fg "$T/rs" "$T/m"
	$CHECK "$T/rs" "$T/m" >/dev/null
	echo "new file" >"$T/rs/added.txt"
	"$MK" --experts 10 --seed 9 "$T/rs-new" >/dev/null
	cp "$T/rs-new/model-00002-of-00002.safetensors" "$T/rs/"
	rm "$T/rs/tokenizer.json"
	[ ! -e "$T/m/added.txt" ]
	kill -HUP $DPID
	sleep 0.5
	$CHECK "$T/rs" "$T/m"
	[ -e "$T/m/added.txt" ] && [ ! -e "$T/m/tokenizer.json" ]
	grep -q "rescanned the source" "$T/daemon.log"
	umnt "$T/m"
	wait $DPID
}

t_kill9_gives_enotconn() {
	daemon_fg "$T/e10" "$T/m"
	exec 7<"$T/m/config.json"
	kill -9 $DPID
	wait $DPID 2>/dev/null || true
	local out
	out=$(cat "$T/m/config.json" 2>&1) && { echo "read after kill -9 succeeded"; return 1; }
	exec 7<&-
	echo "$out"
	case $out in *"Transport endpoint is not connected"*) ;; *) return 1 ;; esac
	fusermount3 -u "$T/m"
	! mountpoint -q "$T/m"
	mnt "$T/e10" "$T/m" # the mount point is usable again
	$CHECK "$T/e10" "$T/m" >/dev/null
}

t_lazy_unmount_keeps_open_files() {
	daemon_fg "$T/e10" "$T/m" -o direct_io
	python3 - "$T/m" "$T/e10" "$DPID" <<'PY'
import os, subprocess, sys, time
mnt, src, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
name = "model-00002-of-00002.safetensors"
f = os.open(os.path.join(mnt, name), os.O_RDONLY)
head = os.read(f, 4096)
subprocess.run(["fusermount3", "-uz", mnt], check=True)
assert not os.path.ismount(mnt)
data = head + b"".join(iter(lambda: os.read(f, 1 << 20), b""))
ref = open(os.path.join(src, name), "rb").read()
assert len(data) == os.fstat(f).st_size, "short"
os.close(f)
print(f"read {len(data)} bytes after the lazy unmount")
PY
	local rc=0
	timeout 10 tail --pid=$DPID -f /dev/null || { echo "daemon still running"; return 1; }
	wait $DPID || rc=$?
	echo "daemon exit status $rc"
	[ $rc -eq 0 ]
}

t_sigterm_during_reads() {
	daemon_fg "$T/e10" "$T/m" -o direct_io
	(for _ in $(seq 1 200); do cat "$T/m"/*.safetensors >/dev/null 2>&1 || break; done) &
	local reader=$!
	sleep 0.3
	kill -TERM $DPID
	local rc=0
	wait $DPID || rc=$?
	wait $reader || true
	echo "daemon exit status $rc"
	[ $rc -eq 0 ] && ! mountpoint -q "$T/m"
}

t_io_faults_through_mount() {
	local f
	for f in setup=EPERM chunk=4096,eagain=3 setup=EPERM,chunk=1000; do
		: >"$T/daemon.log"
		QVLMOEFS_TEST_FAULTS=$f daemon_fg "$T/e10" "$T/m"
		$CHECK "$T/e10" "$T/m" >/dev/null
		umnt "$T/m"
		wait $DPID
		cat "$T/daemon.log"
		case $f in setup=*) [ "$(grep -c 'falling back to pread' "$T/daemon.log")" -eq 1 ] ;;
		*) ! grep -q 'falling back' "$T/daemon.log" ;; esac
	done
}

t_symlink_swap_never_escapes() {
	rm -rf "$T/ln" && mkdir -p "$T/ln/real" && cp "$T/e10/config.json" "$T/e10/tokenizer.json" "$T/ln/real/"
	ln -s real/config.json "$T/ln/config.json"
	echo "SECRET-OUTSIDE" >"$T/outside.txt"
	daemon_fg "$T/ln" "$T/m"
	cmp "$T/ln/real/config.json" "$T/m/config.json"
	# swap the link (and the file it named) while mounted
	ln -sfn "$T/outside.txt" "$T/ln/config.json"
	mv "$T/ln/real/config.json" "$T/ln/real/config.old" && ln -s "$T/outside.txt" "$T/ln/real/config.json"
	local out
	out=$(cat "$T/m/config.json" "$T/m/real/config.json" 2>&1 || true)
	case $out in *SECRET-OUTSIDE*) echo "served a file outside the source"; return 1 ;; esac
	kill -HUP $DPID
	sleep 0.5
	[ ! -e "$T/m/config.json" ] && [ ! -e "$T/m/real/config.json" ]
	umnt "$T/m"
}

t_permissions_and_users() {
	[ "$(id -u)" -eq 0 ] || { echo "needs root to create a user"; return 77; }
	id qvlmoefs-test >/dev/null 2>&1 || useradd -M -s /bin/sh qvlmoefs-test
	local d=/tmp/qvlmoefs-user.$$ mode rc=0
	rm -rf "$d" && mkdir -p "$d/m" && cp -r "$T/e10" "$d/src"
	chown -R qvlmoefs-test "$d"
	# a stock machine lets users open /dev/fuse (0666); containers may not: as on a stock
	# machine for the length of this test
	mode=$(stat -c %a /dev/fuse)
	chmod 0666 /dev/fuse
	su qvlmoefs-test -s /bin/sh -c "$QV $d/src $d/m" || rc=1
	su qvlmoefs-test -s /bin/sh -c "cat $d/m/config.json >/dev/null" || rc=1
	# another user (root included) is refused without allow_other
	if ls "$d/m" >/dev/null 2>&1; then echo "root could list another user's mount"; rc=1; fi
	su qvlmoefs-test -s /bin/sh -c "fusermount3 -u $d/m" || rc=1
	chmod "$mode" /dev/fuse
	# allow_other always comes with default_permissions
	mnt "$T/e10" "$T/m" -o allow_other
	grep " $T/m " /proc/mounts | grep -q default_permissions || { echo "no default_permissions"; rc=1; }
	rm -rf "$d"
	return $rc
}

t_out_of_descriptors() {
	rm -rf "$T/many" && cp -r "$T/e10" "$T/many"
	for i in $(seq 1 100); do echo "file $i" >"$T/many/f$i.txt"; done
	mkdir -p "$T/m"
	(ulimit -n 48; exec "$QV" -f "$T/many" "$T/m" 2>>"$T/daemon.log") &
	DPID=$!
	for _ in $(seq 1 200); do mountpoint -q "$T/m" && break; sleep 0.05; done
	# hold 100 files open at once: the daemon runs out, refuses opens cleanly, and recovers
	python3 - "$T/m" <<'PY'
import errno, os, sys, time
m = sys.argv[1]
held, refused = [], 0
for i in range(1, 101):
    try:
        held.append((i, os.open(f"{m}/f{i}.txt", os.O_RDONLY)))
    except OSError as e:
        assert e.errno in (errno.EMFILE, errno.ENFILE), e
        refused += 1
for i, fd in held:
    assert os.read(fd, 100) == f"file {i}\n".encode(), i
    os.close(fd)
print(f"{len(held)} opened, {refused} refused cleanly")
assert refused > 0
time.sleep(0.5)  # FUSE sends release asynchronously after close()
for i in range(1, 101):  # all descriptors were given back: everything opens again
    assert open(f"{m}/f{i}.txt").read() == f"file {i}\n"
PY
	cmp "$T/many/config.json" "$T/m/config.json"
	umnt "$T/m"
	wait $DPID
}

t_daemon_under_valgrind() {
	command -v valgrind >/dev/null || { echo "valgrind not installed"; return 77; }
	if ldd "$QV" | grep -q libasan; then
		echo "this build uses AddressSanitizer, which cannot run under valgrind (the plain build runs this test)"
		return 77
	fi
	mkdir -p "$T/m"
	valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite \
		"$QV" -f "$T/e10n" "$T/m" -o ep_size=4 2>"$T/vg.log" &
	local pid=$!
	for _ in $(seq 1 400); do mountpoint -q "$T/m" && break; sleep 0.05; done
	$CHECK "$T/e10n" "$T/m/ep-rank-3" --ep-size 4 --ep-rank 3
	umnt "$T/m"
	local rc=0
	wait $pid || rc=$?
	cat "$T/vg.log"
	[ $rc -eq 0 ]
}

t_gpu_requests_fail_fast_without_device() {
	local out rc
	mkdir -p "$T/m"
	"$QV" -V | grep -E "^gpu: (cuda runtime \(dlopen\)|not built)$"
	if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
		echo "this machine has a GPU: the failure path is not reachable here"
		return 77
	fi
	out=$(timeout 20 "$QV" "$T/e10" "$T/m" -o gpu=0 2>&1) && { echo "mounted with gpu=0"; return 1; }
	echo "$out"
	[ "$(echo "$out" | wc -l)" -eq 1 ] && ! mountpoint -q "$T/m"
	case $out in *"gpu=0"*) ;; *) return 1 ;; esac
	out=$(timeout 20 "$QV" stage "$T/e10" -o ep_size=4,ep_rank=1 2>&1) && { echo "staged"; return 1; }
	echo "$out"
	[ "$(echo "$out" | wc -l)" -eq 1 ]
	out=$(timeout 20 "$QV" stage "$T/e10" --device 7 2>&1) || true
	echo "$out"
	"$QV" stage --help | grep -q -- "--samples"
	# the mount without gpu is unaffected
	mnt "$T/e10" "$T/m"
	$CHECK "$T/e10" "$T/m" >/dev/null
}

t_gpu_stage_on_device() {
	command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 ||
		{ echo "no NVIDIA GPU on this machine (tests/gpu/device-check.sh runs where one is)"; return 77; }
	"$QV" stage "$T/e10" -o ep_size=4,ep_rank=1 --samples 0
	"$QV" stage "$T/e10n" --all --samples 0 --slots 2 --slot-mib 1
}

t_hidden_folder() {
	mnt "$T/e10" "$T/m"
	[ -d "$T/m/.qvlmoefs" ] && [ ! -w "$T/m/.qvlmoefs" ]
	python3 - "$T/m" <<'PY'
import glob, json, os, sys
m = sys.argv[1]
assert not [p for p in glob.glob(f"{m}/**/*.safetensors", recursive=True) if ".qvlmoefs" in p]
assert ".qvlmoefs" not in open(f"{m}/model.safetensors.index.json").read()
s1 = json.load(open(f"{m}/.qvlmoefs/stats"))
open(f"{m}/config.json", "rb").read()
s2 = json.load(open(f"{m}/.qvlmoefs/stats"))
assert s2["opens"] > s1["opens"] and s2["bytes_served"] > s1["bytes_served"], (s1, s2)
print("stats:", s2)
PY
}

# dcp_pair NAME FLAGS...: a normal checkpoint and the same one as an Automodel sharded save
dcp_pair() {
	local name=$1
	shift
	[ -d "$T/dcp-$name" ] && return 0
	"$MK" "$@" "$T/dcp-$name-hf" >/dev/null
	"$MK" "$@" "$T/dcp-$name" >/dev/null
}

t_dcp_consolidated_equals_original() {
	local spec name flags
	for spec in "w1:--sharded-save 1" "w4:--sharded-save 4" "w8k2:--sharded-save 8 --save-shard-size 2" \
		"e10w4:--experts 10 --sharded-save 4 --dense-split" "w3:--sharded-save 3 --shards 3 --dense-split"; do
		name=${spec%%:*} flags=${spec#*:}
		rm -rf "$T/dcp-$name" "$T/dcp-$name-hf"
		"$MK" ${flags//--sharded-save*/} $(echo "$flags" | grep -o -- '--experts [0-9]*') \
			$(echo "$flags" | grep -o -- '--shards [0-9]*') "$T/dcp-$name-hf" >/dev/null
		"$MK" $flags "$T/dcp-$name" >/dev/null
		mnt "$T/dcp-$name" "$T/m"
		$CHECK "$T/dcp-$name-hf" "$T/m" --view hf || { echo "layout $name"; return 1; }
		umnt "$T/m"
		mnt "$T/dcp-$name" "$T/m" -o view=native
		$CHECK "$T/dcp-$name-hf" "$T/m" --view native >/dev/null || { echo "layout $name native"; return 1; }
		umnt "$T/m"
	done
}

t_dcp_resharded_rank_views() {
	"$MK" --experts 16 "$T/r16-hf" >/dev/null
	"$MK" --experts 16 --sharded-save 8 "$T/r16-w8" >/dev/null
	"$MK" --experts 16 --sharded-save 8 --save-shard-size 2 --dense-split "$T/r16-w8k2" >/dev/null
	local src w r
	for src in r16-w8 r16-w8k2; do
		for w in 4 16 3; do
			mnt "$T/$src" "$T/m" -o ep_size=$w
			for r in 0 $((w - 1)); do
				$CHECK "$T/r16-hf" "$T/m/ep-rank-$r" --view hf --ep-size $w --ep-rank $r >/dev/null ||
					{ echo "$src as ep_size=$w rank $r"; return 1; }
			done
			umnt "$T/m"
		done
		mnt "$T/$src" "$T/m" -o ep_size=2,ep_rank=1,ep_shard_size=2,ep_shard_rank=0,view=native
		$CHECK "$T/r16-hf" "$T/m" --view native --ep-size 2 --ep-rank 1 --ep-shard-size 2 --ep-shard-rank 0
		umnt "$T/m"
	done
}

t_dcp_coverage_errors() {
	local out
	mkdir -p "$T/m"
	"$MK" --sharded-save 4 --sharded-drop-rank 1 "$T/dcp-hole" >/dev/null
	out=$("$QV" "$T/dcp-hole" "$T/m" 2>&1) && { echo "mounted with a rank missing"; return 1; }
	echo "$out"
	case $out in *"shard-00002-model-00001-of-00001.safetensors is missing"*) ;; *) return 1 ;; esac
	"$MK" --sharded-save 4 --sharded-drop-rank 3 "$T/dcp-tail" >/dev/null
	out=$("$QV" "$T/dcp-tail" "$T/m" 2>&1) && { echo "mounted with the last rank missing"; return 1; }
	echo "$out"
	case $out in *"chunks cover experts [0, 6) of the 8"*"rank file may be missing"*) ;; *) return 1 ;; esac
	cp -r "$T/dcp-tail" "$T/dcp-dup"
	cp "$T/dcp-dup/shard-00003-model-00001-of-00001.safetensors" "$T/dcp-dup/shard-00004-model-00001-of-00001.safetensors"
	out=$("$QV" "$T/dcp-dup" "$T/m" 2>&1) && { echo "mounted with overlapping chunks"; return 1; }
	echo "$out"
	case $out in *"overlap"*) ;; *) return 1 ;; esac
	python3 - "$T/dcp-clash" <<'PY'
import json, os, struct, sys
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
def rank(r, dtype, size, at=None):
    info = json.dumps({"w": {"saved_offsets": [r * 2 if at is None else at]}})
    h = json.dumps({"__metadata__": {"format": "pt", "DCP_SHARDING_INFO": info},
                    "w": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2 * size]}}).encode()
    h += b" " * (-(8 + len(h)) % 8)
    open(f"{d}/shard-{r + 1:05}-model-00001-of-00001.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * 2 * size)
rank(0, "BF16", 2); rank(1, "F32", 4)
d = sys.argv[1] + "-gap"; os.makedirs(d, exist_ok=True)
rank(0, "BF16", 2); rank(1, "BF16", 2, at=4)
PY
	out=$("$QV" "$T/dcp-clash" "$T/m" 2>&1) && { echo "mounted with a dtype clash"; return 1; }
	echo "$out"
	case $out in *'tensor "w": chunks disagree on dtype'*) ;; *) return 1 ;; esac
	out=$("$QV" "$T/dcp-clash-gap" "$T/m" 2>&1) && { echo "mounted with a gap"; return 1; }
	echo "$out"
	case $out in *'tensor "w": no chunk covers dim 0 [2, 4)'*) ;; *) return 1 ;; esac
	! mountpoint -q "$T/m"
}

# check_inspection VIEWROOT SRCROOT: .qvlmoefs/ of one view root against the view's own files
check_inspection() {
	python3 - "$1" "$2" <<'PY'
import json, os, struct, sys
view, src = sys.argv[1:]
h = os.path.join(view, ".qvlmoefs")
stats = json.load(open(f"{h}/stats"))
for k in ("requests", "bytes_served", "bytes_from_sources", "bytes_from_sources_uring",
          "bytes_from_sources_pread", "errors", "open_files", "uptime_s"):
    assert k in stats, k
vj = json.load(open(f"{h}/view.json"))
assert vj["source"] == os.path.realpath(src), vj
ntensors = 0
for dirpath, _, files in os.walk(view):
    if ".qvlmoefs" in dirpath:
        continue
    for f in files:
        p = os.path.join(dirpath, f)
        rel = os.path.relpath(p, view)
        x = os.getxattr(p, "user.qvlmoefs.source").decode()
        if not f.endswith(".safetensors"):
            if not f.endswith(".index.json"):
                assert x == rel or os.path.exists(os.path.join(src, x)), (rel, x)
            continue
        raw = open(p, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        hdr = json.loads(raw[8:8 + n])
        assert json.load(open(f"{h}/headers/{rel}.json")) == hdr, rel
        for key, t in hdr.items():
            if key == "__metadata__":
                continue
            tp = f"{h}/tensors/{key}"
            b, e = t["data_offsets"]
            assert open(tp, "rb").read() == raw[8 + n + b:8 + n + e], key
            assert os.getxattr(tp, "user.qvlmoefs.dtype").decode() == t["dtype"]
            assert json.loads(os.getxattr(tp, "user.qvlmoefs.shape")) == t["shape"]
            assert os.getxattr(tp, "user.qvlmoefs.file").decode() == rel
            assert os.getxattr(tp, "user.qvlmoefs.extents")
            ntensors += 1
assert ntensors == len(os.listdir(f"{h}/tensors")), (ntensors, len(os.listdir(f"{h}/tensors")))
print(f"{view}: {ntensors} tensor files, headers, xattrs and view.json agree")
PY
}

t_inspection_folder_and_xattrs() {
	mnt "$T/e10" "$T/m1"
	check_inspection "$T/m1" "$T/e10"
	mnt "$T/native" "$T/m2"
	check_inspection "$T/m2" "$T/native"
	mnt "$T/e10n" "$T/m3" -o ep_size=4,ep_shard_size=2
	check_inspection "$T/m3/ep-rank-3-shard-1" "$T/e10n"
	grep -q '"ep_rank": 3' "$T/m3/ep-rank-3-shard-1/.qvlmoefs/view.json"
	grep -q '"expert_start": 8' "$T/m3/ep-rank-3-shard-1/.qvlmoefs/view.json"
	[ -f "$T/m3/.qvlmoefs/stats" ]
	getfattr -d -m - "$T/m1/.qvlmoefs/tensors/model.language_model.layers.1.mlp.experts.down_projs" |
		grep -q 'user.qvlmoefs.shape="\[10,40,48\]"'
	getfattr -n user.qvlmoefs.source --only-values "$T/m1/model-00001-of-00002.safetensors" |
		grep -qx "model-00001-of-00002.safetensors"
	cmp <(xxd "$T/m1/.qvlmoefs/tensors/lm_head.weight") \
		<(python3 -c 'import json,struct,sys
f=open(sys.argv[1],"rb"); n=struct.unpack("<Q",f.read(8))[0]; t=json.loads(f.read(n))["lm_head.weight"]
f.seek(8+n+t["data_offsets"][0]); sys.stdout.buffer.write(f.read(t["data_offsets"][1]-t["data_offsets"][0]))' \
		"$T/e10/model-00002-of-00002.safetensors" | xxd)
}

t_inspect_agrees_with_mount() {
	local o
	for o in "" "-o ep_size=4,ep_rank=2" "-o ep_size=2" "-o view=hf"; do
		local src=$T/e10
		[ "$o" = "-o view=hf" ] && src=$T/native
		"$QV" inspect "$src" $o --keys --json >"$T/inspect.json"
		mnt "$src" "$T/m" $o
		python3 - "$T/inspect.json" "$T/m" <<'PY'
import json, os, struct, sys
rep, mnt = json.load(open(sys.argv[1])), sys.argv[2]
files = {}
for d, dirs, fs in os.walk(mnt):
    dirs[:] = [x for x in dirs if x != ".qvlmoefs"]
    for f in fs:
        p = os.path.join(d, f)
        files[os.path.relpath(p, mnt)] = os.path.getsize(p)
got = {f["path"]: f["size"] for f in rep["files"]}
assert got == files, (sorted(set(got) ^ set(files)))
keys = 0
for k in rep["keys"]:
    p = os.path.join(mnt, k["folder"], k["file"])
    raw = open(p, "rb")
    n = struct.unpack("<Q", raw.read(8))[0]
    t = json.loads(raw.read(n))[k["view_key"]]
    assert t["shape"] == k["view_shape"] and t["dtype"] == k["dtype"], k
    assert k["source_key"], k
    keys += 1
assert keys > 0
print(f"inspect: {len(files)} files and {keys} keys agree with the mount")
PY
		umnt "$T/m"
	done
	# the same planning errors as the mount, without mounting
	local out
	out=$("$QV" inspect "$T/e10" -o ep_size=11 2>&1) && return 1
	echo "$out" | grep -q "ep_size=11 exceeds its 10 experts"
	mkdir -p "$T/dup" && cp "$T/e10/config.json" "$T/dup/"
	python3 -c 'import struct,sys
h=b"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}"
open(sys.argv[1],"wb").write(struct.pack("<Q",len(h))+h+b"x")' "$T/dup/model.safetensors"
	out=$("$QV" inspect "$T/dup" 2>&1) && return 1
	echo "$out"
	[ "$out" = "$("$QV" "$T/dup" "$T/m" 2>&1)" ] # word for word the mount's error
}

t_sigusr1_and_debug_log() {
	: >"$T/daemon.log"
	daemon_fg "$T/e10" "$T/m"
	cat "$T/m/config.json" >/dev/null
	kill -USR1 $DPID
	sleep 0.3
	grep -q 'qvlmoefs: stats {"requests":' "$T/daemon.log"
	umnt "$T/m"
	wait $DPID
	"$QV" -o debug "$T/e10" "$T/m" >"$T/debug.log" 2>&1 &
	DPID=$!
	for _ in $(seq 1 100); do mountpoint -q "$T/m" && break; sleep 0.05; done
	cat "$T/m/config.json" >/dev/null
	umnt "$T/m"
	wait $DPID
	grep -q "opcode: LOOKUP" "$T/debug.log" && grep -q "opcode: READ" "$T/debug.log"
}

t_man_page_and_help() {
	grep -q '^.TH QVLMOEFS 8' "$ROOT/mount-scripts/qvlmoefs.8"
	if command -v man >/dev/null; then man -l "$ROOT/mount-scripts/qvlmoefs.8" | grep -q "SIGUSR1"; fi
	local d=$T/inst
	make -s -C "$ROOT" install BUILD="$BUILD" DESTDIR="$d" >/dev/null
	[ -f "$d/usr/local/share/man/man8/qvlmoefs.8" ] && [ -x "$d/usr/local/bin/qvlmoefs" ]
	"$QV" --help | grep -q "inspect SOURCE"
	"$QV" inspect --help | grep -q -- "--keys"
}

tests=$(declare -F | awk '{print $3}' | sed -n 's/^t_//p')
if [ ! -c /dev/fuse ] || ! command -v fusermount3 >/dev/null; then
	for t in $tests; do echo "skip - $t: no /dev/fuse or fusermount3 on this machine"; done
	echo "0 passed, 0 failed, $(echo "$tests" | wc -w) skipped"
	exit 0
fi
for t in ${ONLY:-$tests}; do
	run_test "$t"
done
if ls "$T"/san.* >/dev/null 2>&1; then
	echo "FAIL - sanitizer reports"
	cat "$T"/san.* | head -n 60 | sed 's/^/    /'
	fail=$((fail + 1))
fi
echo "$pass passed, $fail failed$([ $skip -gt 0 ] && echo ", $skip skipped")"
[ $fail -eq 0 ]
