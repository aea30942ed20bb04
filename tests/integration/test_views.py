"""Views of generated checkpoints, checked byte for byte by the independent checker.

The basic views (forward, reverse, identity) run under both source readers (io=uring and
io=pread) and with and without -o direct_io, since each combination is a different read path
in the daemon; the checker reads every byte in each case. Under direct_io only MAP_PRIVATE
mmap works (README), so the checker compares mmap with read() through a private mapping there.
A source whose index names a key its shard lacks is refused at mount, in every kind of view.
"""
import errno
import filecmp
import hashlib
import json
import mmap
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess

import pytest

from checkview.reader import read_header, read_tensors
from helpers import PY, ROOT, check_view, one_line_naming, run, write_st

INDEX = "model.safetensors.index.json"


@pytest.fixture(params=["uring", "pread", "nosplice"])
def io_mode(request):
    """How the daemon reads its sources (both splice single runs; nosplice: io_uring, and
    every reply copied through the daemon)."""
    return request.param


@pytest.fixture(params=[False, True], ids=["cached", "direct_io"])
def direct_io(request):
    """Whether read() bypasses the page cache."""
    return request.param


def options(io_mode, direct_io, *more):
    """The -o argument for a reader, direct_io or not, and further options."""
    io = ["io=uring", "nosplice"] if io_mode == "nosplice" else [f"io={io_mode}"]
    return ["-o", ",".join(io + (["direct_io"] if direct_io else []) + list(more))]


def mmap_args(direct_io):
    """Checker arguments: MAP_SHARED is refused under direct_io, so map privately there."""
    return ["--mmap", "private"] if direct_io else []


def index_text(mnt):
    """The generated index of a view's root, as text."""
    return (mnt / INDEX).read_text()


def names(folder):
    """What `ls folder` lists: the entries not starting with a dot."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


# ---------------------------------------------------------------- the basic views

def test_forward_native_view(ckpt, mount, io_mode, direct_io):
    """An HF source shows native names by default; the index names only native expert keys."""
    m = mount(ckpt["hf"], None, *options(io_mode, direct_io))
    check_view(ckpt["hf"], m, "--view", "native", *mmap_args(direct_io))
    idx = index_text(m)
    assert "gate_and_up_projs" in idx
    assert not re.search(r'"[^"]*experts.gate_up_proj"', idx), "index still names an HF expert key"


def test_reverse_hf_view(ckpt, mount, io_mode, direct_io):
    """A native source shows HF names by default, leaving out _extra_state (default exclude)."""
    m = mount(ckpt["native"], None, *options(io_mode, direct_io))
    check_view(ckpt["native"], m, "--view", "hf", *mmap_args(direct_io))
    assert "_extra_state" not in index_text(m)


@pytest.mark.parametrize("naming", ["hf", "native"])
def test_identity_view(ckpt, mount, io_mode, direct_io, naming):
    """view= the source's own naming is allowed and changes no name."""
    m = mount(ckpt[naming], None, *options(io_mode, direct_io, f"view={naming}"))
    check_view(ckpt[naming], m, "--view", naming, *mmap_args(direct_io))


def data_starts(path):
    """{key: offset in the file of its first byte} of a safetensors file."""
    hdr, n = read_header(path)
    hdr.pop("__metadata__", None)
    return {k: 8 + n + v["data_offsets"][0] for k, v in hdr.items()}


def test_tensors_keep_their_page_offsets(ckpt, mount):
    """A converted file's header is padded so its tensors lie at the same offset within a page
    as in the source (the kernel then copies a spliced reply page to page), and stays 8-byte
    aligned; files whose names do not change keep their header as it was."""
    m = mount(ckpt["hf"], None)
    padded = 0
    for src in sorted(ckpt["hf"].glob("*.safetensors")):
        s, v = data_starts(src), data_starts(m / src.name)
        # the native names of the HF keys, matched by size and order: the view keeps the order
        s_order = sorted(s.values())
        v_order = sorted(v.values())
        assert len(s_order) == len(v_order), src.name
        shifts = {(b - a) % 4096 for a, b in zip(s_order, v_order)}
        assert shifts == {0}, f"{src.name}: tensors moved within their pages by {sorted(shifts)}"
        assert all(o % 8 == 0 for o in v_order), f"{src.name}: data not 8-byte aligned"
        padded += min(v_order) != min(s_order)
    print(f"{padded} files got a longer header")


def test_direct_io_mmap(ckpt, mount):
    """Under direct_io MAP_PRIVATE mmap equals read() and MAP_SHARED fails with ENODEV (README)."""
    m = mount(ckpt["hf"], None, "-o", "direct_io")
    shard = m / "model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    with open(shard, "rb") as f:
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mm:
            assert mm[:] == data
        with pytest.raises(OSError) as e:
            mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        assert e.value.errno == errno.ENODEV


CHECK_VIEW = ROOT / "tests" / "check_view.py"


@pytest.mark.parametrize("mmap_opt", [[], ["--mmap", "auto"], ["--mmap", "shared"]],
                         ids=["default", "auto", "shared"])
def test_check_view_command_on_direct_io(ckpt, mount, mmap_opt):
    """tests/check_view.py checks a direct_io mount as it is: by default it maps MAP_SHARED and,
    refused (ENODEV), MAP_PRIVATE, saying so once; asked for MAP_SHARED it reports the refusal
    as a mismatch, not as a traceback."""
    m = mount(ckpt["hf"], None, "-o", "direct_io")
    p = run(PY, CHECK_VIEW, ckpt["hf"], m, "--view", "native", *mmap_opt, check=False)
    assert "Traceback" not in p.stderr, p.stderr
    if mmap_opt[-1:] == ["shared"]:
        assert p.returncode != 0 and "mmap (shared) failed" in p.stderr, p.stderr
    else:
        assert p.returncode == 0, f"{p.stdout}{p.stderr}"
        assert p.stderr.count("MAP_SHARED mmap refused") == 1, p.stderr


# ---------------------------------------------------------------- exclude patterns

def test_reverse_custom_exclude(ckpt, mount):
    """A custom exclude replaces the default one, so _extra_state keys come back."""
    pat = r"model\.visual\..*"
    m = mount(ckpt["native"], None, "-o", f"exclude={pat}")
    check_view(ckpt["native"], m, "--view", "hf", "--exclude", pat)
    assert "_extra_state" in index_text(m)


def test_exclude_sees_hf_name(ckpt, mount):
    """The pattern sees the converted (HF) name, as in Automodel's to_hf."""
    pat = r".*\.gate_up_proj$"
    m = mount(ckpt["native"], None, "-o", f"exclude={pat}")
    check_view(ckpt["native"], m, "--view", "hf", "--exclude", pat)
    idx = index_text(m)
    assert 'experts.gate_up_proj"' not in idx
    assert 'experts.down_proj"' in idx


# ---------------------------------------------------------------- unusual sources

@pytest.mark.parametrize("name, absent", [("odd", "_scale_inv"), ("noprefix", None)])
def test_unusual_sources(ckpt, mount, name, absent):
    """Unpadded, shuffled, metadata-less, reverse-ordered, 3-shard (odd) and prefix-less,
    single-shard (noprefix) sources; _scale_inv keys do not reach a native index."""
    m = mount(ckpt[name])
    check_view(ckpt[name], m)
    if absent:
        assert absent not in index_text(m)


def test_hf_cache_snapshot(ckpt, mount, tmp):
    """A Hugging Face cache snapshot (links into ../../blobs) shows its files as plain files."""
    repo = tmp / "cache" / "models--Qwen--tiny"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(ckpt["hf"].iterdir()):
        h = hashlib.sha256(f.read_bytes()).hexdigest()[:40]
        shutil.copyfile(f, repo / "blobs" / h)
        (snap / f.name).symlink_to(f"../../blobs/{h}")
    m = mount(snap)
    check_view(snap, m)
    assert not (m / "config.json").is_symlink() and (m / "config.json").is_file()


def test_nested_and_links(ckpt, mount, tmp):
    """Nested folders and inside links are shown; escaping and dangling links, FIFOs, devices
    and sockets are not."""
    s = tmp / "nested"
    shutil.copytree(ckpt["hf"], s)
    (s / "sub" / "deeper").mkdir(parents=True)
    (s / "more").mkdir()
    (s / "sub" / "deeper" / "notes.txt").write_text("hello\n")
    shutil.copyfile(ckpt["hf"] / "model-00001-of-00002.safetensors", s / "more" / "extra.safetensors")
    (s / "sub" / "config-link.json").symlink_to("../config.json")
    (s / "escape").symlink_to("/etc/passwd")
    (s / "sub" / "escape-dir").symlink_to("../../../../../../etc")
    (s / "dangling").symlink_to("nowhere")
    os.mkfifo(s / "fifo")
    if os.getuid() == 0:
        os.mknod(s / "chardev", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(s / "sock"))
    m = mount(s)
    check_view(s, m)
    for gone in ("escape", "fifo", "dangling", "chardev", "sock", "sub/escape-dir"):
        assert not os.path.lexists(m / gone), f"{gone} is shown in the view"
    assert filecmp.cmp(s / "sub" / "deeper" / "notes.txt", m / "sub" / "deeper" / "notes.txt", shallow=False)
    assert filecmp.cmp(s / "config.json", m / "sub" / "config-link.json", shallow=False)


# ---------------------------------------------------------------- read-only, mmap, concurrency

MUTATIONS = {  # id: shell command; {m} is the mountpoint, {f} its config.json
    "create": "touch {m}/new", "append": "sh -c 'echo x >> {f}'", "mkdir": "mkdir {m}/d",
    "unlink": "rm -f {f}", "rename": "mv {f} {m}/x", "chmod": "chmod 777 {f}",
    "truncate": "truncate -s 0 {f}", "symlink": "ln -s x {m}/l", "link": "ln {f} {m}/hard",
    "chown": "chown 1:1 {f}", "utimes": "touch -d 2001-01-01 {f}", "rmdir": "rmdir {m}/nodir",
    "setxattr": "{py} -c 'import os; os.setxattr(\"{f}\", \"user.x\", b\"1\")'",
}


@pytest.mark.parametrize("command", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_erofs(ckpt, mount, command):
    """Every kind of change fails with EROFS ("Read-only file system" / Errno 30) and leaves the
    file as it was (mode 444, folder 555, same bytes)."""
    m = mount(ckpt["hf"])
    f = m / "config.json"
    cmd = command.format(m=shlex.quote(str(m)), f=f, py=shlex.quote(PY))
    p = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=60)
    assert p.returncode != 0, f"mutation succeeded: {cmd}"
    assert "Read-only file system" in p.stdout or "Errno 30" in p.stdout, \
        f"unexpected error for {cmd}: {p.stdout}"
    assert oct(os.stat(f).st_mode & 0o7777) == "0o444"
    assert oct(os.stat(m).st_mode & 0o7777) == "0o555"
    assert filecmp.cmp(ckpt["hf"] / "config.json", f, shallow=False)


def test_mmap_equals_read(ckpt, mount):
    """MAP_PRIVATE and MAP_SHARED mappings of every file equal its read() contents."""
    m = mount(ckpt["hf"])
    for name in sorted(os.listdir(m)):
        p = m / name
        if p.is_dir():
            continue
        data = p.read_bytes()
        assert len(data) == os.path.getsize(p), name
        for flags in (mmap.MAP_PRIVATE, mmap.MAP_SHARED):
            with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as mm:
                assert mm[:] == data, (name, flags)


def test_concurrent_readers(ckpt, mount, tmp):
    """Eight processes reading every file at once all see the bytes of a sequential copy."""
    m = mount(ckpt["hf"])
    files = [p for p in sorted(m.iterdir()) if not p.name.startswith(".") and p.is_file()]
    ref = tmp / "ref"
    ref.mkdir()
    for p in files:
        shutil.copyfile(p, ref / p.name)
    cat = "cat " + " ".join(shlex.quote(str(p)) for p in files) + " | md5sum"
    procs = [subprocess.Popen(cat, shell=True, stdout=subprocess.PIPE, text=True) for _ in range(8)]
    sums = [p.communicate(timeout=120)[0].split()[0] for p in procs]
    want = hashlib.md5(b"".join((ref / p.name).read_bytes() for p in files)).hexdigest()
    assert sums == [want] * 8


def test_uring_and_pread_identical(ckpt, mount):
    """The two source readers give identical trees (diff -r), and the pread one is right."""
    m1 = mount(ckpt["odd"], None, "-o", "io=uring")
    m2 = mount(ckpt["odd"], None, "-o", "io=pread")
    run("diff", "-r", "-x", ".qvlmoefs", m1, m2)
    check_view(ckpt["odd"], m2)


def test_statfs_and_listing(ckpt, mount):
    """statfs answers, the root lists the source's entries, inode numbers survive a remount."""
    m = mount(ckpt["hf"])
    run("df", m)
    assert len(names(m)) == len(names(ckpt["hf"]))
    i1 = os.stat(m / "config.json").st_ino
    mount.umount(m)
    mount(ckpt["hf"], m)
    assert os.stat(m / "config.json").st_ino == i1, "inode numbers differ across mounts"


# ------------------------------------------------------- an index naming a key its shard lacks


def drop_key(src, key):
    """Re-save the shard that src's index says holds key without it; the index still names it.
    Returns the shard's name."""
    shard = json.loads((src / INDEX).read_text())["weight_map"][key]
    meta, tensors = read_tensors(src / shard)
    del tensors[key]
    write_st(src / shard, meta, tensors)
    return shard


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


@pytest.mark.parametrize("opts", [[], ["-o", "ep_size=8"], ["-o", "view=hf"]],
                         ids=["native", "ep_size", "hf"])
def test_missing_shard_refused_by_name(ckpt, mount, tmp, opts):
    """A checkpoint missing the shard that holds its experts: one line naming the index and the
    shard, whatever the options (with ep_size it said "no expert tensors found"; without, a log
    line first said there was nothing to rename)."""
    src = tmp / "src"
    run("cp", "-r", ckpt["hf"], src)
    shards = sorted(src.glob("model-*.safetensors"))
    shards[-1].unlink()
    p = mount.fail(src, None, *opts, stderr=subprocess.STDOUT)
    one_line_naming(p.stdout, INDEX, shards[-1].name, "missing shard")


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
