"""Expert-parallel views: every rank's slice, dim-1 shard cuts, reassembly, and reading only
the source bytes a rank needs (counted by the daemon's bytes_from_sources); statfs while rank
folders are built on first use; a rank folder copied out and mounted (sliced) again; what only
building a rank folder would find is refused at mount."""
import json
import os
import subprocess
import threading

import pytest

from checkview.reader import read_header, read_tensors
from helpers import (QV, check_view, ep_check, one_line_naming, read_all, run, stat_field,
                     within_1pct, write_st)
from support_daemon import daemon_fixture  # noqa: F401  (provides the `daemon` fixture)

INDEX = "model.safetensors.index.json"

SOURCES = ["hf", "native", "e10", "e10n"]


def rank_folders(mnt):
    """What `ls mnt` lists: the entries not starting with a dot, sorted."""
    return sorted(n for n in os.listdir(mnt) if not n.startswith("."))


@pytest.mark.parametrize("w", [1, 2, 4, 8])
@pytest.mark.parametrize("src", SOURCES)
def test_ep_every_rank(ckpt, mount, src, w):
    """With ep_size=W alone, every ep-rank-R folder holds rank R's slice."""
    m = mount(ckpt[src], None, "-o", f"ep_size={w}")
    for r in range(w):
        check_view(ckpt[src], m / f"ep-rank-{r}", "--ep-size", w, "--ep-rank", r)


CUTS = {  # id: (-o options, checker arguments)
    "rank3_shard1of2": ("ep_size=4,ep_rank=3,ep_shard_size=2,ep_shard_rank=1",
                        ["--ep-size", 4, "--ep-rank", 3, "--ep-shard-size", 2, "--ep-shard-rank", 1]),
    "rank2_hf": ("ep_size=4,ep_rank=2,view=hf", ["--view", "hf", "--ep-size", 4, "--ep-rank", 2]),
}


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
@pytest.mark.parametrize("src", ["e10", "e10n"])
def test_ep_single_rank_and_shard_cut(ckpt, mount, src, cut):
    """ep_size with ep_rank shows one rank at the root, optionally cut on dim 1 or HF-named."""
    opts, args = cut
    m = mount(ckpt[src], None, "-o", opts)
    check_view(ckpt[src], m, *args)


def test_ep_uneven_split(ckpt, mount):
    """E = 10 over W = 4 gives 3, 3, 2, 2 experts, with matching expert_start/expert_end."""
    m = mount(ckpt["e10"], None, "-o", "ep_size=4")
    got = []
    for r in range(4):
        h, _ = read_header(m / f"ep-rank-{r}" / "model-00002-of-00002.safetensors")
        got.append([[v["shape"][0] for k, v in h.items() if k.endswith("gate_and_up_projs")][0],
                    h["__metadata__"]["qvlmoefs.expert_start"], h["__metadata__"]["qvlmoefs.expert_end"]])
    assert got == [[3, "0", "3"], [3, "3", "6"], [2, "6", "8"], [2, "8", "10"]]


REASSEMBLY = {  # id: (source, -o options, ep_check arguments after SRC MNT)
    "e10_w4_k2": ("e10", "ep_size=4,ep_shard_size=2", [4, 2]),
    "e10n_w3": ("e10n", "ep_size=3", [3]),
    "hf_w8": ("hf", "ep_size=8", [8]),
}


@pytest.mark.parametrize("case", REASSEMBLY.values(), ids=REASSEMBLY.keys())
def test_ep_reassembly(ckpt, mount, case):
    """Joining every rank's (and shard's) pieces gives back each source expert tensor."""
    src, opts, args = case
    m = mount(ckpt[src], None, "-o", opts)
    ep_check("reassemble", ckpt[src], m, *args)


ONE_RANK = {  # id: (-o options, ep_check minbytes arguments after SRC)
    "rank0": ("ep_size=4,ep_rank=0", [4, 0]),
    "rank3": ("ep_size=4,ep_rank=3", [4, 3]),
    "rank1_shard0of2": ("ep_size=4,ep_rank=1,ep_shard_size=2,ep_shard_rank=0", [4, 1, 2, 0]),
}


@pytest.mark.parametrize("case", ONE_RANK.values(), ids=ONE_RANK.keys())
def test_ep_source_bytes_one_rank(ckpt, mount, case):
    """Reading a one-rank view reads within 1% of the fewest source bytes it can take."""
    opts, args = case
    m = mount(ckpt["e10"], None, "-o", opts)
    read_all(m)
    within_1pct(stat_field(m, "bytes_from_sources"), int(ep_check("minbytes", ckpt["e10"], *args)))


def test_ep_more_ranks_than_experts_rejected(ckpt, mount):
    """ep_size=12 over 10 experts does not mount."""
    mount.fail(ckpt["e10"], None, "-o", "ep_size=12")


def test_ep_multirank_folders_lazy(ckpt, mount):
    """Rank folders are listed at once but built on first use, and only once."""
    m = mount(ckpt["e10"], None, "-o", "ep_size=10")
    assert rank_folders(m) == sorted(f"ep-rank-{r}" for r in range(10))
    n0 = stat_field(m, "nodes")
    os.listdir(m / "ep-rank-7")
    n1 = stat_field(m, "nodes")
    os.listdir(m / "ep-rank-7")
    (m / "ep-rank-7" / "config.json").read_bytes()
    n2 = stat_field(m, "nodes")
    # before any rank folder is opened: the root, .qvlmoefs and the 10 rank folders (the old bash
    # suite said 11, from before .qvlmoefs existed; under set -e its `[ ] && [ ]` never failed)
    assert (n0, n1 > n0, n2) == (12, True, n1), f"nodes: {n0} before, {n1} after one rank, {n2} again"
    check_view(ckpt["e10"], m / "ep-rank-7", "--ep-size", 10, "--ep-rank", 7)


def test_ep_shard_folders(ckpt, mount):
    """ep_size with ep_shard_size alone gives one folder per (rank, shard)."""
    m = mount(ckpt["e10"], None, "-o", "ep_size=2,ep_shard_size=2")
    assert rank_folders(m) == ["ep-rank-0-shard-0", "ep-rank-0-shard-1", "ep-rank-1-shard-0",
                               "ep-rank-1-shard-1"]
    check_view(ckpt["e10"], m / "ep-rank-1-shard-1", "--ep-size", 2, "--ep-rank", 1,
               "--ep-shard-size", 2, "--ep-shard-rank", 1)


BAD_EP = ["ep_size=2,ep_rank=2", "ep_size=11", "ep_size=2,ep_shard_size=3,ep_shard_rank=3",
          "ep_size=2,ep_shard_size=3", "ep_rank=1", "ep_size=2,ep_shard_rank=1", "ep_size=0"]


@pytest.mark.parametrize("opts", BAD_EP)
def test_ep_validation_error(ckpt, mount, tmp, opts):
    """A bad combination fails with one error line (besides any uneven-split warning)."""
    out = mount.fail(ckpt["e10"], tmp / "m", "-o", opts, stderr=subprocess.STDOUT).stdout
    lines = out.rstrip("\n").split("\n")
    assert len([x for x in lines if "do not divide" not in x]) == 1, f"-o {opts}: {out}"


def test_ep_shard_size_must_divide_dim1(ckpt, mount, tmp):
    """ep_shard_size that does not divide dim 1 names the tensor and the numbers."""
    out = mount.fail(ckpt["e10"], tmp / "m", "-o", "ep_size=2,ep_shard_size=3",
                     stderr=subprocess.STDOUT).stdout
    assert "down_proj" in out and "dim 1 (40) is not divisible by ep_shard_size=3" in out, out
    assert out.index("down_proj") < out.index("dim 1 (40) is not divisible by ep_shard_size=3"), out


def test_ep_uneven_split_warns(ckpt, mount, tmp):
    """An uneven split mounts, with a warning."""
    m = tmp / "m"
    m.mkdir()
    out = run(QV, ckpt["e10"], m, "-o", "ep_size=4,ep_rank=0", stderr=subprocess.STDOUT).stdout
    mount.umount(m)
    assert "10 experts do not divide by ep_size=4" in out, f"no warning: {out}"


def test_ep_e128_w8_reads_only_its_slices(ckpt, mount):
    """Eight ranks of 128 experts together read each expert byte about once (plus the dense
    bytes once per rank)."""
    src = ckpt.make("e128", "--experts", "128", "--layers", "2")
    m = mount(src, None, "-o", "ep_size=8")
    for r in range(8):
        read_all(m / f"ep-rank-{r}")
    got = stat_field(m, "bytes_from_sources")
    # expert bytes of the whole checkpoint and dense bytes (tensors + pass-through files) of one view
    allr = int(ep_check("minbytes", src, 8, "0,1,2,3,4,5,6,7"))
    one = int(ep_check("minbytes", src, 1, 0))
    dense = (allr - one) // 7  # allr = E + 8D and one = E + D, so E and D follow
    experts = one - dense
    limit = 1.01 * experts + 8 * dense
    assert got <= limit, \
        f"8 ranks read {got} source bytes; experts {experts}, dense {dense}, limit {limit:.0f}"
    for r in (0, 5):
        check_view(src, m / f"ep-rank-{r}", "--ep-size", 8, "--ep-rank", r)


SHARED = {  # id: (source, -o options of the plain mount)
    "e10_w4": ("e10", "ep_size=4"),
    "e10n_w3": ("e10n", "ep_size=3"),
    "hf_w8": ("hf", "ep_size=8"),
    "e10_w2_k2": ("e10", "ep_size=2,ep_shard_size=2"),
}


@pytest.mark.parametrize("case", SHARED.values(), ids=SHARED.keys())
def test_ep_shared_layout(ckpt, mount, case):
    """-o ep_shared: the dense part of each shard and every pass-through file is one inode that
    every rank folder lists (nlink = the folders), the rank's expert slices are in
    NAME-experts.safetensors, the index names both; the keys and bytes are the plain rank
    folders', which check_view holds to the contract."""
    src, opts = case
    plain = mount(ckpt[src], None, "-o", opts)
    m = mount(ckpt[src], None, "-o", opts + ",ep_shared")
    for f in rank_folders(plain)[:2]:
        w = opts.split(",")
        args = ["--ep-size", w[0].split("=")[1], "--ep-rank", f.split("-")[2]]
        if "shard" in f:
            args += ["--ep-shard-size", 2, "--ep-shard-rank", f.split("-")[4]]
        check_view(ckpt[src], plain / f, *args)
    assert rank_folders(m) == rank_folders(plain)
    ep_check("shared", m, plain)


def test_ep_shared_bytes_once(ckpt, mount):
    """Every rank folder read whole: the shared files are served once for all of them, each
    folder's own files are counted for it, and the folders' counts add up to bytes_served."""
    m = mount(ckpt["e10"], None, "-o", "ep_size=4,ep_shared")
    read_all(m)
    by = stat_field(m, "bytes_served_by_folder")
    assert sorted(by) == sorted(rank_folders(m) + ["shared"])
    shared = sum(os.path.getsize(m / "ep-rank-0" / n) for n in os.listdir(m / "ep-rank-0")
                 if not n.startswith(".") and os.stat(m / "ep-rank-0" / n).st_nlink == 4)
    own = {f: sum(os.path.getsize(m / f / n) for n in os.listdir(m / f)
                  if not n.startswith(".") and os.stat(m / f / n).st_nlink == 1)
           for f in rank_folders(m)}
    assert by["shared"] == shared and all(by[f] == own[f] for f in own), (by, shared, own)
    assert sum(by.values()) == stat_field(m, "bytes_served")
    with open(m / ".qvlmoefs" / "stats") as f:
        assert json.load(f)["bytes_served_by_folder"]["shared"] == shared


@pytest.mark.parametrize("opts", ["ep_shared", "ep_size=4,ep_rank=1,ep_shared"])
def test_ep_shared_needs_rank_folders(ckpt, mount, tmp, opts):
    """-o ep_shared is a layout of the rank folders: without them it does not mount."""
    out = mount.fail(ckpt["e10"], tmp / "m", "-o", opts, stderr=subprocess.STDOUT).stdout
    assert "ep_shared needs ep_size without ep_rank" in out, out


# --------------------------------------------------------- statfs while rank folders are built


def test_statfs_stress_while_rank_folders_build(daemon, ckpt, tmp):
    """statfs in a loop while rank folders are built on first use: the totals only ever grow,
    end at the sum of every file shown, and (under the thread sanitizer, which runs the tests
    named *stress*) no data race between the two."""
    src = ckpt.make("e64", "--experts", "64")
    m = tmp / "m"
    daemon(src, m, "-o", "ep_size=64")
    stop, seen = threading.Event(), []

    def statfs_loop():
        """statvfs as fast as it goes, remembering the block counts."""
        while not stop.is_set():
            seen.append(os.statvfs(m).f_blocks)

    th = threading.Thread(target=statfs_loop)
    th.start()
    try:
        for r in range(64):
            os.listdir(m / f"ep-rank-{r}")
    finally:
        stop.set()
        th.join()
    assert seen == sorted(seen), "statfs totals went down while folders were built"
    print(f"{len(seen)} statfs calls, blocks {seen[0]} -> {seen[-1]}")


# --------------------------------------------------- a rank folder copied out and sliced again


@pytest.fixture
def rank_copy(ckpt, mount, tmp):
    """ep-rank-1 of an ep_size=2 mount of the HF checkpoint (native names, experts 4-7 of 8 in
    each expert tensor, qvlmoefs.ep_* in every shard), copied out with cp -r."""
    m = mount(ckpt["hf"], None, "-o", "ep_size=2")
    run("cp", "-r", m / "ep-rank-1", tmp / "copy")
    mount.umount(m)
    meta, _ = read_tensors(tmp / "copy" / "model-00001-of-00002.safetensors")
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
    meta, _ = read_tensors(m / "model-00001-of-00002.safetensors")
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
    meta, tensors = read_tensors(shard)
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
