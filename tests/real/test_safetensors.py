"""The official safetensors (PyPI, pinned) reads every kind of view as the contract says.

Each case of VIEWS mounts one view and describes, from the mount options alone, what each of
its folders must hold (st_expect: the SOURCE read with safetensors, names from NeMo Automodel's
Qwen3VLMoeStateDictAdapter, each rank's experts from Automodel's
get_expert_range_for_rank_from_mesh). Each test is one reader:

- safe_open(framework="pt"): file set, key set, __metadata__, every tensor byte for byte;
- safe_open(framework="numpy"): every tensor of a dtype numpy has (the F32 *_scale_inv and U8
  _extra_state tensors the sources carry); numpy has no bfloat16, so BF16 tensors are compared
  by their bytes through torch in the other tests (here only their dtype and shape);
- get_slice on the expert tensors, several slice shapes against the same slice of the expected;
- safetensors.torch.load_file (the Rust reader's mapping of the file) and safetensors.torch.load
  of the bytes read() returns;
- model.safetensors.index.json against what safetensors finds in the files.

Sources carry --scale-inv --extra-state so that every view has tensors numpy can read.
Sharded saves (--sharded-save) are compared with the plain checkpoint the generator makes from
the same options without the sharded-save flags (as tests/integration/test_sharded.py does).
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from safetensors import safe_open

import st_expect as sx
from checkview.reader import DTYPE_SIZE, header_of

MIX = ["--scale-inv", "--extra-state"]
# name: mkckpt arguments (names carry an st- prefix: checkpoints are shared by the session)
SOURCES = {
    "hf": MIX,
    "native": ["--naming", "native"] + MIX,
    "odd": ["--unpadded", "--shuffle-keys", "--no-metadata", "--data-order", "reverse",
            "--shards", "3"] + MIX,
    "noprefix": ["--no-prefix", "--data-order", "name", "--shards", "1"] + MIX,
    "e10": ["--experts", "10", "--shards", "3"] + MIX,
    "e10n": ["--experts", "10", "--naming", "native", "--shards", "3", "--data-order", "reverse"] + MIX,
    "save-w4": ["--sharded-save", "4"] + MIX,
    "save-e10w4k2": ["--experts", "10", "--shards", "3", "--sharded-save", "4", "--save-shard-size", "2",
                     "--dense-split"] + MIX,
    "save-e16w8k2": ["--experts", "16", "--sharded-save", "8", "--save-shard-size", "2",
                     "--dense-split"] + MIX,
}
SAVE_FLAGS = {"--sharded-save": 1, "--save-shard-size": 1, "--dense-split": 0}


@dataclass(frozen=True)
class Case:
    """A view: which source, which -o options (the expectation is derived from them)."""
    src: str
    opts: str = ""


VIEWS = {
    "forward": Case("hf"),
    "forward-odd": Case("odd"),
    "forward-noprefix": Case("noprefix"),
    "reverse": Case("native"),
    "reverse-exclude": Case("native", r"exclude=model\.visual\..*"),
    "identity-hf": Case("hf", "view=hf"),
    "identity-native": Case("native", "view=native"),
    "ranks-w4": Case("hf", "ep_size=4"),
    "ranks-e10-w4": Case("e10", "ep_size=4"),
    "ranks-e10n-w3-hf": Case("e10n", "ep_size=3"),
    "rank-shard-folders": Case("e10", "ep_size=4,ep_shard_size=2"),
    "one-rank": Case("e10", "ep_size=4,ep_rank=3"),
    "one-rank-identity": Case("e10", "view=hf,ep_size=2,ep_rank=1"),
    "one-rank-shard": Case("e10n", "ep_size=4,ep_rank=1,ep_shard_size=2,ep_shard_rank=1"),
    "save": Case("save-w4"),
    "save-native": Case("save-e10w4k2", "view=native"),
    "resharded": Case("save-e16w8k2", "ep_size=3"),
    "resharded-one-rank-native": Case("save-e16w8k2",
                                      "ep_size=4,ep_rank=2,ep_shard_size=2,ep_shard_rank=1,view=native"),
    "direct_io": Case("hf", "direct_io"),
    "direct_io-one-rank-shard": Case("e10", "direct_io,ep_size=4,ep_rank=0,ep_shard_size=2,ep_shard_rank=0"),
    "pread": Case("native", "io=pread"),
    "pread-ranks": Case("e10", "io=pread,ep_size=4"),
    # -o ep_shared: each shard's dense part shared by all rank folders, the experts beside it
    "shared-ranks": Case("e10", "ep_size=4,ep_shared"),
    "shared-ranks-e10n-w3-hf": Case("e10n", "ep_size=3,ep_shared"),
    "shared-rank-shard-folders": Case("e10", "ep_size=2,ep_shard_size=2,ep_shared"),
    "shared-direct_io": Case("hf", "direct_io,ep_size=8,ep_shared"),
}
VIEW_PARAMS = [pytest.param(c, id=name) for name, c in VIEWS.items()]


def source(ckpt, name):
    """(the folder to mount, the plain checkpoint the expectation reads, is a sharded save)."""
    args = SOURCES[name]
    src = ckpt.make(f"st-{name}", *args)
    if "--sharded-save" not in args:
        return src, src, False
    plain, skip = [], 0
    for a in args:
        if skip:
            skip -= 1
        elif a in SAVE_FLAGS:
            skip = SAVE_FLAGS[a]
        else:
            plain.append(a)
    return src, ckpt.make(f"st-{name}-plain", *plain), True


def shared_layout(exp):
    """The folder exp in the -o ep_shared layout: NAME.safetensors keeps the tensors every rank
    has alike (its __metadata__ without the rank's qvlmoefs.* entries), NAME-experts.safetensors
    the rank's expert tensors (with them); a part with no tensor is not there."""
    files = {}
    for rel, (meta, tensors) in exp.files.items():
        dense = {k: t for k, t in tensors.items() if not sx.view_expert(k)}
        experts = {k: t for k, t in tensors.items() if sx.view_expert(k)}
        if dense:
            files[rel] = ({k: v for k, v in (meta or {}).items() if not k.startswith("qvlmoefs.")}
                          or None, dense)
        if experts:
            files[rel.removesuffix(".safetensors") + "-experts.safetensors"] = (meta, experts)
    return sx.Expected(exp.where, files, exp.has_index, exp.index_meta)


def expectations(ref, opts, sharded):
    """[(folder below the mount, st_expect.Expected)] that -o opts must give, per DESIGN.md §2."""
    o = dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in opts.split(",") if kv)
    view, exclude = o.get("view"), o.get("exclude", sx.DEFAULT_EXCLUDE)
    if "ep_size" not in o:
        return [("", sx.expect(ref, view, exclude, None, "root", sharded))]
    w, k = int(o["ep_size"]), int(o.get("ep_shard_size", 1))
    if "ep_rank" in o:
        sl = (w, int(o["ep_rank"]), k, int(o.get("ep_shard_rank", 0)))
        return [("", sx.expect(ref, view, exclude, sl, f"root (rank {sl[1]})", sharded))]
    out = []
    for r in range(w):
        for s in range(k):
            folder = f"ep-rank-{r}" + (f"-shard-{s}" if k > 1 else "")
            e = sx.expect(ref, view, exclude, (w, r, k, s), folder, sharded)
            out.append((folder, shared_layout(e) if "ep_shared" in o else e))
    return out


@pytest.fixture
def view(request, ckpt, mount):
    """[(folder Path in the mounted view, Expected)] for the case the test is parametrized with."""
    case = request.param
    src, ref, sharded = source(ckpt, case.src)
    m = mount(src, None, *(["-o", case.opts] if case.opts else []))
    exp = expectations(ref, case.opts, sharded)
    want_dirs = sorted(f for f, _ in exp if f)
    got_dirs = sorted(n for n in os.listdir(m) if n.startswith("ep-rank-"))
    assert got_dirs == want_dirs, f"rank folders: {got_dirs}, expected {want_dirs}"
    return [(m / f if f else m, e) for f, e in exp]


def st_files(folder):
    """The *.safetensors files a loader globbing the folder sees, relative to it."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.safetensors")
                  if ".qvlmoefs" not in p.parts)


def check(folders, per_file, what):
    """Run per_file(path, expected metadata, expected tensors, where) -> [errors] over every
    virtual file of every folder, after checking the file set; assert no errors."""
    __tracebackhide__ = True
    errs = []
    for folder, exp in folders:
        got, want = st_files(folder), sorted(exp.files)
        if got != want:
            errs.append(f"{exp.where}: safetensors files {got}, expected {want}")
        for rel in sorted(set(got) & set(want)):
            meta, tensors = exp.files[rel]
            errs += per_file(folder / rel, meta, tensors, f"{exp.where}/{rel}")
    if errs:
        pytest.fail(sx.report(errs, what), pytrace=False)


# ---------------------------------------------------------------- the readers

@pytest.mark.parametrize("view", VIEW_PARAMS, indirect=True)
def test_safe_open_torch(view):
    """safe_open(framework="pt"): every file holds exactly the expected keys, __metadata__ and
    tensors (dtype, shape, bytes) of the source cut as the contract says."""
    def per_file(path, meta, tensors, where):
        with safe_open(str(path), framework="pt") as f:
            errs = [] if f.metadata() == meta else \
                [f"{where}: __metadata__ {sx.dict_diff(f.metadata() or {}, meta)}"]
            got = {k: f.get_tensor(k) for k in f.keys()}
        return errs + sx.compare_dicts(got, tensors, where)
    check(view, per_file, "safe_open(pt)")


@pytest.mark.parametrize("view", VIEW_PARAMS, indirect=True)
def test_safe_open_numpy(view):
    """safe_open(framework="numpy") returns every non-BF16 tensor equal to the expected one;
    BF16 tensors, which numpy cannot hold, show the expected dtype and shape."""
    counted = [0]

    def per_file(path, meta, tensors, where):
        errs = []
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            if keys != set(tensors):
                return [f"{where}: keys {sorted(keys ^ set(tensors))[:8]} differ from the expected"]
            for k, want in tensors.items():
                sl = f.get_slice(k)
                dt = str(want.dtype).removeprefix("torch.")
                if want.dtype == torch.bfloat16:
                    if (sl.get_dtype(), sl.get_shape()) != ("BF16", list(want.shape)):
                        errs.append(f"{where}: {k}: {sl.get_dtype()} {sl.get_shape()}, "
                                    f"expected BF16 {list(want.shape)}")
                    continue
                got = f.get_tensor(k)
                counted[0] += 1
                exp = want.numpy()
                if got.dtype != exp.dtype or got.shape != exp.shape or \
                        got.tobytes() != exp.tobytes():
                    errs.append(f"{where}: {k}: numpy {got.dtype} {list(got.shape)} differs from "
                                f"the expected {dt} {list(want.shape)}")
        return errs
    check(view, per_file, "safe_open(numpy)")
    assert counted[0] > 0, "no tensor of this view has a dtype numpy knows: the case proves nothing"


SLICES = {  # id: index applied to get_slice(k) and to the expected tensor alike
    "all": (slice(None),),
    "first": (slice(0, 1),),
    "last": (slice(-1, None),),
    "middle": (slice(1, 3),),
    "step2": (slice(None, None, 2),),
    "one": (1,),
    "inner": (slice(None), slice(2, 9), slice(None, 4)),
    "ellipsis": (Ellipsis, slice(3, 5)),
}


@pytest.mark.parametrize("view", VIEW_PARAMS, indirect=True)
def test_get_slice_experts(view):
    """get_slice on each expert tensor: shape, dtype, and several slices (first/last expert,
    a run, every other expert, one expert, an inner block, the last dim) equal the same slice
    of the expected tensor."""
    n = [0]

    def per_file(path, meta, tensors, where):
        errs = []
        with safe_open(str(path), framework="pt") as f:
            for k, want in tensors.items():
                if not sx.view_expert(k) or k not in f.keys():
                    continue
                n[0] += 1
                sl = f.get_slice(k)
                if (sl.get_dtype(), sl.get_shape()) != ("BF16", list(want.shape)):
                    errs.append(f"{where}: {k}: get_slice says {sl.get_dtype()} {sl.get_shape()}, "
                                f"expected BF16 {list(want.shape)}")
                    continue
                bad = []
                for name, idx in SLICES.items():
                    if isinstance(idx[0], int) and want.shape[0] <= idx[0]:
                        continue
                    e = sx.differ(sl[idx], want[idx], f"[{name}]")
                    if e:
                        bad.append(e)
                if bad:
                    errs.append(f"{where}: {k}: {len(bad)} of {len(SLICES)} slices differ, the "
                                f"first {bad[0]}")
        return errs
    check(view, per_file, "get_slice")
    assert n[0] > 0, "no expert tensor in this view"


@pytest.mark.parametrize("view", VIEW_PARAMS, indirect=True)
def test_load_file(view):
    """safetensors.torch.load_file gives exactly the expected state dict of every file."""
    check(view, lambda p, m, t, w: sx.compare_dicts(safetensors.torch.load_file(str(p)), t, w),
          "load_file")


@pytest.mark.parametrize("view", VIEW_PARAMS, indirect=True)
def test_load_bytes(view):
    """safetensors.torch.load of the bytes read() returns gives the expected state dict, and
    the file is exactly 8 + header + data bytes long (nothing after the last tensor)."""
    def per_file(path, meta, tensors, where):
        data = Path(path).read_bytes()
        errs = [] if len(data) == os.path.getsize(path) else \
            [f"{where}: read() gave {len(data)} bytes, st_size {os.path.getsize(path)}"]
        hdr, n = header_of(data)
        end = max((v["data_offsets"][1] for k, v in hdr.items() if k != "__metadata__"), default=0)
        if 8 + n + end != len(data):
            errs.append(f"{where}: 8 + header {n} + data {end} != file size {len(data)}")
        return errs + sx.compare_dicts(safetensors.torch.load(data), tensors, where)
    check(view, per_file, "safetensors.torch.load(bytes)")


@pytest.mark.parametrize("view", VIEW_PARAMS, indirect=True)
def test_index_json(view):
    """model.safetensors.index.json: weight_map names, for every key, the file safetensors finds
    it in, and every key of every file is named (as the expectation says); total_size is the sum
    of the tensor bytes safetensors reports; the source index's other metadata is kept."""
    errs = []
    for folder, exp in view:
        idx_path = folder / sx.INDEX
        if not exp.has_index:
            if idx_path.exists():
                errs.append(f"{exp.where}: an index although the source has none")
            continue
        if not idx_path.is_file():
            errs.append(f"{exp.where}: no {sx.INDEX}")
            continue
        idx = json.loads(idx_path.read_text())
        wm, found, size = idx.get("weight_map", {}), {}, 0
        for rel in st_files(folder):
            with safe_open(str(folder / rel), framework="pt") as f:
                for k in f.keys():
                    found[k] = rel
                    sl = f.get_slice(k)
                    size += int(np.prod(sl.get_shape(), dtype=np.int64)) * DTYPE_SIZE[sl.get_dtype()]
        for k in sorted(set(wm) - set(found)):
            errs.append(f"{exp.where}: weight_map names {k} ({wm[k]}), which no file holds")
        for k in sorted(set(found) - set(wm)):
            errs.append(f"{exp.where}: {k} (in {found[k]}) is not in weight_map")
        for k in sorted(set(wm) & set(found)):
            if wm[k] != found[k]:
                errs.append(f"{exp.where}: weight_map says {k} is in {wm[k]}, "
                            f"safetensors finds it in {found[k]}")
        want = exp.weight_map()
        if wm != want:
            errs.append(f"{exp.where}: weight_map differs from the expected one in "
                        f"{len(set(wm.items()) ^ set(want.items()))} "
                        f"entries: only in the view {sorted(set(wm.items()) - set(want.items()))[:4]}, "
                        f"only expected {sorted(set(want.items()) - set(wm.items()))[:4]}")
        meta = dict(idx.get("metadata", {}))
        total = meta.pop("total_size", None)
        if total != size or total != exp.total_size():
            errs.append(f"{exp.where}: total_size {total}, safetensors counts {size}, "
                        f"expected {exp.total_size()}")
        if meta != exp.index_meta:
            errs.append(f"{exp.where}: index metadata {meta}, expected {exp.index_meta}")
    if errs:
        pytest.fail(sx.report(errs, "index.json"), pytrace=False)


# ---------------------------------------------------------------- the expectation itself

@pytest.mark.parametrize("n,w", [(8, 4), (10, 4), (10, 3), (16, 3), (16, 4), (128, 32), (7, 7)])
def test_ep_range_is_automodels(n, w):
    """The expert ranges the expectations use are Automodel's own (get_expert_range_for_rank_
    from_mesh), and the project's checker (tests/checkview, DESIGN.md §1's formula, which
    tests/integration and check_view.py hold the views to) agrees with them on every rank;
    the ranges also tile [0, n) in rank order."""
    from checkview.contract import ep_range as formula
    got = [formula(n, w, r) for r in range(w)]
    want = [sx.ep_range(n, w, r) for r in range(w)]
    assert got == want, f"n={n} W={w}: formula {got}, Automodel {want}"
    assert [s for s, _ in want] == [sum(c for _, c in want[:r]) for r in range(w)], want
    assert sum(c for _, c in want) == n, want
