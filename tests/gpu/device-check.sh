#!/bin/bash
# The device check for a machine with an NVIDIA GPU (H100/H200): build, make a ~2.4 GB
# checkpoint, stage one rank's experts and then every tensor with `qvlmoefs stage` (bytes
# verified, GB/s against a pinned cudaMemcpy measured in the same run), and, where /dev/fuse
# exists, mount with -o gpu=0 and map a staged tensor from another process through its IPC
# handle, comparing it with the file's bytes. Finishes in well under 5 minutes. Without a CUDA
# device it says so in one line before building or writing anything. tests/gpu/device-run.sh
# is the fuller measurement (8.6 GB, third-party loaders, warm and cold).
set -eu
cd "$(dirname "$0")/../.."
W=${DEVICE_DIR:-/tmp/qvlmoefs-device}
echo "== $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
# the GPU first: without a CUDA runtime and device nothing below can run, so write nothing
probe=$(python3 tests/gpu/device_load.py probe 2>&1 | tail -n 1)
case $probe in
'{"devices"'*) ;;
*)
	why=$(printf '%s' "$probe" | python3 -c 'import json, sys
try:
    print(json.loads(sys.stdin.read())["skip"])
except Exception as e:
    print("the GPU check failed:", e)')
	echo "device-check.sh: $why: this check needs a CUDA device; nothing was written" >&2
	exit 1
	;;
esac
tests/deps.sh fuse3 libfuse3-dev liburing-dev libcjson-dev pkg-config python3 >/dev/null || true
make -s all
./build/qvlmoefs -V | tail -n 1
mkdir -p "$W"
[ -f "$W/ckpt/.complete" ] || { ./build/qvlmoefs-mkckpt --hidden 1024 --moe-inter 768 \
	--experts 64 --layers 8 --shards 4 "$W/ckpt" && touch "$W/ckpt/.complete"; }
cat "$W"/ckpt/*.safetensors >/dev/null # sources in the page cache
echo "== one rank's experts (ep_size=8, ep_rank=3), every byte verified"
./build/qvlmoefs stage "$W/ckpt" -o ep_size=8,ep_rank=3 --samples 0
echo "== every tensor, 1024 sampled ranges verified"
./build/qvlmoefs stage "$W/ckpt" --all --samples 1024
echo "== every tensor, 8 x 64 MiB buffers"
./build/qvlmoefs stage "$W/ckpt" --all --samples 64 --slots 8 --slot-mib 64
if [ -c /dev/fuse ]; then
	echo "== mount -o gpu=0 and map a tensor from another process"
	mkdir -p "$W/mnt"
	./build/qvlmoefs "$W/ckpt" "$W/mnt" -o gpu=0,ep_size=8,ep_rank=3
	trap 'fusermount3 -u "$W/mnt"' EXIT
	for _ in $(seq 1 120); do
		grep -q '"state":"pending"' "$W/mnt/.qvlmoefs/gpu.json" || break
		sleep 0.5
	done
	PYTHONPATH=mount-scripts python3 - "$W/mnt" <<'PY'
import ctypes, json, struct, sys, qvlmoefs_gpu as g
mnt = sys.argv[1]
st = g.status(mnt)
print(f"{len(st['tensors'])} tensors staged on cuda:{st['device']}, states:",
      sorted({t['state'] for t in st['tensors']}))
t = st["tensors"][0]
ptr = g.device_pointer(st) + t["offset"]
host = ctypes.create_string_buffer(t["size"])
rt = g._cudart()
assert rt.cudaMemcpy(host, ctypes.c_void_p(ptr), ctypes.c_size_t(t["size"]), 2) == 0
path = f"{mnt}/{t['file']}"
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
    f.seek(8 + n + h[t["name"]]["data_offsets"][0])
    want = f.read(t["size"])
print(t["name"], "mapped through IPC:", "EQUAL to the file" if host.raw == want else "DIFFERENT")
sys.exit(0 if host.raw == want else 1)
PY
fi
echo "== device check done"
