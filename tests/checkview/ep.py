"""Expert-parallel checks that need more than one view: reassembly and minimal source bytes.

ep_check.py reassemble SRC MNT W [K]  -- MNT holds ep-rank-R (or ep-rank-R-shard-S) folders;
    concatenating every rank's expert tensors on dim 0 (and shards on dim 1) must give back
    each source expert tensor byte for byte.
ep_check.py shared MNT PLAIN  -- MNT is a mount with -o ep_shared, PLAIN the same source
    mounted with the same slicing but without it (check_view checks PLAIN's rank folders
    against the contract): in every rank folder, each key of PLAIN's NAME.safetensors lies,
    with the same dtype, shape and bytes, in NAME.safetensors (no expert tensor: those are in
    every folder one inode, nlink = the folder count) or in NAME-experts.safetensors (expert
    tensors only, this rank's __metadata__); every other file is one inode with PLAIN's bytes;
    the index names each key's file and the right total_size; nothing else is there.
ep_check.py nodebytes SRC W R1,R2,...  -- print the fewest bytes one node holding those ranks
    needs from a view: their expert slices, and every dense tensor and pass-through file once.
ep_check.py extents SRC W R  -- print "PATH OFFSET LENGTH" of every source byte rank R of W
    reads (its expert slices, every dense tensor, every pass-through file): what a loader that
    read the sources directly would read (make bench's slice readers).
ep_check.py minbytes SRC W R1,R2,... [K S]  -- print the fewest source bytes that reading
    those ranks' views can take: their expert slices, plus, per rank, every dense tensor and
    every pass-through file (the index is generated, headers are synthesized).
"""
import json
import os
import re
import sys

from .contract import HF_EXPERT, NATIVE_SUFFIXES, ep_range
from .reader import DTYPE_SIZE, HIDDEN, read_header, read_tensors

# a view's expert tensor, either naming: its layer and its kind (gate... or down...)
LAYER_EXPERT = re.compile(r"layers\.(\d+)\.mlp\.experts\."
                          r"(gate_up_proj|gate_and_up_projs|down_proj|down_projs)$")


def header(path):
    """Parsed header without __metadata__, and the data section's start."""
    h, n = read_header(path)
    h.pop("__metadata__", None)
    return h, 8 + n


def is_expert(key):
    """One of a layer's two expert tensors, in either naming."""
    return bool(HF_EXPERT.fullmatch(key)) or key.endswith(NATIVE_SUFFIXES)


def shards(src):
    """(relative path, header, data start) of every safetensors file under src."""
    for d, _, files in os.walk(src, followlinks=True):
        for f in sorted(files):
            if f.endswith(".safetensors"):
                p = os.path.join(d, f)
                h, base = header(p)
                yield os.path.relpath(p, src), h, base


def reassemble(src, mnt, w, k):
    """Every expert tensor of src equals its pieces from all ranks (and shards) joined."""
    names = {}
    bad = 0
    for rel, h, base in shards(src):
        for key, t in h.items():
            if not is_expert(key):
                continue
            size = DTYPE_SIZE[t["dtype"]]
            e, d1 = t["shape"][0], t["shape"][1]
            row = size
            for x in t["shape"][2:]:
                row *= x
            with open(os.path.join(src, rel), "rb") as f:
                f.seek(base + t["data_offsets"][0])
                want = f.read(t["data_offsets"][1] - t["data_offsets"][0])
            got = bytearray()
            pieces = {}
            for r in range(w):
                for s in range(k):
                    folder = f"ep-rank-{r}" + (f"-shard-{s}" if k > 1 else "")
                    pieces[(r, s)] = view_tensor(os.path.join(mnt, folder, rel), key, names)
            for r in range(w):
                start, count = ep_range(e, w, r)
                for x in range(count):
                    for s in range(k):
                        p = pieces[(r, s)]
                        part = d1 // k * row
                        got += p[x * part:(x + 1) * part]
            if bytes(got) != want:
                print(f"reassemble: {rel}: {key}: pieces differ from the source", file=sys.stderr)
                bad += 1
    return bad


def view_tensor(path, src_key, names):
    """Bytes of the view tensor that came from src_key (found by layer and kind)."""
    h, base = header(path)
    m = LAYER_EXPERT.search(src_key)
    gate = m.group(2).startswith("gate")
    for key, t in h.items():
        m2 = LAYER_EXPERT.search(key)
        if m2 and m2.group(1) == m.group(1) and m2.group(2).startswith("gate") == gate:
            with open(path, "rb") as f:
                f.seek(base + t["data_offsets"][0])
                return f.read(t["data_offsets"][1] - t["data_offsets"][0])
    raise SystemExit(f"reassemble: {path}: no view tensor for {src_key}")


def shared(mnt, plain):
    """The -o ep_shared layout of mnt against the plain rank folders of plain; mismatch count."""
    folders = sorted(d for d in os.listdir(plain) if d.startswith("ep-rank-"))
    bad = []
    inodes = {}  # name -> its inode numbers across the folders: one wanted
    for fo in folders:
        p, s = os.path.join(plain, fo), os.path.join(mnt, fo)
        want = {HIDDEN}
        index = None
        where = {}  # key -> the file of s that holds it
        for name in sorted(set(os.listdir(p)) - {HIDDEN}):
            pp = os.path.join(p, name)
            if name.endswith(".safetensors.index.json"):
                index = name
                want.add(name)
                continue
            if not name.endswith(".safetensors"):
                want.add(name)
                with open(pp, "rb") as a, open(os.path.join(s, name), "rb") as b:
                    if a.read() != b.read():
                        bad.append(f"{fo}/{name}: bytes differ from the plain view")
                inodes.setdefault(name, set()).add(os.stat(os.path.join(s, name)).st_ino)
                continue
            pmeta, exp = read_tensors(pp)
            got = {}
            for part in (name, name[:-len(".safetensors")] + "-experts.safetensors"):
                sp = os.path.join(s, part)
                if not os.path.exists(sp):
                    continue
                want.add(part)
                meta, t = read_tensors(sp)
                for k, v in t.items():
                    if k in got or k in where:
                        bad.append(f"{fo}/{part}: {k} is in both parts")
                    got[k], where[k] = v, part
                    if is_expert(k) != part.endswith("-experts.safetensors"):
                        bad.append(f"{fo}/{part}: {k} is in the wrong part")
                if part == name:
                    inodes.setdefault(name, set()).add(os.stat(sp).st_ino)
                    if any(m.startswith("qvlmoefs.") for m in (meta or {})):
                        bad.append(f"{fo}/{part}: the shared part names a rank: {meta}")
                elif meta != pmeta:
                    bad.append(f"{fo}/{part}: __metadata__ {meta} != the plain view's {pmeta}")
            if got != exp:
                diff = sorted(set(got) ^ set(exp)) or sorted(k for k in got if got[k] != exp[k])
                bad.append(f"{fo}/{name}: keys or bytes differ from the plain view, e.g. {diff[:3]}")
        extra = set(os.listdir(s)) - want
        if extra:
            bad.append(f"{fo}: extra entries {sorted(extra)}")
        if index:
            with open(os.path.join(s, index)) as f:
                ix = json.load(f)
            with open(os.path.join(p, index)) as f:
                pix = json.load(f)
            if ix["weight_map"] != where:
                bad.append(f"{fo}/{index}: weight_map does not name each key's file")
            if ix.get("metadata") != pix.get("metadata"):
                bad.append(f"{fo}/{index}: metadata {ix.get('metadata')} != {pix.get('metadata')}")
    for name, ino in sorted(inodes.items()):
        if len(ino) != 1:
            bad.append(f"{name}: {len(ino)} inodes across {len(folders)} rank folders, want 1")
        elif os.stat(os.path.join(mnt, folders[0], name)).st_nlink != len(folders):
            bad.append(f"{name}: nlink {os.stat(os.path.join(mnt, folders[0], name)).st_nlink}, "
                       f"want {len(folders)}")
    for line in bad:
        print(f"ep_check shared: {line}", file=sys.stderr)
    return len(bad)


def rank_extents(src, w, r):
    """(path, offset, length) of the source bytes rank r of w needs."""
    for rel, h, base in shards(src):
        p = os.path.join(src, rel)
        for key, t in sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            a, b = t["data_offsets"]
            if is_expert(key):
                e = t["shape"][0]
                start, count = ep_range(e, w, r)
                a, b = a + (b - a) // e * start, a + (b - a) // e * (start + count)
            if b > a:
                yield p, base + a, b - a
    for d, _, files in os.walk(src, followlinks=True):
        for f in sorted(files):
            if not f.endswith((".safetensors", ".safetensors.index.json")) and not f.startswith("."):
                p = os.path.join(d, f)
                yield p, 0, os.path.getsize(p)


def nodebytes(src, w, ranks):
    """Bytes one node holding ranks needs: their expert slices, everything else once."""
    total = 0
    for rel, h, base in shards(src):
        for key, t in h.items():
            n = t["data_offsets"][1] - t["data_offsets"][0]
            total += sum(n // t["shape"][0] * ep_range(t["shape"][0], w, r)[1] for r in ranks) \
                if is_expert(key) else n
    for d, _, files in os.walk(src, followlinks=True):
        for f in files:
            if not f.endswith((".safetensors", ".safetensors.index.json")) and not f.startswith("."):
                total += os.path.getsize(os.path.join(d, f))
    return total


def minbytes(src, w, ranks, k, s):
    """Fewest source bytes for reading the views of ranks (shard s of k)."""
    total = 0
    for rel, h, base in shards(src):
        for key, t in h.items():
            n = t["data_offsets"][1] - t["data_offsets"][0]
            if not is_expert(key):
                total += n * len(ranks)
                continue
            e = t["shape"][0]
            for r in ranks:
                total += n // e * ep_range(e, w, r)[1] // k
    for d, _, files in os.walk(src, followlinks=True):
        for f in files:
            if not f.endswith((".safetensors", ".safetensors.index.json")):
                total += os.path.getsize(os.path.join(d, f)) * len(ranks)
    return total


def main(argv):
    """Command line: argv[0] is the program name, as in sys.argv."""
    if len(argv) >= 4 and argv[1] == "reassemble":
        k = int(argv[5]) if len(argv) > 5 else 1
        bad = reassemble(argv[2], argv[3], int(argv[4]), k)
        print("reassemble: " + ("OK" if not bad else f"{bad} tensors differ"))
        return 1 if bad else 0
    if len(argv) >= 4 and argv[1] == "shared":
        bad = shared(argv[2], argv[3])
        print("shared: " + ("OK" if not bad else f"{bad} mismatches"))
        return 1 if bad else 0
    if len(argv) >= 5 and argv[1] == "nodebytes":
        print(nodebytes(argv[2], int(argv[3]), [int(x) for x in argv[4].split(",")]))
        return 0
    if len(argv) >= 5 and argv[1] == "extents":
        for p, off, n in rank_extents(argv[2], int(argv[3]), int(argv[4])):
            print(f"{p} {off} {n}")
        return 0
    if len(argv) >= 5 and argv[1] == "minbytes":
        k, s = (int(argv[5]), int(argv[6])) if len(argv) > 6 else (1, 0)
        print(minbytes(argv[2], int(argv[3]), [int(x) for x in argv[4].split(",")], k, s))
        return 0
    print(__doc__, file=sys.stderr)
    return 2
