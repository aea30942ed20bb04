"""Automodel sharded saves (DCP: shard-NNNNN-model-*.safetensors, one file per saving rank).

A sharded save mounts as the consolidated checkpoint it came from: the view must equal the
plain checkpoint that qvlmoefs-mkckpt generates from the same arguments without the sharded-
save flags, in both namings and re-sliced for any expert-parallel size; a save whose ranks do
not cover every tensor exactly once must refuse to mount with a message that says what is
wrong.
"""
import json
import re
import shutil
import struct
import subprocess

import pytest

from checkview.contract import ep_range
from checkview.reader import header_of, read_tensors
from helpers import MK, QV, check_view, run, single_line
from support_daemon import one_line

# (name, mkckpt flags of the plain checkpoint, mkckpt flags of the sharded save)
LAYOUTS = [
    ("w1", [], ["--sharded-save", "1"]),
    ("w4", [], ["--sharded-save", "4"]),
    ("w8k2", [], ["--sharded-save", "8", "--save-shard-size", "2"]),
    ("e10w4", ["--experts", "10"], ["--experts", "10", "--sharded-save", "4", "--dense-split"]),
    ("w3", ["--shards", "3"], ["--sharded-save", "3", "--shards", "3", "--dense-split"]),
]
VIEWS = [((), "hf"), (("-o", "view=native"), "native")]


@pytest.mark.parametrize("opts,view", VIEWS, ids=[v for _, v in VIEWS])
@pytest.mark.parametrize("name,plain,sharded", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_dcp_consolidated_equals_original(mount, ckpt, name, plain, sharded, opts, view):
    """Each sharded layout mounts as the original checkpoint, in the HF and native view."""
    ref = ckpt.make(f"dcp-{name}-hf", *plain)
    src = ckpt.make(f"dcp-{name}", *sharded)
    m = mount(src, None, *opts)
    check_view(ref, m, "--view", view)


R16 = {"r16-w8": ["--experts", "16", "--sharded-save", "8"],
       "r16-w8k2": ["--experts", "16", "--sharded-save", "8", "--save-shard-size", "2",
                    "--dense-split"]}


@pytest.mark.parametrize("ep_size", [4, 16, 3])
@pytest.mark.parametrize("layout", list(R16))
def test_dcp_resharded_rank_views(mount, ckpt, layout, ep_size):
    """A save made by 8 ranks re-slices to any other expert-parallel size (first, last rank)."""
    ref = ckpt.make("r16-hf", "--experts", "16")
    src = ckpt.make(layout, *R16[layout])
    m = mount(src, None, "-o", f"ep_size={ep_size}")
    for r in (0, ep_size - 1):
        check_view(ref, m / f"ep-rank-{r}", "--view", "hf", "--ep-size", ep_size, "--ep-rank", r)


@pytest.mark.parametrize("layout", list(R16))
def test_dcp_resharded_single_rank_native(mount, ckpt, layout):
    """One rank and one dim-1 shard of a sharded save, in the native view."""
    ref = ckpt.make("r16-hf", "--experts", "16")
    src = ckpt.make(layout, *R16[layout])
    m = mount(src, None, "-o", "ep_size=2,ep_rank=1,ep_shard_size=2,ep_shard_rank=0,view=native")
    check_view(ref, m, "--view", "native", "--ep-size", 2, "--ep-rank", 1,
               "--ep-shard-size", 2, "--ep-shard-rank", 0)


# ---------------------------------------------------------------------------- coverage errors


def _rank_file(folder, r, dtype, size, at=None):
    """Write a one-tensor ("w", 2 elements) rank file of a hand-made sharded save."""
    info = json.dumps({"w": {"saved_offsets": [r * 2 if at is None else at]}})
    h = json.dumps({"__metadata__": {"format": "pt", "DCP_SHARDING_INFO": info},
                    "w": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2 * size]}}).encode()
    h += b" " * (-(8 + len(h)) % 8)
    (folder / f"shard-{r + 1:05}-model-00001-of-00001.safetensors").write_bytes(
        struct.pack("<Q", len(h)) + h + b"\0" * 2 * size)


def hole(ckpt, tmp):
    """Rank 1 of 4 missing."""
    return ckpt.make("dcp-hole", "--sharded-save", "4", "--sharded-drop-rank", "1")


def tail(ckpt, tmp):
    """The last rank of 4 missing: the chunks end early."""
    return ckpt.make("dcp-tail", "--sharded-save", "4", "--sharded-drop-rank", "3")


def _tail_config_named(ckpt, tmp, key, nested):
    """tail, with config.json's expert count under another name writers use (transformers 5
    writes num_local_experts in text_config), at the top level or in text_config."""
    d = tmp / f"dcp-tail-{key}-{'text' if nested else 'top'}"
    shutil.copytree(tail(ckpt, tmp), d)
    cfg_path = d / ".hf_metadata" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    n = cfg.get("num_experts", cfg.get("text_config", {}).get("num_experts"))
    assert n, "the generator's config names no expert count"
    cfg.pop("num_experts", None)
    cfg.get("text_config", {}).pop("num_experts", None)
    (cfg.setdefault("text_config", {}) if nested else cfg)[key] = n
    cfg_path.write_text(json.dumps(cfg))
    return d


def tail_local_experts(ckpt, tmp):
    """The last rank missing; text_config.num_local_experts (transformers 5)."""
    return _tail_config_named(ckpt, tmp, "num_local_experts", True)


def tail_routed_experts(ckpt, tmp):
    """The last rank missing; a top-level n_routed_experts (DeepSeek-style configs)."""
    return _tail_config_named(ckpt, tmp, "n_routed_experts", False)


def duplicate(ckpt, tmp):
    """The last rank missing and rank 3's file copied in its place: chunks overlap."""
    d = tmp / "dcp-dup"
    shutil.copytree(tail(ckpt, tmp), d)
    shutil.copy(d / "shard-00003-model-00001-of-00001.safetensors",
                d / "shard-00004-model-00001-of-00001.safetensors")
    return d


def dtype_clash(ckpt, tmp):
    """Two chunks of one tensor saved with different dtypes."""
    d = tmp / "dcp-clash"
    d.mkdir()
    _rank_file(d, 0, "BF16", 2)
    _rank_file(d, 1, "F32", 4)
    return d


def gap(ckpt, tmp):
    """Two chunks of one tensor with nothing covering the elements between them."""
    d = tmp / "dcp-clash-gap"
    d.mkdir()
    _rank_file(d, 0, "BF16", 2)
    _rank_file(d, 1, "BF16", 2, at=4)
    return d


# (builder, the pieces the one-line message holds, in this order)
COVERAGE = [
    (hole, ["shard-00002-model-00001-of-00001.safetensors is missing"]),
    (tail, ["dim 0 is 6, expected 8", "text_config.num_experts", "likely missing"]),
    (tail_local_experts, ["dim 0 is 6, expected 8", "text_config.num_local_experts", "likely missing"]),
    (tail_routed_experts, ["dim 0 is 6, expected 8", "'s n_routed_experts", "likely missing"]),
    (duplicate, ["chunks overlap in dim 0 [4, 6)", "offsets [4, 0, 0] in shard-00003",
                 "offsets [4, 0, 0] in shard-00004"]),
    (dtype_clash, ['tensor "w": chunks disagree on dtype']),
    (gap, ['tensor "w": no chunk covers dim 0 [2, 4)']),
]


@pytest.mark.parametrize("build,pieces", COVERAGE, ids=[b.__name__ for b, _ in COVERAGE])
def test_dcp_coverage_errors(mount, ckpt, tmp, build, pieces):
    """A sharded save that does not cover every tensor exactly once refuses to mount (nothing
    gets mounted) and says which rank file or which part of which tensor is wrong."""
    p = mount.fail(build(ckpt, tmp), tmp / "m")
    out = p.stdout + p.stderr
    print(out, end="")
    pattern = ".*".join(re.escape(piece) for piece in pieces)
    assert re.search(pattern, out, re.S), f"message lacks {pieces}: {out}"


# ------------------------------------------------------------------- any model Automodel saves
#
# (name, mkckpt flags of the plain checkpoint, extra flags of its sharded save, W). Each layout
# is mounted whole (byte-identical to the plain checkpoint), then broken four ways.
ANY = [
    ("dense-d0", ["--arch", "llama"], ["--dense-split"], 4),
    ("dense-d1", ["--arch", "llama"], ["--dense-split", "--dense-dim", "1"], 4),
    ("dense-empty", ["--arch", "llama", "--hidden", "20"], ["--dense-split", "--empty-chunks"], 8),
    ("per-expert", ["--arch", "moe"], ["--dense-split"], 4),
    ("per-expert-k2", ["--arch", "moe"], ["--dense-split", "--save-shard-size", "2"], 4),
    ("stacked", ["--arch", "gptoss"], ["--dense-split", "--empty-chunks"], 4),
    ("qwen-ep-k2", [], ["--dense-split", "--save-shard-size", "2"], 8),
]
ANY_IDS = [a[0] for a in ANY]
RANK = "shard-{:05}-model-00001-of-00001.safetensors"


def _any_save(ckpt, name, plain, extra, w, *more):
    return ckpt.make(f"any-{name}" + "".join(more).replace("-", "_"), *plain, *extra,
                     "--sharded-save", str(w), *more)


@pytest.mark.parametrize("name,plain,extra,w", ANY, ids=ANY_IDS)
def test_any_model_consolidated_equals_original(mount, ckpt, name, plain, extra, w):
    """Dense (dim-0, dim-1 cuts, FSDP2's empty trailing chunks), per-expert MoE, GPT-OSS-style
    stacked experts and Qwen3-VL-MoE with EP x expert shards: the mount is the checkpoint the
    save was cut from, byte for byte."""
    ref = ckpt.make(f"any-{name}-plain", *plain)
    m = mount(_any_save(ckpt, name, plain, extra, w))
    check_view(ref, m, "--view", "hf")


def _header(path):
    """(the file's bytes, its header length, its header)."""
    b = path.read_bytes()
    h, n = header_of(b)
    return b, n, h


def _rewrite_header(path, change):
    """Apply change(header) to a rank file's header, keeping its length (the data stays put)."""
    b, n, h = _header(path)
    change(h)
    new = json.dumps(h, separators=(",", ":")).encode()
    assert len(new) <= n, "the rewritten header does not fit"
    path.write_bytes(b[:8] + new + b" " * (n - len(new)) + b[8 + n:])


def _shared_key(d, r, pred=lambda k, v: True):
    """A tensor of rank r's file that rank r-1's file also holds a chunk of."""
    _, _, mine = _header(d / RANK.format(r + 1))
    _, _, prev = _header(d / RANK.format(r))
    keys = [k for k, v in mine.items() if k != "__metadata__" and k in prev and pred(k, v)]
    assert keys, f"no tensor both in rank {r} and rank {r - 1}"
    return keys[0]


def _broken(ckpt, tmp, name, plain, extra, w, how):
    """The layout's save, broken one way; returns (folder, pieces of the expected message)."""
    if how == "last":
        return (_any_save(ckpt, name, plain, extra, w, "--sharded-drop-rank", str(w - 1)),
                [RANK.format(w) + f" (rank {w - 1})", "likely missing"])
    if how == "middle":
        return (_any_save(ckpt, name, plain, extra, w, "--sharded-drop-rank", "1"),
                [RANK.format(2) + " is missing"])
    d = tmp / f"{name}-{how}"
    shutil.copytree(_any_save(ckpt, name, plain, extra, w), d)
    r = w - 1 if how == "overlap" else 2
    if how == "dtype":
        key = _shared_key(d, r)

        def change(h):
            h[key]["dtype"] = "F16"  # as many bytes as BF16: only the dtype disagrees
        _rewrite_header(d / RANK.format(r + 1), change)
        return d, [f'tensor "{key}": chunks disagree on dtype', RANK.format(r + 1)]
    # overlap: one chunk moved one row back along the dimension it is cut on
    info_of = lambda h: json.loads(h["__metadata__"]["DCP_SHARDING_INFO"])
    _, _, h = _header(d / RANK.format(r + 1))
    info = info_of(h)
    key = _shared_key(d, r, lambda k, v: any(info[k]["saved_offsets"]) and all(v["shape"]))
    dim = next(i for i, o in enumerate(info[key]["saved_offsets"]) if o)

    def move(h):
        inf = info_of(h)
        inf[key]["saved_offsets"][dim] -= 1
        h["__metadata__"]["DCP_SHARDING_INFO"] = json.dumps(inf)
    _rewrite_header(d / RANK.format(r + 1), move)
    return d, [f'tensor "{key}": chunks overlap in', f"dim {dim} [", RANK.format(r + 1)]


BROKEN = ["last", "middle", "dtype", "overlap"]


@pytest.mark.parametrize("how", BROKEN)
@pytest.mark.parametrize("name,plain,extra,w", ANY, ids=ANY_IDS)
def test_any_model_broken_save_refused(mount, ckpt, tmp, name, plain, extra, w, how):
    """Its last rank file missing, a middle one missing, a dtype clash, an overlap: each
    refuses to mount with one line naming the tensor or the rank file."""
    src, pieces = _broken(ckpt, tmp, name, plain, extra, w, how)
    p = mount.fail(src, tmp / "m")
    out = (p.stdout + p.stderr).strip()
    print(out)
    assert len(out.splitlines()) == 1, f"more than one line: {out}"
    pattern = ".*".join(re.escape(piece) for piece in pieces)
    assert re.search(pattern, out, re.S), f"message lacks {pieces}: {out}"


# ------------------------------------------------------------- expert slicing of any model

def _tensors(folder):
    """{key: (dtype, shape, bytes)} of every *.safetensors file directly in folder."""
    out = {}
    for p in sorted(folder.glob("*.safetensors")):
        out.update(read_tensors(p)[1])
    return out


def _expected_rank(ref, experts, w, r, k=1, s=0):
    """ref's tensors as EP rank r of w (shard s of k) holds them: ".mlp.experts.NAME" tensors
    whose dim 0 is the expert count cut on dim 0 (and dim 1 into k), the rest whole."""
    import numpy as np
    out = {}
    for key, (dt, shape, raw) in ref.items():
        stacked = ".mlp.experts." in key and not key.split(".mlp.experts.")[1][0].isdigit()
        if not (stacked and len(shape) >= 2 and shape[0] == experts):
            out[key] = (dt, shape, raw)
            continue
        a = np.frombuffer(raw, dtype=np.uint16).reshape(shape)  # BF16: two bytes an element
        start, count = ep_range(shape[0], w, r)
        d1 = shape[1] // k
        part = a[start:start + count, s * d1:(s + 1) * d1]
        out[key] = (dt, list(part.shape), part.tobytes())
    return out


GPTOSS = ["--arch", "gptoss", "--experts", "10"]


@pytest.mark.parametrize("sharded", [False, True], ids=["checkpoint", "sharded-save"])
@pytest.mark.parametrize("w,k", [(4, 1), (3, 1), (2, 2)])
def test_ep_slices_stacked_experts_of_any_model(mount, ckpt, sharded, w, k):
    """GPT-OSS-style stacked experts (model.layers.N.mlp.experts.gate_up_proj, no
    language_model.), dim 0 = config.json's num_local_experts: -o ep_size slices them (and
    their biases) for every rank, as a plain checkpoint and as a sharded save; the router and
    every other tensor stay whole."""
    ref_dir = ckpt.make("gptoss-e10", *GPTOSS)
    src = ckpt.make("gptoss-e10-w4", *GPTOSS, "--sharded-save", "4", "--dense-split") \
        if sharded else ref_dir
    opts = f"ep_size={w}" + (f",ep_shard_size={k}" if k > 1 else "")
    m = mount(src, None, "-o", opts)
    ref = _tensors(ref_dir)
    for r in range(w):
        for s in range(k):
            folder = m / (f"ep-rank-{r}" + (f"-shard-{s}" if k > 1 else ""))
            got, want = _tensors(folder), _expected_rank(ref, 10, w, r, k, s)
            assert sorted(got) == sorted(want), f"{folder.name}: other keys"
            bad = [key for key in want if got[key] != want[key]]
            assert not bad, f"{folder.name}: {len(bad)} tensors differ, e.g. {bad[:3]}"
            sliced = [key for key in want if want[key] != ref[key]]
            assert len(sliced) == 4 * 2, f"{folder.name}: sliced {sliced}"


def test_ep_per_expert_keys_refused(mount, ckpt, tmp):
    """Per-expert keys (experts.J.gate_proj.weight) have no expert dim to cut: ep_size is
    refused with one line that says so."""
    p = mount.fail(ckpt.make("any-per-expert-plain", "--arch", "moe"), tmp / "m", "-o", "ep_size=2")
    out = (p.stdout + p.stderr).strip()
    assert len(out.splitlines()) == 1 and "one tensor per expert" in out and \
        ".mlp.experts.0." in out, out


@pytest.mark.parametrize("arch", ["llama", "gptoss"])
def test_view_native_on_other_model_says_nothing_to_rename(mount, ckpt, tmp, arch):
    """view=native on a model that is not Qwen3-VL-MoE mounts the source's names unchanged and
    says at mount that there is nothing to rename."""
    src = ckpt.make(f"any-{arch}-plain-v", "--arch", arch)
    (tmp / "m").mkdir()
    p = run(QV, src, tmp / "m", "-o", "view=native", check=False)
    try:
        assert p.returncode == 0, p.stdout + p.stderr
        assert "nothing to rename" in p.stdout + p.stderr, p.stdout + p.stderr
        check_view(src, tmp / "m", "--view", "hf")
    finally:
        run("fusermount3", "-u", tmp / "m", check=False)


def test_dcp_helper_mappings_not_shown(mount, ckpt, tmp):
    """Automodel's consolidated/ has .hf_metadata's files but its two helper mappings
    (fqn_to_file_index_mapping.json, fqn_to_dtype_mapping.json): the mount's root likewise."""
    d = tmp / "save"
    shutil.copytree(ckpt.make("dcp-w4", "--sharded-save", "4"), d)
    (d / ".hf_metadata" / "fqn_to_dtype_mapping.json").write_text('{"lm_head.weight": "BF16"}')
    m = mount(d)
    names = {p.name for p in m.iterdir()}
    assert "config.json" in names and not names & {"fqn_to_file_index_mapping.json",
                                                     "fqn_to_dtype_mapping.json"}, names


def test_mkckpt_drop_rank_counts_files_written(tmp):
    """qvlmoefs-mkckpt --sharded-drop-rank says how many rank files it wrote (3 of 4)."""
    out = run(MK, "--sharded-save", "4", "--sharded-drop-rank", "3", tmp / "s").stdout
    assert "in 3 rank files" in out and len(list((tmp / "s").glob("shard-*"))) == 3, out


def test_ep_shared_splits_stacked_experts_of_any_model(mount, ckpt):
    """-o ep_shared on GPT-OSS-style stacked experts: each rank folder's NAME-experts files hold
    exactly its expert slices, the shared files every other tensor whole."""
    ref_dir = ckpt.make("gptoss-e10", *GPTOSS)
    m = mount(ref_dir, None, "-o", "ep_size=4,ep_shared")
    ref = _tensors(ref_dir)
    for r in range(4):
        folder = m / f"ep-rank-{r}"
        want = _expected_rank(ref, 10, 4, r)
        experts = {k for p in folder.glob("*-experts.safetensors") for k in _tensors_of(p)}
        assert experts == {k for k in want if want[k] != ref[k]}, f"{folder.name}: {experts}"
        assert _tensors(folder) == want, f"{folder.name}: tensors differ"


def _tensors_of(path):
    _, _, h = _header(path)
    return [k for k in h if k != "__metadata__"]


# ------------------------------- saves refused: sizes that overflow, stray or unreadable files


def _rank(folder, r, tensors):
    """Write rank file r of a hand-made sharded save: tensors is {name: (shape, saved_offsets)},
    BF16, data packed in order, DCP_SHARDING_INFO as Automodel writes it."""
    info, header, data = {}, {}, b""
    for name, (shape, offsets) in tensors.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [len(data), len(data) + n]}
        info[name] = {"saved_offsets": offsets}
        data += bytes(range(n % 256)) + b"\x01" * (n - n % 256)
    h = json.dumps({"__metadata__": {"format": "pt", "DCP_SHARDING_INFO": json.dumps(info)},
                    **header}).encode()
    h += b" " * (-(8 + len(h)) % 8)
    (folder / f"shard-{r + 1:05}-model-00001-of-00001.safetensors").write_bytes(
        struct.pack("<Q", len(h)) + h + data)


BIG = 1 << 43
# name: (rank files, words the one-line error holds)
HOSTILE_SAVES = {
    # a zero-size chunk at 2^43 in three dims: the volume 2^129 wrapped to 0 in 128 bits,
    # matching the zero chunks' sum, and the mount served [2^43, 2^43, 2^43] over no data
    "volume_wraps": ([{"a": ([2], [0]), "w": ([0, 0, 0], [0, 0, 0])},
                      {"w": ([0, 0, 0], [BIG, BIG, BIG])}],
                     ['tensor "w"', "overflows 64 bits"]),
    # nothing wraps, but a dimension of 2^54 is more than a header may say (2^53): the
    # header the mount would serve is one the project's own parser rejects
    "dim_past_2_53": ([{"a": ([2], [0]), "z": ([0, 1 << 53], [0, 0])},
                       {"z": ([0, 1 << 53], [0, 1 << 53])}],
                      ["model-00001-of-00001.safetensors", "fails the strict parser", "2^53"]),
}


@pytest.mark.parametrize("case", HOSTILE_SAVES.values(), ids=HOSTILE_SAVES.keys())
def test_hostile_sharded_save_refused(mount, tmp, case):
    """A save whose tensor sizes overflow, or whose consolidated header would not parse,
    refuses to mount with one line naming the tensor or file; nothing is served."""
    ranks, words = case
    src = tmp / "hostile"
    src.mkdir()
    for r, tensors in enumerate(ranks):
        _rank(src, r, tensors)
    p = mount.fail(src, tmp / "m", stderr=subprocess.STDOUT, timeout=20)
    out = p.stdout
    assert one_line(out), f"not one line: {out!r}"
    for w in words:
        assert w in out, f"{w!r} not in {out!r}"


@pytest.mark.parametrize("opts", [(), ("-o", "ep_size=2")], ids=["view", "rank_folders"])
def test_stray_file_named_as_consolidated_refuses_mount(mount, ckpt, tmp, opts):
    """A file beside a sharded save's rank files that has a consolidated file's name stops the
    mount with one message naming both, instead of a folder with two entries of one name (rank
    folders, built on first use, included)."""
    src = tmp / "dcp"
    shutil.copytree(ckpt.make("dcp-w4", "--sharded-save", "4"), src)
    shutil.copy(ckpt["hf"] / "model-00001-of-00002.safetensors", src)
    p = mount.fail(src, tmp / "m", *opts)
    out = p.stdout + p.stderr
    print(out, end="")
    assert "model-00001-of-00002.safetensors (a file in the sharded save's folder)" in out, out
    assert "consolidated model-00001-of-00002.safetensors" in out, out


@pytest.mark.parametrize("text", ['{"lm_head.weight": "BF16"', '["lm_head.weight"]', ""],
                         ids=["cut_short", "array", "empty"])
def test_bad_dtype_mapping_refused(ckpt, mount, tmp, text):
    """A sharded save whose .hf_metadata/fqn_to_dtype_mapping.json is there but no JSON
    object is refused in one line naming the file and why (the check it stands for was
    skipped, and the save mounted)."""
    d = tmp / "save"
    shutil.copytree(ckpt.make("dcp-w4", "--sharded-save", "4"), d)
    (d / ".hf_metadata" / "fqn_to_dtype_mapping.json").write_text(text)
    out = single_line(mount.fail(d, tmp / "m", stderr=subprocess.STDOUT))
    assert ".hf_metadata/fqn_to_dtype_mapping.json: not a JSON object" in out, out
