"""Reliability under load and under a hostile world: concurrent stress, sources that change or
fail under the mount, symlinks swapped to point outside, other users, too few descriptors,
io_uring submissions that fail, files swapped for others (or for links and FIFOs) between the
scan and the open, and replies the kernel does not take.

The promise behind all of them: a read through the view returns the right bytes or an error
(EIO, EMFILE), never short or wrong data, never a file from outside the source, and the daemon
keeps serving. test_stress is also CI's thread-sanitizer run:
`BUILD=build-tsan STRESS_SECONDS=10 /usr/bin/python3 -m pytest tests/integration -k stress`.
"""
import errno
import os
import shlex
import shutil
import signal
import stat
import time

import pytest

from helpers import (BUILD, QV, ROOT, TEST_USER, as_user, check_view, mountpoint,
                     refused_replies, run, stat_field, stats, wait_for)
from support_daemon import daemon_fixture  # noqa: F401  (provides the `daemon` fixture)
from support_daemon import fd_targets, mount_options, source_fds, unmount

SECOND = "model-00002-of-00002.safetensors"


def copy_files(view, ref):
    """Copy the plain files of a view folder (not the hidden .qvlmoefs) into a new folder ref."""
    ref.mkdir()
    for p in sorted(view.iterdir()):
        if p.name.startswith("."):
            continue
        assert p.is_file(), f"{p}: the stress views are expected to hold files only"
        shutil.copyfile(p, ref / p.name)


# ---------------------------------------------------------------------------- stress


def test_stress(daemon, ckpt, tmp):
    """Many threads read three views with read, pread and mmap; every byte matches a copy: two
    renamed views checked against the contract, and a computed one (an FP8 release's rank, its
    blocks made, made ahead and evicted by threads at once) read by one thread first (its bytes
    are checked against their oracle in test_fp8).

    STRESS_SECONDS (10) and STRESS_THREADS (16) size the run. The daemons hold as many source
    descriptors afterwards as before, so no open of the run leaked one.
    """
    secs = os.environ.get("STRESS_SECONDS", "10")
    threads = os.environ.get("STRESS_THREADS", "16")
    stress = ROOT / BUILD / "stress"
    assert os.access(stress, os.X_OK), f"{stress} is missing: build it first (make all)"
    e10, e10n = ckpt["e10"], ckpt["e10n"]
    fp8 = ckpt.make("stress-fp8", "--hidden", "256", "--moe-inter", "384", "--experts", "32",
                    "--layers", "2", "--shards", "2", "--vocab", "64", "--fp8", "per-expert")
    m1, m2, m3 = tmp / "m1", tmp / "m2", tmp / "m3"
    d1 = daemon(e10, m1)
    d2 = daemon(e10n, m2, "-o", "ep_size=4")
    d3 = daemon(fp8, m3, "-o", "ep_size=2")
    rank1 = m2 / "ep-rank-1"
    check_view(e10, m1)
    check_view(e10n, rank1, "--ep-size", "4", "--ep-rank", "1")
    copy_files(m1, tmp / "ref1")
    copy_files(rank1, tmp / "ref2")
    copy_files(m3 / "ep-rank-0", tmp / "ref3")
    # descriptors of source files held by the daemons (rings come and go with worker threads),
    # counted once every file the copies opened is released: releases are asynchronous, and a
    # source stays open while a file of the view reading it is
    def idle(mnt):
        return stat_field(mnt, "open_files") == 0

    assert wait_for(lambda: idle(m1) and idle(m2), timeout=10), "the copies' files were never released"
    fd1, fd2 = source_fds(d1.pid, e10), source_fds(d2.pid, e10n)
    p = run(stress, secs, threads, f"{m1}:{tmp / 'ref1'}", f"{rank1}:{tmp / 'ref2'}",
            f"{m3 / 'ep-rank-0'}:{tmp / 'ref3'}", timeout=3 * float(secs) + 120)
    print(p.stdout, end="")

    def now():
        """The daemons' source descriptor counts now."""
        return source_fds(d1.pid, e10), source_fds(d2.pid, e10n)

    assert wait_for(lambda: idle(m1) and idle(m2), timeout=10), "the stress files were never released"
    wait_for(lambda: now() == (fd1, fd2), timeout=5)
    print(f"daemon source fds: {fd1} -> {now()[0]}, {fd2} -> {now()[1]}")
    assert now() == (fd1, fd2), f"source descriptors before the run {(fd1, fd2)}, after {now()}"
    assert stats(m3)["blocks_computed"] > 0 and stats(m3)["errors"] == 0, stats(m3)
    for m in (m1, m2, m3):
        unmount(m)
    assert d1.wait() == 0 and d2.wait() == 0 and d3.wait() == 0


# ---------------------------------------------------------------------------- changing sources

MUTATIONS = ["truncate", "overwrite", "delete", "rename_replace", "chmod"]


def mutate(path, how):
    """Change the source file at path in one of the MUTATIONS ways."""
    if how == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    elif how == "overwrite":
        with open(path, "r+b") as g:
            g.seek(os.path.getsize(path) // 2)
            g.write(b"\xAA" * 4096)
    elif how == "delete":
        os.unlink(path)
    elif how == "rename_replace":
        shutil.copy(path, f"{path}.new")
        with open(f"{path}.new", "r+b") as g:
            g.seek(os.path.getsize(path) // 2)
            g.write(b"\x55" * 4096)
        os.rename(f"{path}.new", path)
    elif how == "chmod":
        os.chmod(path, 0)


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("opts", [(), ("-o", "direct_io"), ("-o", "nosplice"), ("-o", "nosplice,direct_io")],
                         ids=["page_cache", "direct_io", "nosplice", "nosplice_direct_io"])
def test_sources_change_under_mount(mount, ckpt, tmp, opts, how):
    """A source file changes under an open view file: every read is right or EIO, never short,
    a reopen gives the old bytes or EIO, and the daemon still serves other files."""
    src = tmp / "chg"
    shutil.copytree(ckpt["e10"], src)
    m = mount(src, None, *opts)
    want = (m / SECOND).read_bytes()
    f = os.open(m / SECOND, os.O_RDONLY)
    pos, step, eio = 0, 65536, 0
    try:
        first = os.read(f, step)
        assert first == want[:len(first)]
        pos = len(first)
        mutate(src / SECOND, how)
        while pos < len(want):
            try:
                got = os.pread(f, step, pos)
            except OSError as e:
                assert e.errno == errno.EIO, e
                eio += 1
                pos += step
                continue
            assert len(got) == min(step, len(want) - pos), f"short read at {pos}: {len(got)}"
            assert got == want[pos:pos + len(got)], f"WRONG BYTES at {pos}"
            pos += len(got)
    finally:
        os.close(f)
    try:
        again = (m / SECOND).read_bytes()
        assert again == want, "reopened file served different bytes"
        reopen = "same bytes"
    except OSError as e:
        assert e.errno == errno.EIO, e
        reopen = "EIO"
    assert (m / "config.json").read_bytes(), "the daemon no longer serves"
    print(f"{how}: {eio} reads gave EIO, reopen: {reopen}")
    mount.umount(m)


def daemon_wchar(pid):
    """Bytes process pid has written with write() and its kin (splice does not count)."""
    with open(f"/proc/{pid}/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


@pytest.mark.parametrize("opts", [(), ("-o", "direct_io"), ("-o", "splice")],
                         ids=["page_cache", "direct_io", "splice"])
def test_splice_replies(daemon, ckpt, tmp, opts):
    """Splice (the default, or -o splice): the view checks byte for byte, most bytes go out as
    spliced replies, and the daemon writes far fewer bytes to /dev/fuse than it serves (libfuse
    really spliced them rather than falling back to copying: a spliced reply is no write())."""
    m = tmp / "m"
    d = daemon(ckpt["big"], m, *opts)
    w0 = daemon_wchar(d.pid)
    check_view(ckpt["big"], m, *(["--mmap", "private"] if "direct_io" in opts else []))
    served, spliced = stat_field(m, "bytes_served"), stat_field(m, "bytes_spliced")
    written = daemon_wchar(d.pid) - w0
    print(f"served {served}, spliced {spliced}, written to /dev/fuse {written}")
    assert spliced > served // 3, f"only {spliced} of {served} bytes spliced"
    assert written < served - spliced + served // 10, f"{written} bytes written for {served} served"
    unmount(m)
    assert d.wait() == 0


def test_nosplice_copies(daemon, ckpt, tmp):
    """-o nosplice: every reply is copied through the daemon (written to /dev/fuse)."""
    m = tmp / "m"
    d = daemon(ckpt["big"], m, "-o", "nosplice")
    w0 = daemon_wchar(d.pid)
    check_view(ckpt["big"], m)
    served, written = stat_field(m, "bytes_served"), daemon_wchar(d.pid) - w0
    assert stat_field(m, "bytes_spliced") == 0
    assert written >= served, f"{written} bytes written for {served} served"
    assert "max_read" not in mount_options(m), "nosplice needs no cap on the request size"
    unmount(m)
    assert d.wait() == 0


def test_splice_truncated_source_is_eio(daemon, ckpt, tmp):
    """A source cut short under a spliced read gives EIO, never a short reply (which the kernel
    would take for the end of the file); the rest of the view still splices."""
    src = tmp / "chg"
    shutil.copytree(ckpt["big"], src)
    m = tmp / "m"
    d = daemon(src, m, "-o", "direct_io")
    size = (m / SECOND).stat().st_size
    f = os.open(m / SECOND, os.O_RDONLY)
    try:
        assert len(os.pread(f, 1 << 16, size // 2)) == 1 << 16
        before = stat_field(m, "bytes_spliced")
        assert before > 0, "the read was not spliced"
        os.truncate(src / SECOND, (src / SECOND).stat().st_size // 2)
        for off in (size // 2, size * 3 // 4, size - (1 << 16)):
            with pytest.raises(OSError) as e:
                got = os.pread(f, 1 << 16, off)
                print(f"at {off}: {len(got)} bytes")
            assert e.value.errno == errno.EIO, e.value
        assert stat_field(m, "bytes_spliced") == before
    finally:
        os.close(f)
    assert (m / "config.json").read_bytes(), "the daemon no longer serves"
    unmount(m)
    assert d.wait() == 0


FAULTS = ["setup=EPERM", "chunk=4096,eagain=3", "setup=EPERM,chunk=1000"]


@pytest.mark.parametrize("faults", FAULTS)
def test_io_faults_through_mount(daemon, ckpt, tmp, faults):
    """Injected io_uring faults (QVLMOEFS_TEST_FAULTS) never reach a reader: the view checks.

    A refused ring setup falls back to pread, saying so once; short chunks and EAGAIN are
    retried without any fallback.
    """
    m = tmp / "m"
    d = daemon(ckpt["e10"], m, env={"QVLMOEFS_TEST_FAULTS": faults})
    check_view(ckpt["e10"], m)
    unmount(m)
    assert d.wait() == 0
    log = d.log()
    print(log, end="")
    fallbacks = sum("falling back to pread" in line for line in log.splitlines())
    if faults.startswith("setup="):
        assert fallbacks == 1, f"want one 'falling back to pread' line, got {fallbacks}:\n{log}"
    else:
        assert "falling back" not in log, log


def test_symlink_swap_never_escapes(daemon, ckpt, tmp):
    """Links swapped while mounted to name a file outside the source are never served, and
    after a rescan the names are gone from the view."""
    src = tmp / "ln"
    (src / "real").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(ckpt["e10"] / name, src / "real" / name)
    (src / "config.json").symlink_to("real/config.json")
    outside = tmp / "outside.txt"
    outside.write_text("SECRET-OUTSIDE\n")
    m = tmp / "m"
    d = daemon(src, m, "-o", "allow_empty")  # links and config files only: no *.safetensors
    assert (m / "config.json").read_bytes() == (src / "real/config.json").read_bytes()
    # swap the link (and the file it named) while mounted
    os.symlink(outside, src / "config.json.tmp")
    os.replace(src / "config.json.tmp", src / "config.json")
    os.rename(src / "real/config.json", src / "real/config.old")
    os.symlink(outside, src / "real/config.json")
    for name in ("config.json", "real/config.json"):
        try:
            data = (m / name).read_bytes()
        except OSError:
            continue
        assert b"SECRET-OUTSIDE" not in data, f"{name}: served a file outside the source"
    d.signal(signal.SIGHUP)
    assert d.wait_log("rescan"), f"no rescan logged after SIGHUP:\n{d.log()}"
    assert not (m / "config.json").exists(), "config.json (a link to outside) still in the view"
    assert not (m / "real/config.json").exists(), "real/config.json still in the view"
    unmount(m)


# ---------------------------------------------------------------------------- other users


def user_can_run(path):
    """True when TEST_USER can execute path (every folder above it is searchable)."""
    return as_user(f"test -x {shlex.quote(str(path))}")[0] == 0


def test_permissions_and_users(mount, ckpt, tmp):
    """A user mounts their own view; nobody else (root included) may enter it without
    allow_other, and allow_other always comes with default_permissions.

    The binary and the checkpoint are used from copies below tmp when the checkout lies in a
    folder the user cannot enter (a 0700 temporary folder, say).
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    if run("id", TEST_USER, check=False).returncode != 0:
        run("useradd", "-M", "-s", "/bin/sh", TEST_USER)
    assert user_can_run(tmp), f"{TEST_USER} cannot enter {tmp}"
    d = tmp / "user"
    (d / "m").mkdir(parents=True)
    shutil.copytree(ckpt["e10"], d / "src")
    qv = QV
    if not user_can_run(QV):
        qv = d / "bin" / "qvlmoefs"
        qv.parent.mkdir()
        shutil.copy2(QV, qv)
        qv.chmod(0o755)
    print(f"{TEST_USER} runs {qv}")
    run("chown", "-R", TEST_USER, d)
    q = {k: shlex.quote(str(v)) for k, v in
         {"qv": qv, "src": d / "src", "m": d / "m", "cfg": d / "m" / "config.json"}.items()}
    # a stock machine lets users open /dev/fuse (0666); containers may not: as on a stock
    # machine for the length of this test
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    try:
        rc, out = as_user(f"{q['qv']} {q['src']} {q['m']}")
        assert rc == 0, f"{TEST_USER} could not mount (exit status {rc}): {out}"
        rc, out = as_user(f"cat {q['cfg']} >/dev/null")
        assert rc == 0, f"{TEST_USER} could not read their own mount: {out}"
        # another user (root included) is refused without allow_other
        try:
            os.listdir(d / "m")
        except OSError:
            pass
        else:
            pytest.fail("root could list another user's mount")
        rc, out = as_user(f"fusermount3 -u {q['m']}")
        assert rc == 0, f"{TEST_USER} could not unmount: {out}"
    finally:
        os.chmod("/dev/fuse", mode)
    # allow_other always comes with default_permissions
    m = mount(ckpt["e10"], tmp / "m", "-o", "allow_other")
    opts = mount_options(m) or ""
    assert "default_permissions" in opts.split(","), f"no default_permissions: {opts}"


# ---------------------------------------------------------------------------- descriptors


def test_out_of_descriptors(daemon, ckpt, tmp):
    """With 48 descriptors the daemon refuses some of 100 opens with EMFILE/ENFILE, serves the
    rest right, and once they are closed opens all 100 again."""
    src = tmp / "many"
    shutil.copytree(ckpt["e10"], src)
    for i in range(1, 101):
        (src / f"f{i}.txt").write_text(f"file {i}\n")
    m = tmp / "m"
    d = daemon(src, m, argv=["sh", "-c", 'ulimit -n 48 && exec "$@"', "sh", QV, "-f", src, m])
    held, refused = [], 0
    try:
        for i in range(1, 101):
            try:
                held.append((i, os.open(m / f"f{i}.txt", os.O_RDONLY)))
            except OSError as e:
                assert e.errno in (errno.EMFILE, errno.ENFILE), e
                refused += 1
        for i, fd in held:
            assert os.read(fd, 100) == f"file {i}\n".encode(), i
    finally:
        for _, fd in held:
            os.close(fd)
    print(f"{len(held)} opened, {refused} refused cleanly")
    assert refused > 0, "all 100 opens succeeded under a limit of 48 descriptors"
    time.sleep(0.5)  # FUSE sends release asynchronously after close()
    for i in range(1, 101):  # all descriptors were given back: everything opens again
        assert (m / f"f{i}.txt").read_text() == f"file {i}\n"
    assert (m / "config.json").read_bytes() == (src / "config.json").read_bytes()
    unmount(m)
    assert d.wait() == 0


# --------------------------------------------------------------------------- io_uring failures


@pytest.mark.parametrize("nth", [2, 3, 5])
def test_uring_submit_failure_leaves_no_stale_reads(daemon, mount, ckpt, tmp, nth):
    """The worker's Nth io_uring submission fails with reads in flight (QVLMOEFS_TEST_FAULTS
    submit_fail=N): that request fails, and every later one reads the right bytes, because the
    ring was drained and rebuilt (before, the next request took the old completions)."""
    ref = mount(ckpt["e10"], tmp / "ref")
    m = tmp / "m"
    # nosplice: every read goes through the ring (a spliced one submits nothing)
    d = daemon(ckpt["e10"], m, "-s", "-o", "direct_io,nosplice",
               env={"QVLMOEFS_TEST_FAULTS": f"submit_fail={nth}"})
    failed = 0
    for name in sorted(os.listdir(ref)):
        if not name.endswith(".safetensors"):
            continue
        want = (ref / name).read_bytes()
        with open(m / name, "rb", buffering=0) as f:
            for off in range(0, len(want), 65536):
                try:
                    got = os.pread(f.fileno(), 65536, off)
                except OSError as e:
                    assert e.errno == errno.EIO, e
                    failed += 1
                    got = os.pread(f.fileno(), 65536, off)  # the same request again
                assert got == want[off:off + 65536], f"{name}: wrong bytes at {off}\n{d.log()}"
    assert failed == 1, f"{failed} reads failed, want exactly the injected one\n{d.log()}"
    assert "io_uring" not in d.log(), d.log()  # rebuilt quietly, no pread fallback
    unmount(m)
    assert d.wait() == 0


# ---------------------------------------------------------------- files swapped after the scan


PAUSE = {"QVLMOEFS_TEST_FAULTS": "scan_pause_ms=1500"}  # each scan waits, then opens


def _swap_in(path, make):
    """Put what make(tmp_path) creates at path in one rename, as an attacker would."""
    tmp = path.with_name(path.name + ".swap")
    make(tmp)
    os.rename(tmp, path)


SWAPS = {
    # a link to a file outside the source: open() followed it and served that file
    "symlink_outside": lambda outside: (lambda p: os.symlink(outside, p)),
    # another regular file: open() took its identity as the scanned one
    "other_file": lambda outside: (lambda p: shutil.copy(outside, p)),
}


@pytest.mark.parametrize("swap", SWAPS.values(), ids=SWAPS.keys())
def test_source_swapped_between_scan_and_open_refused(daemon, ckpt, tmp, swap):
    """A safetensors source replaced after the scan saw it (by a link out of the source, or
    by another file) is not opened as if it were the scanned one: the mount fails, naming it."""
    src = tmp / "src"
    shutil.copytree(ckpt["e10"], src)
    outside = ckpt.make("e10-seed9", "--experts", "10", "--seed", "9") / SECOND
    m = tmp / "m"
    d = daemon(src, m, env=PAUSE, wait=False)
    assert d.wait_log("scan done"), d.log()
    _swap_in(src / SECOND, swap(outside))
    assert wait_for(lambda: not d.alive() or mountpoint(m), timeout=20)
    assert not mountpoint(m), f"mounted over a source swapped after the scan:\n{d.log()}"
    assert d.wait() != 0
    assert SECOND in d.log() and "changed since the scan" in d.log(), d.log()


def _dcp(ckpt):
    return ckpt.make("dcp-w4", "--sharded-save", "4")


# (source, the file a FIFO replaces, what the rescan says)
FIFO_TARGETS = {
    "index": (lambda ckpt: ckpt["e10"], "model.safetensors.index.json", "rescan failed"),
    "dcp_mapping": (_dcp, ".hf_metadata/fqn_to_file_index_mapping.json", "rescan failed"),
    # config.json only adds a check; unreadable, it is skipped and the view passes it through
    "dcp_config": (_dcp, ".hf_metadata/config.json", "rescan"),
}


@pytest.mark.parametrize("case", FIFO_TARGETS.values(), ids=FIFO_TARGETS.keys())
def test_fifo_swapped_in_at_rescan_does_not_block(daemon, ckpt, tmp, case):
    """A FIFO put in place of a file the rescan reads, after the scan saw a regular file, does
    not block the rescan (which holds the mount lock): it ends at once and the mount serves."""
    source, target, said = case
    src = tmp / "src"
    shutil.copytree(source(ckpt), src)
    m = tmp / "m"
    d = daemon(src, m, env=PAUSE)
    d.signal(signal.SIGHUP)
    assert wait_for(lambda: d.log().count("scan done") >= 2), d.log()
    _swap_in(src / target, os.mkfifo)
    try:
        assert wait_for(lambda: "rescan" in d.log(), timeout=8), \
            f"the rescan blocked on the FIFO at {target}:\n{d.log()}"
        assert said in d.log(), d.log()
        assert os.listdir(m) and d.alive()
    finally:  # a reader blocked in open() is released by a writer's open
        try:
            os.close(os.open(src / target, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    unmount(m)
    assert d.wait() == 0


# ------------------------------------------------------------- replies the kernel did not take


def test_open_whose_reply_fails_gives_back_its_sources(daemon, ckpt, tmp):
    """An open whose reply the kernel does not take (interrupted) gets no release: the daemon
    undoes it at once, so no source descriptor and no open-file count stays behind."""
    src = tmp / "op"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m, env={"QVLMOEFS_TEST_FAULTS": "open=3"})
    refused_replies(3, lambda: os.open(m / "config.json", os.O_RDONLY))

    def held():
        """Descriptors on config.json and open files by the daemon's count."""
        return sum(t == str(src / "config.json") for t in fd_targets(d.pid)), \
            stats(m)["open_files"]

    # the handler undoes right after its refused reply: give it a moment
    assert wait_for(lambda: held() == (0, 0), timeout=5), f"(descriptors, open files) {held()}"
    assert (m / "config.json").read_bytes() == (src / "config.json").read_bytes()
    unmount(m)
    assert d.wait() == 0
