"""The checker's self-test: hand-built correct views must pass and each corruption must fail.

The fixtures are written with plain loops (hand_cut) rather than the contract module, so a
bug there cannot hide itself.
"""
import hashlib
import json
import math
import os
import struct
import tempfile

from .cli import parse_args
from .contract import ep_range
from .reader import DTYPE_SIZE, INDEX_NAME, Fatal
from .verify import Report, check

E, H, I = 10, 6, 4
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
L0, L1 = "model.language_model.layers.0.", "language_model.layers.1."
# id: (HF name, native name, dtype, shape)
T = {"emb": ("model.language_model.embed_tokens.weight", None, "BF16", [12, H]),
     "gu0": (L0 + "mlp.experts.gate_up_proj", L0 + "mlp.experts.gate_and_up_projs", "BF16", [E, H, 2 * I]),
     "si": (L0 + "self_attn.q_proj.weight_scale_inv", None, "F32", [2, 2]),
     "dn0": (L0 + "mlp.experts.down_proj", L0 + "mlp.experts.down_projs", "BF16", [E, I, H]),
     "gate": (L0 + "mlp.gate.weight", None, "BF16", [E, H]),
     "lm": ("lm_head.weight", None, "BF16", [12, H]),
     "gu1": (L1 + "mlp.experts.gate_up_proj", "model." + L1 + "mlp.experts.gate_and_up_projs", "BF16", [E, H, 2 * I]),
     "dn1": (L1 + "mlp.experts.down_proj", "model." + L1 + "mlp.experts.down_projs", "BF16", [E, I, H]),
     "vb": ("visual.patch_embed.proj.bias", "model.visual.patch_embed.proj.bias", "F32", [5]),
     "xs": (None, L0 + "self_attn.core_attention._extra_state", "U8", [5])}
HF = {k: v[0] for k, v in T.items()}
NATIVE = {k: v[1] or v[0] for k, v in T.items()}
HF_BACK = dict(HF, gu1="model." + L1 + "mlp.experts.gate_up_proj",
               dn1="model." + L1 + "mlp.experts.down_proj", vb="model.visual.patch_embed.proj.bias")
EXPERTS = {"gu0", "dn0", "gu1", "dn1"}
FILES = {"config.json": b'{"model_type": "qwen3_vl_moe"}\n', "tokenizer/vocab.txt": b"a\nb\n"}


def pattern(n, seed):
    """Deterministic pseudo-random bytes for fixtures."""
    out, i = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def st_bytes(meta, tensors, meta_first=True, sep=(",", ":"), sort_json=False, misalign=False, dup=False):
    """Serialize a safetensors file; tensors are (name, dtype, shape, data) in data order."""
    items, off = [], 0
    for name, dtype, shape, data in tensors:
        items.append((name, {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}))
        off += len(data)
    if sort_json:
        items.sort()
    if meta is not None:
        items.insert(0 if meta_first else len(items), ("__metadata__", meta))
    text = json.dumps(dict(items), separators=sep, ensure_ascii=False)
    if dup:
        text = text[:-1] + "," + json.dumps(dict(items[-1:]), separators=sep)[1:]
    enc = text.encode()
    pad = (-(8 + len(enc))) % 8
    enc += b" " * ((pad + 4) % 8 if misalign else pad)
    return struct.pack("<Q", len(enc)) + enc + b"".join(t[3] for t in tensors)


def hand_cut(data, shape, start, count, k=1, s=0):
    """Slice BF16 expert bytes with plain loops: experts [start, start+count), dim-1 part s of k."""
    rowlen, part = math.prod(shape[2:]) * 2, shape[1] // k
    out = bytearray()
    for e in range(start, start + count):
        for j in range(s * part, (s + 1) * part):
            o = (e * shape[1] + j) * rowlen
            out += data[o:o + rowlen]
    return bytes(out), [count, part] + shape[2:]


def build(layout, names, files, cut=None, meta_extra=None, index_edit=None):
    """Files of a checkpoint or view as {rel: bytes}; layout is [(rel, ids, meta, opts)]."""
    out, wm, total = dict(files), {}, 0
    for rel, ids, meta, opts in layout:
        tensors = []
        for i in ids:
            dtype, shape = T[i][2], T[i][3]
            data = pattern(math.prod(shape) * DTYPE_SIZE[dtype], i)
            if cut and i in EXPERTS:
                data, shape = hand_cut(data, shape, *cut)
            tensors.append((names[i], dtype, shape, data))
            wm[names[i]], total = rel, total + len(data)
        if meta is not None and meta_extra:
            meta = dict(meta, **meta_extra)
        out[rel] = st_bytes(meta, tensors, **opts)
    idx = {"metadata": {"total_size": total, "extra": "keep-me"}, "weight_map": wm}
    if index_edit:
        index_edit(idx)
    out[INDEX_NAME] = json.dumps(idx, indent=2).encode()
    return out


def write_tree(root, files, links=(), readonly=True, writable=()):
    """Write {rel: bytes} and symlinks under root; then drop write bits except on writable."""
    os.makedirs(root, exist_ok=True)
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    for rel, target in links:
        os.symlink(target, os.path.join(root, rel))
    for d, _, names in os.walk(root, topdown=False) if readonly else ():
        for name in names:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                os.chmod(p, 0o644 if os.path.relpath(p, root) in writable else 0o444)
        os.chmod(d, 0o555)


def make_hf_source(tmp):
    """An HF cache snapshot: blob links, an inside link, an escaping link, a dangling link, a FIFO."""
    repo = os.path.join(tmp, "models--org--tiny")
    snap = os.path.join(repo, "snapshots", "rev1")
    layout = [(SHARD1, ["emb", "gu0", "si", "dn0", "gate"], {"format": "pt", "note": "src"},
               {"sort_json": True}),
              (SHARD2, ["lm", "gu1", "dn1", "vb"], None, {"misalign": True})]
    files, links = build(layout, HF, FILES), []
    for rel in ("config.json", SHARD2):
        data = files.pop(rel)
        blob = hashlib.sha256(data).hexdigest()
        write_tree(os.path.join(repo, "blobs"), {blob: data}, readonly=False)
        links.append((rel, "../../blobs/" + blob))
    write_tree(tmp, {"outside.txt": b"outside\n"}, readonly=False)
    links += [("link_inside.json", "config.json"), ("escape.txt", os.path.join(tmp, "outside.txt")),
              ("broken", "missing-target")]
    write_tree(snap, files, links, readonly=False)
    os.mkfifo(os.path.join(snap, "pipe"))
    return snap


def native_view(s1=None, s2=None, o1=None, o2=None, m2=None, names=NATIVE, **kw):
    """The hand-written native view of the HF source, with optional deviations."""
    layout = [(SHARD1, s1 or ["emb", "gu0", "dn0", "gate"], {"format": "pt", "note": "src"}, o1 or {}),
              (SHARD2, s2 or ["lm", "gu1", "dn1", "vb"], {"format": "pt"} if m2 is None else m2, o2 or {})]
    return build(layout, names, dict(FILES, **{"link_inside.json": FILES["config.json"]}), **kw)


def edited(files, **changes):
    """A copy of files with some entries replaced (None deletes)."""
    out = dict(files)
    for rel, data in changes.items():
        if data is None:
            out.pop(rel)
        else:
            out[rel] = data
    return out


def flip(data, pos):
    """data with one byte inverted."""
    b = bytearray(data)
    b[pos] ^= 0xFF
    return bytes(b)


def selftest():
    """Check that hand-built correct views pass and that each corruption is detected."""
    passed = failed = 0
    if [ep_range(10, 4, r) for r in range(4)] != [(0, 3), (3, 3), (6, 2), (8, 2)]:
        print("selftest: FAIL ep_range(10, 4, r) != 3,3,2,2 split")
        failed += 1
    with tempfile.TemporaryDirectory(prefix="check_view_selftest.") as tmp:
        src = make_hf_source(tmp)
        nsrc = os.path.join(tmp, "native_src")
        write_tree(nsrc, build([(SHARD1, ["emb", "gu0", "xs", "dn0", "gate"], {"format": "pt"}, {}),
                                (SHARD2, ["lm", "gu1", "dn1", "vb"], {"format": "pt"}, {})],
                               NATIVE, FILES), readonly=False)
        r3 = {"qvlmoefs.ep_size": "4", "qvlmoefs.ep_rank": "3",
              "qvlmoefs.expert_start": "8", "qvlmoefs.expert_end": "10"}
        k2 = dict(r3, **{"qvlmoefs.ep_shard_size": "2", "qvlmoefs.ep_shard_rank": "1"})
        W4, K2 = ["--ep-size", "4", "--ep-rank", "3"], ["--ep-shard-size", "2", "--ep-shard-rank", "1"]
        good = native_view()

        def bad_index(fn):
            """The good native view with its index edited by fn."""
            return native_view(index_edit=fn)
        hf_back = [(SHARD1, ["emb", "gu0", "dn0", "gate"], {"format": "pt"}, {}),
                   (SHARD2, ["lm", "gu1", "dn1", "vb"], {"format": "pt"}, {})]
        cases = [  # (name, source, view files, extra args, None or a text the failure must show, opts)
            ("native view", src, good, [], None, {}),
            ("native view ep 4/3", src, native_view(cut=(8, 2), meta_extra=r3), W4, None, {}),
            ("native view ep 4/3 shard 2/1", src, native_view(cut=(8, 2, 2, 1), meta_extra=k2), W4 + K2, None, {}),
            ("hf view of native source", nsrc, build(hf_back, HF_BACK, FILES), [], None, {}),
            ("tensor byte flipped", src, edited(good, **{SHARD1: flip(good[SHARD1], -5)}), [],
             "gate.weight: bytes differ from the source at tensor offset 115", {}),
            ("__metadata__ not first", src, native_view(o1={"meta_first": False}), [], "not the first key", {}),
            ("header not compact", src, native_view(o1={"sep": (", ", ": ")}), [], "not compact", {}),
            ("8+N not a multiple of 8", src, native_view(o2={"misalign": True}), [], "not a multiple of 8", {}),
            ("format missing", src, native_view(m2={}), [], "lacks 'format'", {}),
            ("duplicate header key", src, native_view(o2={"dup": True}), [], "duplicate key", {}),
            ("tensors out of data order", src, native_view(s2=["lm", "dn1", "gu1", "vb"]), [],
             "tensor order differs", {}),
            ("_scale_inv kept", src, native_view(s1=["emb", "gu0", "si", "dn0", "gate"],
                                                 names=dict(NATIVE, si=HF["si"])), [], "unexpected tensor", {}),
            ("trailing byte", src, edited(good, **{SHARD2: good[SHARD2] + b"\0"}), [], "file size", {}),
            ("index entry names the wrong file", src,
             bad_index(lambda x: x["weight_map"].update({NATIVE["emb"]: SHARD2})), [], "weight_map[", {}),
            ("index total_size off by one", src,
             bad_index(lambda x: x["metadata"].update(total_size=x["metadata"]["total_size"] + 1)), [],
             "total_size", {}),
            ("index metadata entry lost", src, bad_index(lambda x: x["metadata"].pop("extra")), [],
             "metadata['extra']", {}),
            ("index names .qvlmoefs", src,
             bad_index(lambda x: x["metadata"].update(raw=".qvlmoefs/raw")), [], "names a .qvlmoefs", {}),
            ("config.json changed", src, edited(good, **{"config.json": b"{}\n"}), [], "config.json: size", {}),
            ("extra file", src, edited(good, **{"extra.txt": b"x"}), [], "extra entry", {}),
            ("missing nested file", src, edited(good, **{"tokenizer/vocab.txt": None}), [],
             "vocab.txt: missing", {}),
            ("write bit", src, good, [], "has write bits", {"writable": ["config.json"]}),
            ("escaping symlink shown", src, edited(good, **{"escape.txt": b"outside\n"}), [],
             "must be absent", {}),
            ("symlink leaving the view", src, edited(good, **{"config.json": None}), [], "leaving the view",
             {"links": [("config.json", os.path.join(src, "config.json"))]}),
            ("ep 4/3 wrong experts", src, native_view(cut=(7, 2), meta_extra=r3), W4, "bytes differ", {}),
            ("ep 4/3 wrong expert_start", src,
             native_view(cut=(8, 2), meta_extra=dict(r3, **{"qvlmoefs.expert_start": "7"})), W4,
             "expert_start'] is '7'", {}),
            ("shard 2/1 given shard 0 bytes", src, native_view(cut=(8, 2, 2, 0), meta_extra=k2), W4 + K2,
             "gate_and_up_projs: bytes differ", {}),
            ("unsliced view checked as ep 4/3", src, good, W4, "expected BF16 [2, 6, 8]", {}),
            ("hf view keeps _extra_state", nsrc,
             build([(SHARD1, ["emb", "gu0", "xs", "dn0", "gate"], {"format": "pt"}, {})] + hf_back[1:],
                   dict(HF_BACK, xs=NATIVE["xs"]), FILES), [], "unexpected tensor " + NATIVE["xs"], {}),
        ]
        for n, (name, source, files, extra, expect, opt) in enumerate(cases):
            view = os.path.join(tmp, f"view{n}")
            if "tokenizer/vocab.txt" not in files:
                os.makedirs(os.path.join(view, "tokenizer"))
            write_tree(view, files, opt.get("links", ()), writable=opt.get("writable", ()))
            rep = Report(quiet=True)
            try:
                check(source, view, parse_args([source, view] + extra), rep)
            except Fatal as e:
                rep.errors.append(f"error: {e}")
            hit = [e for e in rep.errors if expect and expect in e]
            ok = not rep.errors if expect is None else bool(hit)
            passed, failed = passed + ok, failed + (not ok)
            shown = (hit or rep.errors or ["no mismatch"])[0]
            print(f"selftest: {'PASS' if ok else 'FAIL'} {name} (should {'fail' if expect else 'pass'}): {shown}")
    print(f"selftest: {passed} passed, {failed} failed")
    return 1 if failed else 0
