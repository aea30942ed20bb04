"""Hardening (issue 14, part A): what other users may read, generations freed after rescans,
names that folders and files may have, xattr size queries, access(), statfs while folders are
built, and replies the kernel did not take.

Each test is one behaviour; the other users' tests need root (to create the test user and to
mount with allow_other), as test_reliability.py's do.
"""
import ctypes
import ctypes.util
import errno
import json
import os
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import threading
import time

import pytest

from helpers import QV, check_view, run, wait_for
from support_daemon import daemon_fixture  # noqa: F401  (provides the `daemon` fixture)
from support_daemon import fd_targets, rss_kib, run_merged, unmount


SECOND = "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"
TEST_USER = "qvlmoefs-test"


# ---------------------------------------------------------------------------- helpers


def as_user(cmd):
    """Run a shell command as TEST_USER; (exit status, output)."""
    return run_merged("su", TEST_USER, "-s", "/bin/sh", "-c", cmd, timeout=60, cwd="/")


def need_test_user():
    """Skip without root; create TEST_USER when missing; return its gid."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user and mount with allow_other")
    if run("id", TEST_USER, check=False).returncode != 0:
        run("useradd", "-M", "-s", "/bin/sh", TEST_USER)
    return int(run("id", "-g", TEST_USER).stdout)


def user_reads(path):
    """True when TEST_USER can read the whole file at path (cat succeeds)."""
    return as_user(f"cat {shlex.quote(str(path))} >/dev/null 2>&1")[0] == 0


def user_lists(path):
    """True when TEST_USER can list the folder at path."""
    return as_user(f"ls {shlex.quote(str(path))} >/dev/null 2>&1")[0] == 0


class Log:
    """A daemon's log read incrementally, so waiting for the n-th line stays cheap."""

    def __init__(self, d):
        """Start reading d's log from its beginning."""
        self.d, self.pos, self.text = d, 0, ""

    def count(self, what):
        """How often what occurs in the log so far."""
        with open(self.d.log_path, "rb") as f:
            f.seek(self.pos)
            chunk = f.read()
        self.pos += len(chunk)
        self.text += chunk.decode(errors="replace")
        return self.text.count(what)


def rescan(d, log, n_before):
    """SIGHUP d and wait until its log holds one more rescan outcome; return the new count."""
    d.signal(signal.SIGHUP)
    outcome = ("rescanned the source", "rescan failed")
    ok = wait_for(lambda: sum(log.count(w) for w in outcome) > n_before, timeout=10,
                  interval=0.0005)
    assert ok, f"no rescan outcome logged after SIGHUP:\n{d.log()[-2000:]}"
    return sum(log.text.count(w) for w in outcome)


def write_st(path, tensors):
    """A minimal safetensors file: tensors maps name -> bytes (each a 1-D U8 tensor)."""
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for name, data in tensors.items():
        hdr[name] = {"dtype": "U8", "shape": [len(data)], "data_offsets": [off, off + len(data)]}
        off += len(data)
    j = json.dumps(hdr, separators=(",", ":")).encode()
    j += b" " * (-(8 + len(j)) % 8)
    path.write_bytes(struct.pack("<Q", len(j)) + j + b"".join(tensors.values()))


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def getxattr_raw(path, name, size):
    """getxattr(2) with a buffer of size bytes (size 0: the size query); (length, bytes)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.getxattr(str(path).encode(), name.encode(), buf if size else None,
                       ctypes.c_size_t(size))
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    return n, buf.raw[:n] if size else b""


def held_fds(pid):
    """Descriptors of pid other than io_uring rings (which come and go with worker threads)."""
    return [t for t in fd_targets(pid) if t != "anon_inode:[io_uring]"]


def stats(mnt):
    """The daemon's counters (user.qvlmoefs.stats of the root)."""
    return json.loads(os.getxattr(str(mnt), "user.qvlmoefs.stats"))


def generations(mnt):
    """Generations the daemon holds (1 when it does not say: the descriptors tell then)."""
    return stats(mnt).get("generations", 1)


# ---------------------------------------------------------------------------- 1: other users


def test_other_user_reads_what_the_source_allows(mount, ckpt, tmp):
    """With allow_other, a second user reads through the mount exactly the files it can read
    in the source: owners, groups and modes of the sources carry over (less write bits), and
    the index and the inspection files of an unreadable shard are unreadable too."""
    gid = need_test_user()
    src = tmp / "perm"
    shutil.copytree(ckpt["e10"], src)
    (src / "secret.txt").write_text("top secret\n")
    (src / "secret.txt").chmod(0o600)
    (src / "group.txt").write_text("for the group\n")
    os.chown(src / "group.txt", 0, gid)
    (src / "group.txt").chmod(0o640)
    (src / "private").mkdir()
    (src / "private/inner.txt").write_text("inside a 0700 folder\n")
    (src / "private").chmod(0o700)
    (src / SECOND).chmod(0o600)
    m = mount(src, None, "-o", "allow_other")
    files = ["config.json", "secret.txt", "group.txt", "private/inner.txt",
             "model-00001-of-00002.safetensors", SECOND]
    got = {f: (user_reads(src / f), user_reads(m / f)) for f in files}
    print(got)
    assert {f: s for f, (s, _) in got.items()} == {f: v for f, (_, v) in got.items()}, \
        f"(source, view) readable by {TEST_USER} differ: {got}"
    assert got["secret.txt"] == (False, False) and got["group.txt"] == (True, True)
    assert user_lists(m) and not user_lists(m / "private")
    st = os.stat(m / "group.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o440), st
    # generated files show no more than the sources they come from
    assert user_reads(src / INDEX) and not user_reads(m / INDEX), "index names the 0600 shard's keys"
    assert user_reads(m / ".qvlmoefs/view.json")
    h = m / ".qvlmoefs"
    assert not user_reads(h / "headers" / f"{SECOND}.json")
    assert user_reads(h / "headers" / "model-00001-of-00002.safetensors.json")
    assert not user_lists(h / "tensors"), "tensors/ lists the 0600 shard's keys"
    assert user_reads(h / "tensors/model.visual.pos_embed.weight")  # in shard 1
    assert not user_reads(h / "tensors/lm_head.weight")  # in the 0600 shard 2


def test_other_user_stopped_by_folders_above_the_source(mount, ckpt, tmp):
    """A source below a folder the user cannot search stays out of reach through the mount."""
    need_test_user()
    outer = tmp / "closed"
    outer.mkdir()
    shutil.copytree(ckpt["e10"], outer / "src")
    outer.chmod(0o700)
    m = mount(outer / "src", None, "-o", "allow_other")
    assert not user_reads(outer / "src/config.json")
    assert not user_reads(m / "config.json"), "the mount lets in what the folder above denies"
    assert not user_lists(m)


# ---------------------------------------------------------------------------- 2: generations


def test_thousand_rescans_keep_descriptors_and_memory(daemon, ckpt, tmp):
    """1,000 SIGHUP rescans, each after the kernel looked up names of the view, leave the
    daemon with the descriptors and (within 2 MiB) the memory it had after the first few:
    every replaced generation is freed once the kernel forgets its nodes."""
    src = tmp / "rs"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m)
    log, n = Log(d), 0

    def touch():
        """Lookups of the root's names and a read, so the generation is in the kernel."""
        os.listdir(m)
        os.stat(m / ".qvlmoefs/view.json")
        (m / "config.json").read_bytes()

    for _ in range(20):  # warm up: allocator arenas, worker threads, their rings
        touch()
        n = rescan(d, log, n)
    assert wait_for(lambda: generations(m) == 1, timeout=10), stats(m)
    fds0, rss0 = len(held_fds(d.pid)), rss_kib(d.pid)
    t0 = time.monotonic()
    for _ in range(1000):
        touch()
        n = rescan(d, log, n)
    secs = time.monotonic() - t0
    assert "rescan failed" not in log.text, log.text[-2000:]
    wait_for(lambda: generations(m) == 1 and len(held_fds(d.pid)) <= fds0, timeout=10)
    fds1, rss1, s = len(held_fds(d.pid)), rss_kib(d.pid), stats(m)
    print(f"1000 rescans in {secs:.1f} s: descriptors {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB, "
          f"generations {s.get('generations')}, nodes {s['nodes']}")
    assert fds1 <= fds0, f"descriptors {fds0} -> {fds1}: {held_fds(d.pid)}"
    # sanitizers keep freed memory in quarantine on purpose: only the plain build's RSS says
    # whether memory is given back
    if not any(lib in run("ldd", QV).stdout for lib in ("libasan", "libtsan")):
        assert rss1 <= rss0 + 2048, f"RSS grew from {rss0} to {rss1} KiB over 1000 rescans"
    assert generations(m) == 1, s
    check_view(src, m)
    unmount(m)
    assert d.wait() == 0


def test_rescans_within_few_descriptors(daemon, ckpt, tmp):
    """Under `ulimit -n 48` (soft and hard) 100 rescans all succeed and the view still checks."""
    src = tmp / "rs"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m, argv=["sh", "-c", 'ulimit -n 48 && exec "$@"', "sh", QV, "-f", src, m])
    log, n = Log(d), 0
    for _ in range(100):
        os.listdir(m)
        n = rescan(d, log, n)
    assert "rescan failed" not in log.text, log.text[-2000:]
    check_view(src, m)
    unmount(m)
    assert d.wait() == 0


def test_soft_descriptor_limit_raised(daemon, ckpt, tmp):
    """The daemon raises its soft RLIMIT_NOFILE to the hard limit at start."""
    m = tmp / "m"
    d = daemon(ckpt["e10"], m, argv=["sh", "-c", 'ulimit -Sn 64 && exec "$@"', "sh", QV, "-f",
                                     ckpt["e10"], m])
    with open(f"/proc/{d.pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, f"soft limit {soft}, hard {hard}: {line}"


def test_file_open_across_rescan(daemon, ckpt, tmp):
    """A file open across a rescan that replaced its source reads the old bytes to its end; a
    new open reads the new ones; once the old file is closed the old generation is freed and
    the replaced source (deleted) is no longer held open."""
    src = tmp / "rs"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m)
    old = (m / SECOND).read_bytes()
    f = os.open(m / SECOND, os.O_RDONLY)
    try:
        head = os.read(f, 4096)
        new_src = ckpt.make("e10-seed9", "--experts", "10", "--seed", "9") / SECOND
        shutil.copy(new_src, src / f"{SECOND}.new")
        os.rename(src / f"{SECOND}.new", src / SECOND)  # the old inode is deleted, still open
        log = Log(d)
        rescan(d, log, 0)
        assert "rescanned the source" in log.text, log.text
        rest = b"".join(iter(lambda: os.read(f, 1 << 20), b""))
        assert head + rest == old, "the file open across the rescan changed its bytes"
        assert (m / SECOND).read_bytes() != old, "a new open reads the old bytes"
        assert any(t.endswith("(deleted)") for t in fd_targets(d.pid)), fd_targets(d.pid)
    finally:
        os.close(f)

    def freed():
        """The old generation and its deleted source are gone."""
        return generations(m) == 1 and \
            not any(t.endswith("(deleted)") for t in fd_targets(d.pid))

    assert wait_for(freed, timeout=10), f"{stats(m)}; fds {fd_targets(d.pid)}"
    check_view(src, m)
    unmount(m)
    assert d.wait() == 0


# ---------------------------------------------------------------------------- 5, 6: names


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


def test_tensor_names_that_are_no_file_names(daemon, tmp):
    """Keys that no file may be named ('.', '..', over 255 bytes, with '/') are left out of
    .qvlmoefs/tensors/ (logged once with their count); every listed name is one a file may have
    and the folder has one '.' and one '..'."""
    src = tmp / "names"
    src.mkdir()
    long_key = "k" * 1100
    write_st(src / "model.safetensors", {"..": b"\1" * 4, ".": b"\2" * 4, long_key: b"\3" * 4,
                                         "a/b": b"\4" * 4, "x" * 300: b"\5" * 4, "ok": b"\6" * 4})
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


# ---------------------------------------------------------------------------- 7: xattrs, access


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


def test_access_checks_execute_bits(mount, ckpt):
    """access() answers as the modes do: no X_OK on a 0444 file (even for root, which may only
    execute what someone may), X_OK on folders, R_OK on files, W_OK never."""
    m = mount(ckpt["e10"])
    f = m / "config.json"
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o444
    assert os.access(f, os.R_OK)
    assert not os.access(f, os.X_OK), "access(X_OK) succeeds on a 0444 file"
    assert not os.access(f, os.W_OK)
    assert os.access(m, os.R_OK | os.X_OK) and os.access(m / ".qvlmoefs", os.R_OK | os.X_OK)
    assert subprocess.run(["test", "-x", str(f)]).returncode != 0


def test_access_of_another_users_own_mount(ckpt, tmp):
    """Without default_permissions (a user's own mount) access() follows the classes: the
    user may read what its class may, and not what only the owner may."""
    need_test_user()
    d = tmp / "own"
    (d / "m").mkdir(parents=True)
    shutil.copytree(ckpt["e10"], d / "src")
    (d / "src/mine.txt").write_text("x\n")
    (d / "src/rootonly.txt").write_text("y\n")
    run("chown", "-R", TEST_USER, d)
    os.chown(d / "src/rootonly.txt", 0, 0)
    (d / "src/rootonly.txt").chmod(0o600)
    (d / "src/mine.txt").chmod(0o755)
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    q = {k: shlex.quote(str(d / v)) for k, v in {"src": "src", "m": "m"}.items()}
    try:
        rc, out = as_user(f"{shlex.quote(str(QV))} {q['src']} {q['m']}")
        assert rc == 0, out
        try:
            rc, out = as_user(f"test -r {q['m']}/mine.txt && test -x {q['m']}/mine.txt && "
                              f"! test -x {q['m']}/config.json && ! test -r {q['m']}/rootonly.txt")
            assert rc == 0, f"access() as {TEST_USER} disagrees with the modes: {out}"
        finally:
            as_user(f"fusermount3 -u {q['m']}")
    finally:
        os.chmod("/dev/fuse", mode)


# ---------------------------------------------------------------------------- 8: statfs


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


# ---------------------------------------------------------------------------- 13: replies


def test_open_whose_reply_fails_gives_back_its_sources(daemon, ckpt, tmp):
    """An open whose reply the kernel does not take (interrupted) gets no release: the daemon
    undoes it at once, so no source descriptor and no open-file count stays behind."""
    src = tmp / "op"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m, env={"QVLMOEFS_TEST_FAIL_REPLIES": "open=3"})
    for _ in range(3):
        with pytest.raises(OSError) as e:
            os.open(m / "config.json", os.O_RDONLY)
        assert e.value.errno == errno.ECANCELED, e.value

    def held():
        """Descriptors on config.json and open files by the daemon's count."""
        return sum(t == str(src / "config.json") for t in fd_targets(d.pid)), \
            stats(m)["open_files"]

    # the handler undoes right after its refused reply: give it a moment
    assert wait_for(lambda: held() == (0, 0), timeout=5), f"(descriptors, open files) {held()}"
    assert (m / "config.json").read_bytes() == (src / "config.json").read_bytes()
    unmount(m)
    assert d.wait() == 0


def test_lookup_whose_reply_fails_does_not_pin_generation(daemon, ckpt, tmp):
    """A lookup whose reply the kernel does not take does not count: after a rescan the old
    generation is freed all the same."""
    src = tmp / "lk"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m, env={"QVLMOEFS_TEST_FAIL_REPLIES": "entry=2"})
    for _ in range(2):
        with pytest.raises(OSError) as e:
            os.stat(m / "config.json")
        assert e.value.errno == errno.ECANCELED, e.value
    os.stat(m / "tokenizer.json")
    rescan(d, Log(d), 0)
    assert wait_for(lambda: generations(m) == 1, timeout=10), stats(m)
    unmount(m)
    assert d.wait() == 0
