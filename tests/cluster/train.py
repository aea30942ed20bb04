"""The cluster suite's stand-in for a training script: `python train.py --checkpoint DIR`, run as
each task of a Slurm job (doc/cluster.md's scripts call it so, as written).

DIR is an ep-rank-R folder of a node mount; R must be the task's SLURM_PROCID. Every
*.safetensors file there is loaded with the official safetensors (safe_open, framework "pt")
when it and torch import; the source's tensors too, and each tensor of the folder must equal the
source's, its experts cut to rank R's range (README: q = n / W, m = n % W, experts
[R*q + min(R, m), ... + q + (R < m))), under the native names; the folder must hold every key of
the source. Without torch (a task of another user, who cannot reach the suite's venv) the same
comparison runs on raw bytes, parsed with the standard library.

The environment says the rest: QVC_SRC (the source folder), QVC_EP (EP size), QVC_OUT (where
rank-R.json, this task's result, goes), QVC_HOLD (a file to wait for before exiting), QVC_RECHECK
(check the folder again after that), QVC_CRASH (a rank that aborts instead of loading). The node's first task (SLURM_LOCALID 0) also waits for
the other tasks of its node and copies the mount's stats and view.json to stats-NODE.json
and view-NODE.json.
"""
import argparse
import glob
import json
import os
import re
import struct
import sys
import time

EXPERT = re.compile(r"(.*\.mlp\.experts\.)(gate_and_up_projs|down_projs)$")
HF_NAME = {"gate_and_up_projs": "gate_up_proj", "down_projs": "down_proj"}


def ep_range(n, w, r):
    q, m = divmod(n, w)
    return r * q + min(r, m), q + (r < m)


def source_key(key):
    """(source key, expert?) of a native view key."""
    m = EXPERT.fullmatch(key)
    return (m.group(1) + HF_NAME[m.group(2)], True) if m else (key, False)


def raw_tensors(path):
    """{key: (dtype, shape, bytes)} of a safetensors file, with the standard library only."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    h.pop("__metadata__", None)
    return {k: (t["dtype"], t["shape"], data[t["data_offsets"][0]:t["data_offsets"][1]])
            for k, t in h.items()}


def load(folder, official):
    """{key: tensor} of every *.safetensors below folder."""
    out = {}
    for p in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        if official:
            from safetensors import safe_open
            with safe_open(p, framework="pt") as f:
                for k in f.keys():
                    out[k] = f.get_tensor(k)
        else:
            out.update(raw_tensors(p))
    return out


def check(src, folder, w, r, official):
    """Mismatch lines (empty: the folder is right) and the number of tensors compared."""
    view, source = load(folder, official), load(src, official)
    bad = []
    want = {}
    for k in source:
        m = re.fullmatch(r"(.*\.mlp\.experts\.)(gate_up_proj|down_proj)", k)
        want[m.group(1) + {"gate_up_proj": "gate_and_up_projs", "down_proj": "down_projs"}[m.group(2)]
             if m else k] = k
    if set(view) != set(want):
        bad.append(f"keys: missing {sorted(set(want) - set(view))[:3]}, extra {sorted(set(view) - set(want))[:3]}")
    for k in sorted(set(view) & set(want)):
        sk, expert = source_key(k)
        t = source[sk]
        if official:
            if expert:
                a, c = ep_range(t.shape[0], w, r)
                t = t[a:a + c]
            import torch  # bit for bit: random bytes hold NaNs, which == calls unequal
            ok = view[k].dtype == t.dtype and view[k].shape == t.shape and torch.equal(
                view[k].contiguous().view(torch.uint8), t.contiguous().view(torch.uint8))
        else:
            dt, shape, b = t
            if expert:
                a, c = ep_range(shape[0], w, r)
                per = len(b) // shape[0]
                shape, b = [c] + shape[1:], b[a * per:(a + c) * per]
            ok = view[k] == (dt, shape, b)
        if not ok:
            bad.append(f"{k}: differs from the source")
    return bad, len(view)


def put(out, rank, res):
    """Write rank-R.json whole (the suite polls for it)."""
    with open(os.path.join(out, f"rank-{rank}.json.tmp"), "w") as f:
        json.dump(res, f)
    os.rename(os.path.join(out, f"rank-{rank}.json.tmp"), os.path.join(out, f"rank-{rank}.json"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    a = p.parse_args()
    src, w, out = os.environ["QVC_SRC"], int(os.environ["QVC_EP"]), os.environ["QVC_OUT"]
    rank, local = int(os.environ["SLURM_PROCID"]), int(os.environ.get("SLURM_LOCALID", "0"))
    node = os.environ.get("SLURMD_NODENAME", "?")
    if os.environ.get("QVC_CRASH") == str(rank):
        os.abort()
    folder = a.checkpoint.rstrip("/")
    res = {"rank": rank, "node": node, "folder": folder, "uid": os.getuid()}
    try:
        import torch  # noqa: F401
        import safetensors
        res["reader"] = f"safetensors {safetensors.__version__}"
        official = True
    except ImportError:
        res["reader"] = "raw"
        official = False
    if os.path.basename(folder) != f"ep-rank-{rank}":
        res["errors"] = [f"task {rank} was given {folder}"]
    else:
        res["errors"], res["tensors"] = check(src, folder, w, rank, official)
    put(out, rank, res)
    if local == 0 and "QVC_CRASH" not in os.environ:  # the node's stats once its tasks are done
        mine = [int(x) for x in os.environ.get("SLURM_GTIDS", str(rank)).split(",")]
        end = time.monotonic() + 300
        while not all(os.path.exists(os.path.join(out, f"rank-{g}.json")) for g in mine):
            if time.monotonic() > end:
                break
            time.sleep(0.1)
        with open(os.path.join(os.path.dirname(folder), ".qvlmoefs", "stats")) as f:
            stats = f.read()
        with open(os.path.join(out, f"stats-{node}.json"), "w") as f:
            f.write(stats)
        with open(os.path.join(os.path.dirname(folder), ".qvlmoefs", "view.json")) as f:
            view = f.read()
        with open(os.path.join(out, f"view-{node}.json"), "w") as f:
            f.write(view)
    hold = os.environ.get("QVC_HOLD")
    while hold and not os.path.exists(hold):
        time.sleep(0.1)
    if os.environ.get("QVC_RECHECK") and not res["errors"]:  # the folder once more
        res["errors"] = [f"again: {e}" for e in check(src, folder, w, rank, official)[0]]
        put(out, rank, res)
    print(f"rank {rank} on {node}: {res.get('tensors', 0)} tensors, {len(res['errors'])} errors ({res['reader']})")
    sys.exit(1 if res["errors"] else 0)


if __name__ == "__main__":
    main()
