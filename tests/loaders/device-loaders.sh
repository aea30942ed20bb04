#!/bin/bash
# The loaders check for a machine with an NVIDIA GPU and the Python ML stack (torch,
# safetensors, transformers), no internet needed: a tiny random Qwen3-VL-MoE saved by
# transformers, then (1) its native view checked with safetensors.safe_open, (2) a native
# checkpoint reverse-mounted and loaded with from_pretrained, every parameter equal, (3) a rank
# view read with get_slice and, if present, torch.distributed.checkpoint's HF reader, (4)
# safe_open of a ~2 GB checkpoint timed through the mount against the source. Without
# /dev/fuse it says so and runs only what needs no mount. Without torch, safetensors or
# transformers it says which in one line and exits 1. Under 5 minutes.
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
W=${LOADERS_DIR:-/tmp/qvlmoefs-loaders-dev}
PY=${PYTHON:-python3}
# what it needs, before anything is built or written: one line naming what is missing
missing=$("$PY" - <<'CHECK' 2>&1
import importlib
gone = []
for m in ("torch", "safetensors", "transformers"):
    try:
        importlib.import_module(m)
    except Exception as e:  # a broken install fails with more than ImportError
        gone.append(f"{m} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
print("; ".join(gone))
CHECK
) || missing="$PY does not run: $missing"
if [ -n "$missing" ]; then
	echo "device-loaders.sh: needs torch, safetensors and transformers in $PY; missing: $missing" >&2
	exit 1
fi
make -s all
mkdir -p "$W"
FUSE=1
[ -c /dev/fuse ] || { FUSE=0; echo "no /dev/fuse here: only the steps that need no mount run"; }
$PY - "$W" "$ROOT" "$FUSE" <<'PY'
import os, shutil, subprocess, sys, time
import torch
from safetensors import safe_open
import transformers
from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

w, root, fuse = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
qv, mk = f"{root}/build/qvlmoefs", f"{root}/build/qvlmoefs-mkckpt"
print("torch", torch.__version__, "transformers", transformers.__version__,
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))

def mount(src, mnt, *opts):
    os.makedirs(mnt, exist_ok=True)
    subprocess.run([qv, src, mnt] + (["-o", ",".join(opts)] if opts else []), check=True)

def umount(mnt):
    subprocess.run(["fusermount3", "-u", mnt], check=True)

# a tiny random model: H=48, I=40 (H != I, H != 2I), 8 experts, 2 layers
cfg = Qwen3VLMoeConfig(
    text_config=dict(hidden_size=48, intermediate_size=96, moe_intermediate_size=40, num_experts=8,
                     num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=256, decoder_sparse_step=1,
                     mlp_only_layers=[], rope_scaling={"rope_type": "default", "mrope_section": [4, 2, 2]}),
    vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=48,
                       patch_size=16, deepstack_visual_indexes=[0, 1]))
torch.manual_seed(0)
model = Qwen3VLMoeForConditionalGeneration(cfg).to(torch.bfloat16).eval()
hf = f"{w}/hf"
shutil.rmtree(hf, ignore_errors=True)
model.save_pretrained(hf, safe_serialization=True, max_shard_size="200KB")
want = {k: v for k, v in model.state_dict().items()}
print(f"saved {len(want)} tensors to {hf}: {sorted(os.listdir(hf))[:3]} ...")
if not fuse:
    sys.exit(0)

def hf_tensors(path):
    out = {}
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(path, f), "pt") as s:
                out.update({k: s.get_tensor(k) for k in s.keys()})
    return out

# (1) native view: every native key holds the HF tensor's data
src = hf_tensors(hf)
mount(hf, f"{w}/native")
nat = hf_tensors(f"{w}/native")
ren = lambda k: k.replace("gate_and_up_projs", "gate_up_proj").replace("down_projs", "down_proj")
assert len(nat) == len(src) and all(torch.equal(v, src[ren(k)]) for k, v in nat.items())
print(f"(1) safe_open on the native view: {len(nat)} tensors equal the HF checkpoint's")
# (2) a native checkpoint on disk, reverse-mounted, loaded by from_pretrained
natdir = f"{w}/native-ckpt"
shutil.rmtree(natdir, ignore_errors=True)
shutil.copytree(f"{w}/native", natdir, ignore=shutil.ignore_patterns(".qvlmoefs"))
umount(f"{w}/native")
mount(natdir, f"{w}/rev")
back = Qwen3VLMoeForConditionalGeneration.from_pretrained(f"{w}/rev", torch_dtype=torch.bfloat16)
got = back.state_dict()
assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
print(f"(2) from_pretrained on the reverse mount: all {len(want)} parameters equal the original")
umount(f"{w}/rev")
# (3) a rank view: get_slice, and DCP's HF reader when this torch has it
mount(hf, f"{w}/ep", "ep_size=4,ep_rank=1")
n = 0
for f in os.listdir(f"{w}/ep"):
    if f.endswith(".safetensors"):
        with safe_open(f"{w}/ep/{f}", "pt") as s:
            for k in s.keys():
                sl = s.get_slice(k)
                full = src[ren(k)]
                if "experts" in k:
                    full = full[2:4]
                assert torch.equal(sl[:], full), k
                n += 1
print(f"(3) get_slice on rank 1 of 4: {n} tensors equal the source slices")
try:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    sd = {k: torch.empty_like(v) for k, v in hf_tensors(f"{w}/ep").items()}
    dcp.load(sd, storage_reader=HuggingFaceStorageReader(path=f"{w}/ep"), no_dist=True)
    assert all(torch.equal(v, hf_tensors(f"{w}/ep")[k]) for k, v in sd.items())
    print(f"(3) torch.distributed.checkpoint HuggingFaceStorageReader: {len(sd)} tensors")
except ImportError as e:
    print(f"(3) torch.distributed.checkpoint has no HuggingFaceStorageReader here ({e})")
umount(f"{w}/ep")
# (4) safe_open of a ~2 GB checkpoint: through the mount against the source
big = f"{w}/big"
if not os.path.exists(f"{big}/config.json"):
    subprocess.run([mk, "--hidden", "1024", "--moe-inter", "768", "--experts", "64", "--layers", "8",
                    "--shards", "4", big], check=True)
def load_all(path):
    t0 = time.time(); nbytes = 0
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(path, f), "pt") as s:
                for k in s.keys():
                    nbytes += s.get_tensor(k).numel() * 2
    return nbytes, time.time() - t0
load_all(big)  # sources into the page cache
b, t_src = load_all(big)
mount(big, f"{w}/bigm")
b2, t_mnt = load_all(f"{w}/bigm")
umount(f"{w}/bigm")
print(f"(4) safe_open of {b/1e9:.2f} GB: source {t_src:.2f} s ({b/t_src/1e9:.2f} GB/s), "
      f"mount {t_mnt:.2f} s ({b2/t_mnt/1e9:.2f} GB/s), ratio {t_src/t_mnt:.2f}")
PY
echo "device loaders check done"
