#!/bin/bash
# make demo: build a small sample Qwen3-VL-MoE checkpoint, mount its native view, show it, unmount.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
D=${DEMO_DIR:-/tmp/qvlmoefs-demo}
SRC=$D/hf-checkpoint MNT=$D/native-view

mountpoint -q "$MNT" 2>/dev/null && fusermount3 -u "$MNT"
rm -rf "$SRC"
mkdir -p "$D" "$MNT"
echo "== 1. a small synthetic checkpoint with Hugging Face names"
"$BUILD/qvlmoefs-mkckpt" "$SRC"
ls -l "$SRC"
echo
echo "== 2. mount its native view: $BUILD/qvlmoefs $SRC $MNT -o view=native"
"$BUILD/qvlmoefs" "$SRC" "$MNT" -o view=native
trap 'mountpoint -q "$MNT" && fusermount3 -u "$MNT"' EXIT
ls -l "$MNT"
echo
shard=$(ls "$MNT" | grep 'safetensors$' | tail -n 1)
echo "== 3. expert keys of $shard, source (HF) -> view (native)"
keys() { # the tensor names of a safetensors file, from its header
	python3 -c 'import json,struct,sys
f=open(sys.argv[1],"rb"); n=struct.unpack("<Q",f.read(8))[0]
for k,v in json.loads(f.read(n)).items():
    if "experts" in k: print("  %-60s %s %s" % (k, v["dtype"], v["shape"]))' "$1"
}
keys "$SRC/$shard"
echo "  ->"
keys "$MNT/$shard"
echo
echo "== 4. every byte checked against the source"
python3 tests/check_view.py "$SRC" "$MNT" --view native
echo
echo "== 5. unmount: fusermount3 -u $MNT"
fusermount3 -u "$MNT"
trap - EXIT
echo "done. Mount it again yourself with: $BUILD/qvlmoefs $SRC $MNT"
