"""Review of issue 21 (points 5, 6 and 8): an index naming a key its shard lacks, rank folders
that mounted what their first use then refused (a rank folder copied out and sliced again), and
qvlmoefs-node-mount keeping a mount that shows another view than the one asked for.

Every refusal must come before mounting, with one line naming what is wrong; a mount that
succeeds must answer every read (never EIO afterwards).
"""
import json
import os
import struct

import pytest

import helpers
from helpers import QV, ROOT, check_view, read_all, run

INDEX = "model.safetensors.index.json"
NODE_MOUNT = ROOT / "mount-scripts" / "qvlmoefs-node-mount"


# ---------------------------------------------------------------------------- helpers


def read_st(path):
    """(metadata or None, {name: (dtype, shape, bytes)} in data order) of a safetensors file."""
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    hdr, data = json.loads(b[8:8 + n]), b[8 + n:]
    meta = hdr.pop("__metadata__", None)
    order = sorted(hdr, key=lambda k: hdr[k]["data_offsets"][0])
    return meta, {k: (hdr[k]["dtype"], hdr[k]["shape"],
                      data[hdr[k]["data_offsets"][0]:hdr[k]["data_offsets"][1]]) for k in order}


def write_st(path, meta, tensors):
    """A safetensors file as a writer makes one: metadata, then tensors in the given order."""
    hdr, off = ({"__metadata__": meta} if meta is not None else {}), 0
    for name, (dtype, shape, data) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    j = json.dumps(hdr, separators=(",", ":")).encode()
    j += b" " * (-(8 + len(j)) % 8)
    path.write_bytes(struct.pack("<Q", len(j)) + j + b"".join(d for _, _, d in tensors.values()))


def drop_key(src, key):
    """Re-save the shard that src's index says holds key without it; the index still names it.
    Returns the shard's name."""
    shard = json.loads((src / INDEX).read_text())["weight_map"][key]
    meta, tensors = read_st(src / shard)
    del tensors[key]
    write_st(src / shard, meta, tensors)
    return shard


def one_line_naming(output, *words):
    """The one line of output holding every word (asserted: exactly one)."""
    lines = [ln for ln in output.splitlines() if all(w in ln for w in words)]
    assert len(lines) == 1, f"want one line naming {words}, got:\n{output}"
    return lines[0]


def node_mount(src, mnt, w, *extra, check=True):
    """Run qvlmoefs-node-mount SRC MNT W [OPTIONS] with this build's qvlmoefs."""
    env = dict(os.environ, QVLMOEFS=str(QV))
    return run(NODE_MOUNT, src, mnt, w, *extra, env=env, check=check)


# ------------------------------------------------- 5: an index naming a key its shard lacks

# name: (checkpoint, key to drop, mount options)
MISSING_KEY = {
    "native_view": ("hf", "lm_head.weight", []),
    "hf_view_of_native": ("native", "lm_head.weight", []),
    "identity": ("hf", "lm_head.weight", ["-o", "view=hf"]),
    "one_rank": ("hf", "lm_head.weight", ["-o", "ep_size=2,ep_rank=1"]),
    "rank_folders": ("hf", "lm_head.weight", ["-o", "ep_size=2"]),
    "rank_folders_ep_shared": ("hf", "lm_head.weight", ["-o", "ep_size=2,ep_shared"]),
    "expert_tensor": ("hf", "model.language_model.layers.1.mlp.experts.down_proj",
                      ["-o", "ep_size=2"]),
}


@pytest.mark.parametrize("case", MISSING_KEY.values(), ids=MISSING_KEY.keys())
def test_index_names_key_its_shard_lacks_refused(ckpt, mount, tmp, case):
    """A shard re-saved without a key its index still names mounted silently and the view's
    index dropped the key (69 keys for 70), hiding the gap from loaders; rank folders did not
    even look until first use. Now the mount fails with one line naming key, shard and index."""
    name, key, opts = case
    src = tmp / "src"
    run("cp", "-r", ckpt[name], src)
    shard = drop_key(src, key)
    p = mount.fail(src, None, *opts)
    one_line_naming(p.stdout + p.stderr, f'"{key}"', shard, INDEX)


def test_index_naming_only_held_keys_mounts(ckpt, mount, tmp):
    """The check refuses nothing a consistent checkpoint holds: the same re-saved shard with the
    key also gone from the index mounts, and its index has every key the shards hold."""
    src = tmp / "src"
    run("cp", "-r", ckpt["hf"], src)
    drop_key(src, "lm_head.weight")
    idx = json.loads((src / INDEX).read_text())
    del idx["weight_map"]["lm_head.weight"]
    (src / INDEX).write_text(json.dumps(idx))
    m = mount(src, None, "-o", "view=hf")
    assert sorted(json.loads((m / INDEX).read_text())["weight_map"]) == sorted(idx["weight_map"])


# ------------------------------------------------- 6: a rank folder copied out, sliced again


@pytest.fixture
def rank_copy(ckpt, mount, tmp):
    """ep-rank-1 of an ep_size=2 mount of the HF checkpoint (native names, experts 4-7 of 8 in
    each expert tensor, qvlmoefs.ep_* in every shard), copied out with cp -r."""
    m = mount(ckpt["hf"], None, "-o", "ep_size=2")
    run("cp", "-r", m / "ep-rank-1", tmp / "copy")
    mount.umount(m)
    meta, _ = read_st(tmp / "copy" / "model-00001-of-00002.safetensors")
    assert meta["qvlmoefs.expert_start"] == "4", meta
    return tmp / "copy"


@pytest.mark.parametrize("rank", [0, 1])
def test_copied_rank_folder_one_rank_of_it(rank_copy, mount, rank):
    """-o ep_size=2,ep_rank=R on the copy was refused ("duplicate __metadata__ key"): it now
    mounts, and rank R holds experts [2R, 2R+2) of the copy's 4 (the independent checker's
    contract: the view's qvlmoefs.* keys replace the source's, counted on the source's own
    expert dim), every byte equal to the copy's."""
    m = mount(rank_copy, None, "-o", f"ep_size=2,ep_rank={rank},view=native")
    check_view(rank_copy, m, "--view", "native", "--ep-size", 2, "--ep-rank", rank)
    meta, _ = read_st(m / "model-00001-of-00002.safetensors")
    want = {"qvlmoefs.ep_size": "2", "qvlmoefs.ep_rank": str(rank),
            "qvlmoefs.expert_start": str(2 * rank), "qvlmoefs.expert_end": str(2 * rank + 2)}
    assert {k: v for k, v in meta.items() if k.startswith("qvlmoefs.")} == want, meta


def test_copied_rank_folder_rank_folders(rank_copy, mount):
    """-o ep_size=2 on the copy mounted and then every rank folder answered EIO: each folder is
    now readable to its last byte and right (default naming: back to HF names)."""
    m = mount(rank_copy, None, "-o", "ep_size=2")
    for r in range(2):
        assert os.listdir(m / f"ep-rank-{r}")  # EIO raised here before
        read_all(m / f"ep-rank-{r}")
        check_view(rank_copy, m / f"ep-rank-{r}", "--ep-size", 2, "--ep-rank", r)


def test_copied_rank_folder_too_many_ranks_refused_at_mount(rank_copy, mount):
    """The copy holds 4 experts: 8 ranks of them are refused before mounting, with one line, as
    on any checkpoint -- never a mount whose folders then fail."""
    p = mount.fail(rank_copy, None, "-o", "ep_size=8")
    one_line_naming(p.stdout + p.stderr, "ep_size=8", "4 experts")


def test_rank_folders_refused_at_mount_not_on_first_use(ckpt, mount, tmp):
    """What only building a rank folder found (here two source keys that map to one view key)
    made a mount that succeeded and then answered EIO in every rank folder; it is refused
    at mount now, with the one-line reason the one-rank mount gives."""
    src = tmp / "src"
    run("cp", "-r", ckpt["hf"], src)
    shard = src / "model-00002-of-00002.safetensors"
    meta, tensors = read_st(shard)
    # "language_model.norm.weight" becomes "model.language_model.norm.weight" in the native view
    tensors["language_model.norm.weight"] = tensors["model.language_model.norm.weight"]
    write_st(shard, meta, tensors)
    idx = json.loads((src / INDEX).read_text())
    idx["weight_map"]["language_model.norm.weight"] = shard.name
    (src / INDEX).write_text(json.dumps(idx))
    one = mount.fail(src, None, "-o", "ep_size=2,ep_rank=0")
    line = one_line_naming(one.stdout + one.stderr, "model.language_model.norm.weight")
    folders = mount.fail(src, None, "-o", "ep_size=2")
    assert line in folders.stdout + folders.stderr, folders.stdout + folders.stderr


# ------------------------------------------------- 8: qvlmoefs-node-mount compares the whole view


def test_node_mount_refuses_one_rank_mount(ckpt, mount, tmp):
    """A one-rank mount (-o ep_size=4,ep_rank=3) was taken for the node mount: "already
    mounted", exit 0, and no ep-rank-0 for the ranks. Now an error naming what is mounted."""
    m = mount(ckpt["e10"], tmp / "m", "-o", "ep_size=4,ep_rank=3")
    p = node_mount(ckpt["e10"], m, 4, check=False)
    assert p.returncode != 0, f"exit 0 on a one-rank mount: {p.stdout}{p.stderr}"
    assert "one rank (ep_size=4,ep_rank=3)" in p.stderr and "fusermount3 -u" in p.stderr, p.stderr
    assert "already mounted (" not in p.stdout, p.stdout
    assert helpers.mounts_below(tmp) == [str(m)], helpers.mounts_below(tmp)


# name: (options of the mount made first, options asked for next)
OTHER_VIEW = {
    "ep_shared_then_plain": (["ep_shared"], []),
    "plain_then_ep_shared": ([], ["ep_shared"]),
    "native_then_hf": ([], ["view=hf"]),
    "shard_folders": ([], ["ep_shard_size=2"]),
}


@pytest.mark.parametrize("case", OTHER_VIEW.values(), ids=OTHER_VIEW.keys())
def test_node_mount_refuses_another_view(ckpt, fuse, tmp, case):
    """Same source and EP size, but options that change the view: an error naming a file that
    differs, the old mount kept as it was (never "already mounted", exit 0)."""
    first, then = case
    m = tmp / "m"
    node_mount(ckpt["e10"], m, 4, *([",".join(first)] if first else []))
    before = sorted(os.listdir(m / "ep-rank-0"))
    p = node_mount(ckpt["e10"], m, 4, *([",".join(then)] if then else []), check=False)
    assert p.returncode != 0, f"exit 0 with {first} mounted, {then} asked for: {p.stdout}{p.stderr}"
    assert "another view" in p.stderr and "mounted:" in p.stderr and "fusermount3 -u" in p.stderr, \
        p.stderr
    assert helpers.mounts_below(tmp) == [str(m)], helpers.mounts_below(tmp)
    assert sorted(os.listdir(m / "ep-rank-0")) == before


def test_node_mount_refuses_other_exclude(ckpt, fuse, tmp):
    """exclude= changes what an HF view of a native source holds (its _extra_state keys here)."""
    m = tmp / "m"
    node_mount(ckpt["native"], m, 2)
    p = node_mount(ckpt["native"], m, 2, "exclude=.*nothing.*", check=False)
    assert p.returncode != 0 and "another view" in p.stderr, f"{p.stdout}{p.stderr}"


def test_node_mount_same_view_other_reader_kept(ckpt, fuse, tmp):
    """Options that change no byte of the view (the source reader, direct_io) are the same view:
    still "already mounted", exit 0."""
    m = tmp / "m"
    node_mount(ckpt["e10"], m, 4, "ep_shared")
    p = node_mount(ckpt["e10"], m, 4, "ep_shared,io=pread,direct_io")
    assert "already mounted" in p.stdout, p.stdout
    assert helpers.mounts_below(tmp) == [str(m)], helpers.mounts_below(tmp)


def test_node_mount_shard_folders(ckpt, fuse, tmp):
    """With ep_shard_size and no ep_shard_rank the folders are ep-rank-R-shard-S: the script
    mounted them and then said ep-rank-0 was missing (exit 1). It mounts, and again is kept."""
    m = tmp / "m"
    node_mount(ckpt["e10"], m, 2, "ep_shard_size=2")
    assert sorted(os.listdir(m)) == [f"ep-rank-{r}-shard-{s}" for r in range(2) for s in range(2)]
    assert "already mounted" in node_mount(ckpt["e10"], m, 2, "ep_shard_size=2").stdout
