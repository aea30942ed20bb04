"""The naming and slicing contract (DESIGN.md §1-§2), written independently of the C code.

Key renaming in both directions, what a view drops, expert-parallel ranges and cuts, and the
plan: for every source shard, the virtual file's metadata and tensor list it must show.
"""
import math
import re

from .reader import DTYPE_SIZE, Fatal, read_source_header

# The one definition of the test suites (ep.py, tests/integration and tests/real import these):
# an HF expert tensor's name (group 2: the layer, group 3: the kind) and the native suffixes.
HF_EXPERT = re.compile(r"(model\.)?language_model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")
NATIVE_SUFFIXES = (".mlp.experts.gate_and_up_projs", ".mlp.experts.down_projs")


def is_expert(key, naming):
    """True for the expert tensors that slicing cuts, in the source's naming."""
    return bool(HF_EXPERT.fullmatch(key)) if naming == "hf" else key.endswith(NATIVE_SUFFIXES)


def rename(key, src_naming, view_naming, prefix, exclude):
    """Virtual name of a source key, or None when the view leaves it out."""
    if src_naming == view_naming:
        return key
    if view_naming == "native":  # from_hf
        m = HF_EXPERT.fullmatch(key)
        if m:
            part = "gate_and_up_projs" if m.group(3) == "gate_up_proj" else "down_projs"
            return f"{prefix}language_model.layers.{m.group(2)}.mlp.experts.{part}"
        if key.endswith("_scale_inv"):
            return None
        return key if key.startswith(("model.", "lm_head.")) else prefix + key
    if ".mlp.experts.gate_and_up_projs" in key:  # to_hf
        key = key.replace(".mlp.experts.gate_and_up_projs", ".mlp.experts.gate_up_proj")
    elif ".mlp.experts.down_projs" in key:
        key = key.replace(".mlp.experts.down_projs", ".mlp.experts.down_proj")
    return None if exclude.match(key) else key


def ep_range(n, w, r):
    """(start, count) of EP rank r's experts out of n: DESIGN.md §1's formula, Automodel's split
    (q = n // w each, the first n % w ranks one more). The one definition of the test suites;
    tests/real checks it against Automodel's get_expert_range_for_rank_from_mesh."""
    q, m = divmod(n, w)
    return r * q + min(r, m), q + (1 if r < m else 0)


def slice_extents(shape, esize, base, sl, where):
    """Sliced shape and source extents [(offset, length)] of an expert tensor at base."""
    w, r, k, s = sl
    if len(shape) < (2 if k > 1 else 1):
        raise Fatal(f"{where}: expert tensor of shape {shape} cannot be sliced")
    row = math.prod(shape[1:]) * esize
    start, count = ep_range(shape[0], w, r)
    if k <= 1:
        return [count] + shape[1:], [(base + start * row, count * row)]
    if shape[1] % k:
        raise Fatal(f"{where}: dim 1 ({shape[1]}) is not a multiple of ep_shard_size {k}")
    part, inner = shape[1] // k, math.prod(shape[2:]) * esize
    exts = [(base + e * row + s * part * inner, part * inner) for e in range(start, start + count)]
    return [count, part] + shape[2:], exts


def slice_meta(sl, n):
    """The qvlmoefs.* metadata entries a sliced virtual shard must hold."""
    w, r, k, s = sl
    meta = {"qvlmoefs.ep_size": str(w), "qvlmoefs.ep_rank": str(r)}
    if n is not None:
        start, count = ep_range(n, w, r)
        meta.update({"qvlmoefs.expert_start": str(start), "qvlmoefs.expert_end": str(start + count)})
    if k > 1:
        meta.update({"qvlmoefs.ep_shard_size": str(k), "qvlmoefs.ep_shard_rank": str(s)})
    return meta


def build_plan(entries, args):
    """Parse every source shard; compute each virtual file's metadata and tensor list."""
    shards = {rel: {"src": read_source_header(path, rel)}
              for rel, kind, path, _ in entries if kind == "file" and rel.endswith(".safetensors")}
    for rel, sh in shards.items():
        if "DCP_SHARDING_INFO" in sh["src"][0]:
            raise Fatal(f"{rel}: Automodel sharded saves (DCP_SHARDING_INFO) are not supported")
    keys = [t[0] for sh in shards.values() for t in sh["src"][1]]
    src_naming = "native" if any(k.endswith(NATIVE_SUFFIXES) for k in keys) else "hf"
    view_naming = args.naming or ("hf" if src_naming == "native" else "native")
    prefix = "model." if any(k.startswith("model.") for k in keys) else ""
    exclude = re.compile(args.exclude)
    sl = (args.ep_size, args.ep_rank, args.ep_shard_size or 1, args.ep_shard_rank or 0) \
        if args.ep_size else None
    first_n = next((t[2][0] for rel in sorted(shards) for t in shards[rel]["src"][1]
                    if is_expert(t[0], src_naming) and t[2]), None)
    for rel, sh in shards.items():
        meta, tensors, data_start = sh["src"]
        vmeta = dict(meta)
        vmeta.setdefault("format", "pt")
        if sl:
            vmeta.update(slice_meta(sl, first_n))
        expected = []
        for name, dtype, shape, b, e in tensors:
            vname = rename(name, src_naming, view_naming, prefix, exclude)
            if vname is None:
                continue
            if sl and is_expert(name, src_naming):
                vshape, exts = slice_extents(shape, DTYPE_SIZE[dtype], data_start + b, sl,
                                             f"{rel}: {name}")
            else:
                vshape, exts = shape, [(data_start + b, e - b)]
            expected.append((vname, dtype, vshape, exts))
        sh["vmeta"], sh["expected"] = vmeta, expected
    return shards
