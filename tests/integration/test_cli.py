"""The command line: exit codes, mount(8) integration, refusing bad sources and options, help,
and the node mount script (idempotent for the same view; refusing a one-rank mount or another
view in the way, naming it; rank x shard folders).
"""
import json
import os
import re
import shlex
import struct
import subprocess

import pytest

import helpers
from helpers import BUILD, PY, QV, ROOT, check_view, run, wait_for


def start_foreground(src, mnt, log):
    """Start `QV -f src mnt` in the background (stderr to log); wait up to 5 s for the mount."""
    mnt.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as err:
        p = subprocess.Popen([str(QV), "-f", str(src), str(mnt)], stdout=subprocess.DEVNULL, stderr=err)
    wait_for(lambda: helpers.mountpoint(mnt), timeout=5)
    return p


def test_clean_unmount_exit_code(ckpt, fuse, tmp):
    """A foreground daemon exits 0 when unmounted, by fusermount3 -u and by umount."""
    m, log = tmp / "m", tmp / "daemon.log"
    p = start_foreground(ckpt["hf"], m, log)
    try:
        assert helpers.mountpoint(m), f"foreground mount did not appear; log: {log.read_text()}"
        (m / "config.json").read_bytes()
        run("fusermount3", "-u", m, timeout=30)
        assert p.wait(timeout=30) == 0, f"exit status after fusermount3 -u; log: {log.read_text()}"
        p = start_foreground(ckpt["hf"], m, log)
        run("umount", m, timeout=30)
        assert p.wait(timeout=30) == 0, f"exit status after umount; log: {log.read_text()}"
    finally:
        if p.poll() is None:
            helpers.unmount_all(tmp)
            p.kill()
            p.wait()


def test_mount_t_fuse(ckpt, fuse, tmp):
    """`mount -t fuse.qvlmoefs` works after make install (mount(8)-only options are dropped).
    Installed and mounted in a private mount namespace whose /usr/local and /sbin are overlays,
    so the machine's own folders are never written (the test used to install there)."""
    why = helpers.private_ns_missing()
    if why:
        pytest.skip(why)
    m = tmp / "m"
    m.mkdir()
    script = f"""
make -s -C {shlex.quote(str(ROOT))} install BUILD={shlex.quote(BUILD)} >&2
mount -t fuse.qvlmoefs {shlex.quote(str(ckpt["hf"]))} {shlex.quote(str(m))} -o ro,view=native,nofail
grep -c " {m} fuse.qvlmoefs " /proc/mounts
{shlex.quote(PY)} {shlex.quote(str(ROOT / "tests" / "check_view.py"))} {shlex.quote(str(ckpt["hf"]))} \
    {shlex.quote(str(m))} --view native
umount {shlex.quote(str(m))}
"""
    p = helpers.in_private_ns(tmp, script, timeout=600)
    assert p.returncode == 0, helpers._show(["in_private_ns", script], p.returncode, p.stdout, p.stderr)
    assert p.stdout.split()[0] == "1", p.stdout
    assert not helpers.mountpoint(m), "the namespace's mount is visible outside it"
    for d in helpers.SYSTEM_DIRS:
        assert not os.path.exists(f"{d}/mount.fuse.qvlmoefs") and \
            not os.path.exists(f"{d}/bin/qvlmoefs"), f"make install wrote to the real {d}"
    assert (tmp / "ns" / "upper1" / "mount.fuse.qvlmoefs").is_file()


# ---------------------------------------------------------------- malformed sources

def tensor(b, e, shape=None):
    """A BF16 header entry for data [b, e)."""
    return {"dtype": "BF16", "shape": shape or [(e - b) // 2], "data_offsets": [b, e]}


DUP = (b'{"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]},'
       b'"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}')
# name: (header object or raw header bytes, data, header length written or None, message part)
MALFORMED = {
    "badjson": (b'{"a": {"dtype": "BF16", ', b"", None, "not valid JSON"),
    "dupkey": (DUP, b"xx", None, "duplicate header key"),
    "dtype": ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 2]}}, b"xx", None, "unknown dtype"),
    "overlap": ({"a": tensor(0, 4), "b": tensor(2, 6)}, b"x" * 6, None, "overlaps"),
    "pastend": ({"a": tensor(0, 8)}, b"x" * 4, None, "past end"),
    "hdrlen": (b"{}", b"", 1000, "past end of file"),
    "hole": ({"a": tensor(0, 2), "b": tensor(4, 6)}, b"x" * 6, None, "hole"),
    "shape": ({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 2]}}, b"xx", None, "shape x dtype"),
}
SHARD = "model-00001-of-00001.safetensors"


@pytest.mark.parametrize("case", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_source_rejected(mount, tmp, case):
    """A bad source fails before mounting, with one line that names the file and the problem."""
    header, data, hlen, want = case
    src = tmp / "bad"
    src.mkdir()
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    (src / SHARD).write_bytes(struct.pack("<Q", len(raw) if hlen is None else hlen) + raw + data)
    p = mount.fail(src, tmp / "m", stderr=subprocess.STDOUT)
    out = p.stdout.rstrip("\n")
    assert "\n" not in out, f"not one line: {out}"
    assert re.search(re.escape(SHARD) + ".*" + re.escape(want), out, re.S), \
        f"message lacks the file or {want!r}: {out}"


BAD_OPTIONS = {
    "view": ["-o", "view=bogus"], "io": ["-o", "io=aio"], "gpu": ["-o", "gpu=0"],
    "rank_without_size": ["-o", "ep_rank=1"], "exclude_regex": ["-o", "exclude=(?=x)"],
}


@pytest.mark.parametrize("opts", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_option_rejected(ckpt, mount, tmp, opts):
    """A bad option value fails and mounts nothing."""
    mount.fail(ckpt["hf"], tmp / "m", *opts)


def test_missing_source_rejected(mount, tmp):
    """A source folder that does not exist fails and mounts nothing."""
    mount.fail(tmp / "nonexistent", tmp / "m")


def test_help_and_version():
    """--help lists the view option and FUSE's allow_other; -V names the version."""
    out = run(QV, "--help", check=False).stdout
    assert "view=native|hf" in out
    assert "allow_other" in out
    assert "qvlmoefs version" in run(QV, "-V", check=False).stdout


NODE_MOUNT = ROOT / "mount-scripts" / "qvlmoefs-node-mount"


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_node_mount_script(ckpt, fuse, tmp, relative):
    """qvlmoefs-node-mount mounts all ranks and is idempotent, also when the mount point is
    given relative to the current folder (it used to mount a second time), and rank folders
    are right."""
    m = tmp / "m"
    arg = "m" if relative else m
    env = dict(os.environ, QVLMOEFS=str(QV))
    run(NODE_MOUNT, ckpt["e10"], arg, 4, "view=native", env=env, cwd=tmp)
    assert "already mounted" in run(NODE_MOUNT, ckpt["e10"], arg, 4, env=env, cwd=tmp).stdout
    assert helpers.mounts_below(tmp) == [str(m)], helpers.mounts_below(tmp)
    check_view(ckpt["e10"], m / "ep-rank-2", "--ep-size", 4, "--ep-rank", 2)


@pytest.mark.parametrize("change", ["ep_size", "source"])
def test_node_mount_script_refuses_another_view(ckpt, fuse, tmp, change):
    """Run again with another EP size (or source), the script fails naming what is mounted,
    instead of saying "already mounted", exiting 0 and keeping the old view."""
    m, env = tmp / "m", dict(os.environ, QVLMOEFS=str(QV))
    run(NODE_MOUNT, ckpt["e10"], m, 4, env=env)
    again = (ckpt["e10"], 2) if change == "ep_size" else (ckpt["hf"], 4)
    p = run(NODE_MOUNT, again[0], m, again[1], env=env, check=False)
    assert p.returncode != 0, f"exit 0 with {change} changed: {p.stdout}{p.stderr}"
    assert "already mounted with ep_size=4" in p.stderr and "fusermount3 -u" in p.stderr, p.stderr
    assert helpers.mounts_below(tmp) == [str(m)], helpers.mounts_below(tmp)
    assert sorted(os.listdir(m)) == [f"ep-rank-{r}" for r in range(4)]


def node_mount(src, mnt, w, *extra, check=True):
    """Run qvlmoefs-node-mount SRC MNT W [OPTIONS] with this build's qvlmoefs."""
    env = dict(os.environ, QVLMOEFS=str(QV))
    return run(NODE_MOUNT, src, mnt, w, *extra, env=env, check=check)


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


# ---------------------------------------------------------------- mistakes refused before mounting

def _copy_source(ckpt, tmp):
    """A writable copy of the HF checkpoint under tmp (tests that put folders into it)."""
    src = tmp / "src"
    run("cp", "-r", ckpt["hf"], src)
    return src


# name: (make (source, mount point) in tmp, part of the message, option that allows it or None)
MISTAKES = {
    "empty_folder": (lambda c, t: (t / "empty", t / "m"), "no *.safetensors file", "allow_empty"),
    "no_safetensors": (lambda c, t: (t / "cfg", t / "m"), "no *.safetensors file", "allow_empty"),
    "mounted_twice": (lambda c, t: (c["hf"], t / "m"), "already a mount point", "overmount"),
    "inside_source": (lambda c, t: (_copy_source(c, t), t / "src" / "sub"), "inside the source",
                      None),
    "source_itself": (lambda c, t: (_copy_source(c, t), t / "src"), "the source folder itself",
                      None),
    "holds_source": (lambda c, t: (_copy_source(c, t), t), "holds the source", None),
    "regular_file": (lambda c, t: (c["hf"], t / "file"), "is not a folder", None),
}


@pytest.mark.parametrize("case", MISTAKES.values(), ids=MISTAKES.keys())
def test_mount_mistake_refused(ckpt, mount, tmp, case):
    """Mistakes that used to mount with exit 0 and fail later are refused before mounting with
    one line (exit non-zero); the option named in the line mounts anyway where that can work."""
    make, want, allow = case
    (tmp / "empty").mkdir()
    (tmp / "cfg").mkdir()
    (tmp / "cfg" / "config.json").write_text("{}")
    (tmp / "file").write_text("")
    src, mnt = make(ckpt, tmp)
    if not mnt.exists():
        mnt.mkdir()
    if want == "already a mount point":
        mount(src, mnt)
    before = helpers.mounts_below(tmp)
    p = run(QV, src, mnt, check=False, stderr=subprocess.STDOUT, timeout=60)
    out = p.stdout.rstrip("\n")
    assert p.returncode != 0, f"exit 0 for the mistake {want!r}; output: {out}"
    assert "\n" not in out and want in out, f"not one line saying {want!r}: {out}"
    assert helpers.mounts_below(tmp) == before, f"something got mounted: {helpers.mounts_below(tmp)}"
    if allow:
        assert f"-o {allow}" in out, f"the message does not name -o {allow}: {out}"
        run(QV, src, mnt, "-o", allow, timeout=60)
        assert len(helpers.mounts_below(tmp)) == len(before) + 1
        if allow == "allow_empty":
            assert sorted(os.listdir(mnt)) == sorted(os.listdir(src))


@pytest.mark.parametrize("opts", ["ep_size=16", "ep_size=16,ep_rank=5"])
def test_ep_size_over_experts_is_one_line(ckpt, mount, tmp, opts):
    """ep_size above the expert count (16 on the 8-expert sample) fails with the one line that
    gives the accepted range, without the "do not divide" warning before it (which said that
    the first 8 ranks would hold one more expert)."""
    for args in ([QV, "inspect", ckpt["hf"], "-o", opts], None):
        if args is None:
            p = mount.fail(ckpt["hf"], None, "-o", opts, stderr=subprocess.STDOUT)
        else:
            p = run(*args, check=False, stderr=subprocess.STDOUT)
            assert p.returncode != 0
        out = p.stdout.rstrip("\n")
        assert "\n" not in out and "give ep_size from 1 to 8" in out, out
