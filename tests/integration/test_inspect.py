"""The inspection surface: the hidden .qvlmoefs/ folder, the user.qvlmoefs.* xattrs and the
`qvlmoefs inspect` subcommand.

What these report must agree with what the view serves: every header, tensor byte, dtype,
shape and source name is compared with the view's own files (and the source), so a tool that
trusts the inspection data reads what a loader would read. Tensor names no file may have are
left out of tensors/ (and logged once), and the size a caller gets for user.qvlmoefs.stats
always holds the value fetched next.
"""
import errno
import glob
import json
import os
import struct
import subprocess
import threading

import pytest

from checkview.reader import header_of, read_header
from helpers import QV, getxattr_raw, run, write_st
from support_daemon import daemon_fixture  # noqa: F401  (provides the `daemon` fixture)
from support_daemon import unmount

SECOND = "model-00002-of-00002.safetensors"

STATS_KEYS = ("requests", "bytes_served", "bytes_from_sources", "bytes_from_sources_uring",
              "bytes_from_sources_pread", "bytes_spliced", "errors", "open_files", "uptime_s")


def load(path):
    """The JSON document in a file."""
    with open(path) as f:
        return json.load(f)


def tensor_bytes(path, key):
    """The raw bytes of one tensor of a safetensors file."""
    hdr, n = read_header(path)
    b, e = hdr[key]["data_offsets"]
    with open(path, "rb") as f:
        f.seek(8 + n + b)
        return f.read(e - b)


def test_hidden_folder(mount, ckpt):
    """.qvlmoefs/ is read-only, invisible to globbing loaders and the index, and its stats
    count the requests made through the view."""
    m = mount(ckpt["e10"])
    h = m / ".qvlmoefs"
    assert h.is_dir() and not os.access(h, os.W_OK)
    found = [p for p in glob.glob(f"{m}/**/*.safetensors", recursive=True) if ".qvlmoefs" in p]
    assert not found, f"a recursive glob finds inspection files: {found}"
    assert ".qvlmoefs" not in (m / "model.safetensors.index.json").read_text()
    s1 = json.loads((h / "stats").read_text())
    (m / "config.json").read_bytes()
    s2 = json.loads((h / "stats").read_text())
    assert s2["opens"] > s1["opens"] and s2["bytes_served"] > s1["bytes_served"], (s1, s2)
    print("stats:", s2)


def check_inspection(view, src):
    """.qvlmoefs/ of one view root against the view's own files.

    stats has every counter, view.json names the source, each file's user.qvlmoefs.source
    names its source, each safetensors file's header equals headers/<file>.json, and each
    tensor file holds the tensor's bytes with its dtype, shape, file and extents as xattrs.
    """
    h = os.path.join(view, ".qvlmoefs")
    stats = load(f"{h}/stats")
    for k in STATS_KEYS:
        assert k in stats, k
    vj = load(f"{h}/view.json")
    assert vj["source"] == os.path.realpath(src), vj
    ntensors = 0
    for dirpath, _, files in os.walk(view):
        if ".qvlmoefs" in dirpath:
            continue
        for f in files:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, view)
            x = os.getxattr(p, "user.qvlmoefs.source").decode()
            if not f.endswith(".safetensors"):
                if not f.endswith(".index.json"):
                    assert x == rel or os.path.exists(os.path.join(src, x)), (rel, x)
                continue
            with open(p, "rb") as fh:
                raw = fh.read()
            hdr, n = header_of(raw)
            assert load(f"{h}/headers/{rel}.json") == hdr, rel
            for key, t in hdr.items():
                if key == "__metadata__":
                    continue
                tp = f"{h}/tensors/{key}"
                b, e = t["data_offsets"]
                with open(tp, "rb") as fh:
                    assert fh.read() == raw[8 + n + b:8 + n + e], key
                assert os.getxattr(tp, "user.qvlmoefs.dtype").decode() == t["dtype"]
                assert json.loads(os.getxattr(tp, "user.qvlmoefs.shape")) == t["shape"]
                assert os.getxattr(tp, "user.qvlmoefs.file").decode() == rel
                assert os.getxattr(tp, "user.qvlmoefs.extents")
                ntensors += 1
    listed = len(os.listdir(f"{h}/tensors"))
    assert ntensors == listed, f"{ntensors} tensors in the view's files, {listed} in tensors/"
    print(f"{view}: {ntensors} tensor files, headers, xattrs and view.json agree")


# (checkpoint, mount options, the view root below the mount point)
INSPECTED = [("e10", (), "."), ("native", (), "."),
             ("e10n", ("-o", "ep_size=4,ep_shard_size=2"), "ep-rank-3-shard-1")]


@pytest.mark.parametrize("name,opts,root", INSPECTED, ids=["e10", "native", "e10n-rank3-shard1"])
def test_inspection_folder_and_xattrs(mount, ckpt, name, opts, root):
    """The inspection folder of a view root agrees with the view (see check_inspection)."""
    m = mount(ckpt[name], None, *opts)
    check_inspection(os.path.join(m, root), ckpt[name])


def test_inspection_of_rank_views(mount, ckpt):
    """A rank folder's view.json gives its rank and expert range; the mount root has stats."""
    m = mount(ckpt["e10n"], None, "-o", "ep_size=4,ep_shard_size=2")
    vj = (m / "ep-rank-3-shard-1/.qvlmoefs/view.json").read_text()
    assert '"ep_rank": 3' in vj, vj
    assert '"expert_start": 8' in vj, vj
    assert (m / ".qvlmoefs/stats").is_file()


def test_inspection_xattrs_and_tensor_bytes(mount, ckpt):
    """Spot checks by hand: an expert tensor's shape xattr, a file's source xattr, and
    lm_head.weight's bytes in tensors/ equal to the source's."""
    src = ckpt["e10"]
    m = mount(src)
    tp = m / ".qvlmoefs/tensors/model.language_model.layers.1.mlp.experts.down_projs"
    assert "user.qvlmoefs.shape" in os.listxattr(tp)
    assert os.getxattr(tp, "user.qvlmoefs.shape") == b"[10,40,48]"
    first = "model-00001-of-00002.safetensors"
    assert os.getxattr(m / first, "user.qvlmoefs.source").decode() == first
    assert (m / ".qvlmoefs/tensors/lm_head.weight").read_bytes() == \
        tensor_bytes(src / "model-00002-of-00002.safetensors", "lm_head.weight")


# ---------------------------------------------------------------------------- qvlmoefs inspect

# (mount options, checkpoint)
INSPECT_CASES = [((), "e10"), (("-o", "ep_size=4,ep_rank=2"), "e10"), (("-o", "ep_size=2"), "e10"),
                 (("-o", "view=hf"), "native")]


@pytest.mark.parametrize("opts,name", INSPECT_CASES,
                         ids=["default", "ep_size=4,ep_rank=2", "ep_size=2", "view=hf"])
def test_inspect_agrees_with_mount(mount, ckpt, opts, name):
    """`inspect --keys --json` lists exactly the mounted files with their sizes, and each key's
    view name, shape and dtype as the mounted header has them."""
    src = ckpt[name]
    rep = json.loads(run(QV, "inspect", src, *opts, "--keys", "--json").stdout)
    m = mount(src, None, *opts)
    files = {}
    for d, dirs, fs in os.walk(m):
        dirs[:] = [x for x in dirs if x != ".qvlmoefs"]
        for f in fs:
            p = os.path.join(d, f)
            files[os.path.relpath(p, m)] = os.path.getsize(p)
    got = {f["path"]: f["size"] for f in rep["files"]}
    assert got == files, sorted(set(got) ^ set(files))
    keys = 0
    for k in rep["keys"]:
        t = read_header(os.path.join(m, k["folder"], k["file"]))[0][k["view_key"]]
        assert t["shape"] == k["view_shape"] and t["dtype"] == k["dtype"], k
        assert k["source_key"], k
        keys += 1
    assert keys > 0
    print(f"inspect: {len(files)} files and {keys} keys agree with the mount")


def test_inspect_refuses_too_many_ranks(ckpt):
    """inspect plans like the mount: more ranks than experts is an error."""
    p = run(QV, "inspect", ckpt["e10"], "-o", "ep_size=11", check=False)
    assert p.returncode != 0, "inspect accepted ep_size=11 for 10 experts"
    assert "ep_size=11 exceeds its 10 experts" in p.stdout + p.stderr, p.stdout + p.stderr


def test_inspect_error_is_the_mounts(mount, ckpt, tmp):
    """A bad source makes inspect fail with, word for word, the error the mount gives."""
    d = tmp / "dup"
    d.mkdir()
    (d / "config.json").write_bytes((ckpt["e10"] / "config.json").read_bytes())
    h = (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
         b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}')
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"x")
    p = run(QV, "inspect", d, check=False)
    assert p.returncode != 0, "inspect accepted a header with a duplicate key"
    out = p.stdout + p.stderr
    print(out, end="")
    failed = mount.fail(d, tmp / "m")
    assert out.rstrip("\n") == (failed.stdout + failed.stderr).rstrip("\n")


# ZFS's snapdir=hidden: reachable by path, left out of listings, counted once by statfs
LISTINGS = {"default": ([], False), "hidden": (["-o", "inspect_dir=hidden"], False),
            "visible": (["-o", "inspect_dir=visible"], True)}


def view_files(root):
    """Total size of the view's regular files below root, .qvlmoefs/ left out."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs
               if ".qvlmoefs" not in os.path.relpath(d, root).split(os.sep))


@pytest.mark.parametrize("case", LISTINGS.values(), ids=LISTINGS.keys())
@pytest.mark.parametrize("layout", [[], ["-o", "ep_size=2"]], ids=["view", "rank_folders"])
def test_inspect_dir_listed_only_when_asked(mount, ckpt, case, layout):
    """.qvlmoefs/ is absent from folder listings (root and rank folders) unless
    inspect_dir=visible, and reachable by path either way, so du, cp -r and rsync see each
    tensor once."""
    opts, visible = case
    m = mount(ckpt["hf"], None, *layout, *opts)
    roots = [m] if not layout else [m / "ep-rank-0", m / "ep-rank-1"]
    for r in ([m] if layout else []) + roots:
        assert (".qvlmoefs" in os.listdir(r)) == visible, f"{r}: {sorted(os.listdir(r))}"
        assert (r / ".qvlmoefs" / "stats").is_file(), f"{r}/.qvlmoefs not reachable by path"
    for r in roots:
        assert (r / ".qvlmoefs" / "tensors").is_dir() and os.listdir(r / ".qvlmoefs" / "tensors")
    if not visible:
        du = int(run("du", "-sb", m).stdout.split()[0])
        assert du == view_files(m), f"du -sb {m} = {du}, the view's files {view_files(m)}"
        assert all(".qvlmoefs" not in d for d, _, _ in os.walk(m))


@pytest.mark.parametrize("layout", [[], ["-o", "ep_size=2"]], ids=["view", "rank_folders"])
def test_statfs_counts_each_byte_once(mount, ckpt, layout):
    """df of a mount counts the view's files once, also after .qvlmoefs/ was filled (its
    tensors/ repeat the view's bytes)."""
    m = mount(ckpt["hf"], None, *layout)
    roots = [m] if not layout else [m / "ep-rank-0", m / "ep-rank-1"]
    for r in roots:  # fill the lazy folders, the inspection folders too
        os.listdir(r)
        os.listdir(r / ".qvlmoefs" / "tensors")
        os.listdir(r / ".qvlmoefs" / "headers")
    sv = os.statvfs(m)
    want = view_files(m)
    assert sv.f_blocks * sv.f_frsize == (want + 4095) // 4096 * 4096, \
        f"statfs says {sv.f_blocks * sv.f_frsize} bytes, the view's files are {want}"


def test_inspect_dir_bad_value_rejected(mount, ckpt):
    """inspect_dir takes hidden or visible only."""
    p = mount.fail(ckpt["hf"], None, "-o", "inspect_dir=shown", stderr=subprocess.STDOUT)
    assert "inspect_dir=shown: expected hidden or visible" in p.stdout, p.stdout


# -------------------------------------------------------- names the tensors folder cannot show


def test_tensor_names_that_are_no_file_names(daemon, tmp):
    """Keys that no file may be named ('.', '..', over 255 bytes, with '/') are left out of
    .qvlmoefs/tensors/ (logged once with their count); every listed name is one a file may have
    and the folder has one '.' and one '..'."""
    src = tmp / "names"
    src.mkdir()
    long_key = "k" * 1100
    tensors = {"..": b"\1" * 4, ".": b"\2" * 4, long_key: b"\3" * 4, "a/b": b"\4" * 4,
               "x" * 300: b"\5" * 4, "ok": b"\6" * 4}
    write_st(src / "model.safetensors", {"format": "pt"},
             {k: ("U8", [len(v)], v) for k, v in tensors.items()})
    m = tmp / "m"
    d = daemon(src, m, "-o", "view=hf")
    t = m / ".qvlmoefs/tensors"
    names = os.listdir(t)
    assert names == ["ok"], names
    p = subprocess.run(["ls", "-a", str(t)], stdout=subprocess.PIPE, text=True, check=True)
    assert p.stdout.split() == [".", "..", "ok"], p.stdout
    assert (t / "ok").read_bytes() == b"\6" * 4
    assert d.wait_log("left out 5 tensor names"), d.log()
    os.listdir(t)
    assert d.log().count("left out") == 1, d.log()
    unmount(m)
    assert d.wait() == 0


# -------------------------------------------------------------------------- xattr size queries


def test_stats_xattr_size_query_holds_the_value(mount, ckpt):
    """The size a caller gets for user.qvlmoefs.stats always fits the value fetched next, even
    when the counters grow in between (a read between the two calls, or readers under load)."""
    m = mount(ckpt["e10"])
    size, _ = getxattr_raw(m, "user.qvlmoefs.stats", 0)
    (m / SECOND).read_bytes()  # bytes_served goes from one digit to several
    n, value = getxattr_raw(m, "user.qvlmoefs.stats", size)
    assert json.loads(value)["bytes_served"] > 0 and n <= size
    stop, erange = threading.Event(), [0]

    def reader():
        """Keep the counters moving."""
        while not stop.is_set():
            with open(m / "config.json", "rb", buffering=0) as f:
                f.read()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        for _ in range(5000):
            size, _ = getxattr_raw(m, "user.qvlmoefs.stats", 0)
            try:
                getxattr_raw(m, "user.qvlmoefs.stats", size)
            except OSError as e:
                assert e.errno == errno.ERANGE, e
                erange[0] += 1
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert erange[0] == 0, f"{erange[0]} of 5000 fetches got ERANGE"
