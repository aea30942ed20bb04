"""The daemon's life cycle and control surface: signals, unmount paths, valgrind, GPU, docs.

These tests need the foreground daemon process itself (to signal it, kill it, read its log or
run it under valgrind), so they start it through the `daemon` fixture (support_daemon),
which always unmounts, stops and reaps it at teardown. The last tests check the GPU options'
failure path, staging on a real device where there is one, and the shipped documentation.
"""
import errno
import os
import re
import shutil
import signal
import threading
import time

import pytest

from helpers import BUILD, QV, ROOT, check_view, mountpoint, run
from support_daemon import daemon_fixture  # noqa: F401  (provides the `daemon` fixture)
from support_daemon import one_line, run_merged, unmount

SECOND = "model-00002-of-00002.safetensors"
NO_GPU = "no NVIDIA GPU on this machine (tests/gpu/device-check.sh runs where one is)"


def has_gpu():
    """True when nvidia-smi lists at least one device (as `nvidia-smi -L` succeeding)."""
    if shutil.which("nvidia-smi") is None:
        return False
    rc, _ = run_merged("nvidia-smi", "-L", timeout=60)
    return rc == 0


# ---------------------------------------------------------------------------- signals


def test_sighup_rescan(daemon, ckpt, tmp):
    """SIGHUP makes the view show the source as it is now: added, replaced, removed files.

    Before the signal the view keeps its old tree (the new file is not there); afterwards
    the whole view checks against the changed source and the daemon logs the rescan.
    """
    src = tmp / "rs"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m)
    check_view(src, m)
    (src / "added.txt").write_text("new file\n")
    new = ckpt.make("e10-seed9", "--experts", "10", "--seed", "9")
    shutil.copy(new / SECOND, src / SECOND)
    (src / "tokenizer.json").unlink()
    assert not (m / "added.txt").exists(), "the view changed before SIGHUP"
    d.signal(signal.SIGHUP)
    assert d.wait_log("rescanned the source"), f"no rescan logged after SIGHUP:\n{d.log()}"
    check_view(src, m)
    assert (m / "added.txt").exists(), "a file added to the source is missing after the rescan"
    assert not (m / "tokenizer.json").exists(), "a removed source file is still in the view"
    unmount(m)
    assert d.wait() == 0


def test_sigusr1_logs_stats(daemon, ckpt, tmp):
    """SIGUSR1 makes the daemon log its counters as one JSON line."""
    m = tmp / "m"
    d = daemon(ckpt["e10"], m)
    (m / "config.json").read_bytes()
    d.signal(signal.SIGUSR1)
    want = 'qvlmoefs: stats {"requests":'
    assert d.wait_log(want), f"{want!r} not in the daemon's log after SIGUSR1:\n{d.log()}"
    unmount(m)
    assert d.wait() == 0


def test_debug_option_logs_requests(daemon, ckpt, tmp):
    """-o debug keeps the daemon in the foreground and logs every FUSE request it handles."""
    m = tmp / "m"
    d = daemon(ckpt["e10"], m, argv=[QV, "-o", "debug", ckpt["e10"], m], merge_stdout=True)
    (m / "config.json").read_bytes()
    unmount(m)
    assert d.wait() == 0
    log = d.log()
    assert "opcode: LOOKUP" in log and "opcode: READ" in log, \
        f"debug log lacks LOOKUP or READ requests:\n{log[-3000:]}"


def test_kill9_gives_enotconn(daemon, mount, ckpt, tmp):
    """A daemon killed with -9 leaves a mount that answers ENOTCONN, never hangs, and can be
    unmounted and mounted again on the same folder."""
    m = tmp / "m"
    d = daemon(ckpt["e10"], m)
    held = os.open(m / "config.json", os.O_RDONLY)
    try:
        d.signal(signal.SIGKILL)
        d.wait()
        with pytest.raises(OSError) as e:
            (m / "config.json").read_bytes()
        assert e.value.errno == errno.ENOTCONN, f"read after kill -9: {e.value} (want ENOTCONN)"
    finally:
        try:
            os.close(held)  # the descriptor goes, though the dead mount cannot flush it
        except OSError as e:
            assert e.errno == errno.ENOTCONN, e
    unmount(m)
    assert not mountpoint(m), "still mounted after fusermount3 -u"
    mount(ckpt["e10"], m)  # the mount point is usable again
    check_view(ckpt["e10"], m)


def test_lazy_unmount_keeps_open_files(daemon, ckpt, tmp):
    """After fusermount3 -uz an open file still reads to its end; the daemon then exits 0."""
    m = tmp / "m"
    d = daemon(ckpt["e10"], m, "-o", "direct_io")
    f = os.open(m / SECOND, os.O_RDONLY)
    try:
        head = os.read(f, 4096)
        run("fusermount3", "-uz", m, timeout=30)
        assert not os.path.ismount(m), "still a mount point after the lazy unmount"
        data = head + b"".join(iter(lambda: os.read(f, 1 << 20), b""))
        assert len(data) == os.fstat(f).st_size, f"short: read {len(data)} of {os.fstat(f).st_size}"
    finally:
        os.close(f)
    print(f"read {len(data)} bytes after the lazy unmount")
    rc = d.wait(timeout=10)
    print(f"daemon exit status {rc}")
    assert rc == 0


def test_sigterm_during_reads(daemon, ckpt, tmp):
    """SIGTERM while a reader streams the tensor files: the daemon exits 0 and unmounts."""
    m = tmp / "m"
    d = daemon(ckpt["e10"], m, "-o", "direct_io")

    def reader():
        """Read every tensor file, up to 200 rounds, until the mount goes away."""
        for _ in range(200):
            try:
                for p in sorted(m.glob("*.safetensors")):
                    p.read_bytes()
            except OSError:
                break

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.3)
    d.signal(signal.SIGTERM)
    rc = d.wait()
    t.join(timeout=30)
    print(f"daemon exit status {rc}")
    assert rc == 0
    assert not mountpoint(m), "still mounted after SIGTERM"


# ---------------------------------------------------------------------------- valgrind


def test_daemon_under_valgrind(daemon, ckpt, tmp):
    """A rank view served under valgrind: no memory errors and no definite leaks (exit 0).

    AddressSanitizer and ThreadSanitizer builds cannot run under valgrind; the plain build
    runs this test.
    """
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")
    libs = run("ldd", QV).stdout
    for lib, name in (("libasan", "AddressSanitizer"), ("libtsan", "ThreadSanitizer")):
        if lib in libs:
            pytest.skip(f"this build uses {name}, which cannot run under valgrind "
                        "(the plain build runs this test)")
    src, m = ckpt["e10n"], tmp / "m"
    d = daemon(src, m, timeout=60, argv=[
        "valgrind", "-q", "--error-exitcode=9", "--leak-check=full",
        "--errors-for-leak-kinds=definite", QV, "-f", src, m, "-o", "ep_size=4"])
    check_view(src, m / "ep-rank-3", "--ep-size", "4", "--ep-rank", "3")
    unmount(m)
    rc = d.wait(timeout=120)
    log = d.log()
    print(log)
    assert rc == 0, f"valgrind exit status {rc}:\n{log}"


# ---------------------------------------------------------------------------- GPU


def test_gpu_requests_fail_fast_without_device(mount, ckpt, tmp):
    """Without a GPU, -o gpu=0 and `stage` fail at once with one line; plain mounts still work.

    The `stage --device 7` run has no expected outcome: it exercises the path (a crash shows
    up as a sanitizer report in sanitizer builds) and its output is shown with -s.
    """
    src, m = ckpt["e10"], tmp / "m"
    version = run(QV, "-V", check=False).stdout
    assert re.search(r"^gpu: (cuda runtime \(dlopen\)|not built)$", version, re.M), version
    if has_gpu():
        pytest.skip("this machine has a GPU: the failure path is not reachable here")
    p = mount.fail(src, m, "-o", "gpu=0", timeout=20)  # fails, within 20 s, mounts nothing
    out = p.stdout + p.stderr
    print(out)
    assert one_line(out), f"not one line: {out!r}"
    assert "gpu=0" in out, out
    rc, out = run_merged(QV, "stage", src, "-o", "ep_size=4,ep_rank=1", timeout=20)
    print(out)
    assert rc is not None and rc != 0, f"staged without a GPU (exit status {rc})"
    assert one_line(out), f"not one line: {out!r}"
    rc, out = run_merged(QV, "stage", src, "--device", "7", timeout=20)
    print(f"stage --device 7: exit status {rc}: {out}")
    assert "--samples" in run(QV, "stage", "--help", check=False).stdout
    mount(src, m)  # the mount without gpu is unaffected
    check_view(src, m)


def test_gpu_stage_on_device(ckpt):
    """`stage` puts one rank's and all experts on the device (needs an NVIDIA GPU)."""
    if not has_gpu():
        pytest.skip(NO_GPU)
    run(QV, "stage", ckpt["e10"], "-o", "ep_size=4,ep_rank=1", "--samples", "0", timeout=600)
    run(QV, "stage", ckpt["e10n"], "--all", "--samples", "0", "--slots", "2", "--slot-mib", "1",
        timeout=600)


# ---------------------------------------------------------------------------- documentation

MAN = ROOT / "mount-scripts" / "qvlmoefs.8"


def test_man_page_renders():
    """The man page is a section-8 page and documents the signals (SIGUSR1)."""
    assert re.search(r"^.TH QVLMOEFS 8", MAN.read_text(), re.M), f"{MAN}: no .TH QVLMOEFS 8 line"
    if shutil.which("man") is None:
        return  # rendered only where man exists
    text = run("man", "-l", MAN).stdout
    assert "SIGUSR1" in text, "the rendered man page does not mention SIGUSR1"


# PREFIX: (where the commands go, where the mount helper goes) below DESTDIR
INSTALL_LAYOUTS = {"default": ([], "usr/local/bin", "sbin"),
                   "prefix": (["PREFIX=/opt/qv"], "opt/qv/bin", "opt/qv/sbin")}


@pytest.mark.parametrize("layout", INSTALL_LAYOUTS.values(), ids=INSTALL_LAYOUTS.keys())
def test_install_ships_commands_and_man_page(tmp, layout):
    """make install DESTDIR=... [PREFIX=...] puts every command the README calls (qvlmoefs,
    qvlmoefs-mkckpt, qvlmoefs-node-mount), the mount helper and the man page below DESTDIR and
    PREFIX, nowhere else (PREFIX= used to write /sbin anyway), with the helpers naming the
    installed binary; uninstall removes them all."""
    args, bindir, sbindir = layout
    d = tmp / "inst"
    run("make", "-s", "-C", ROOT, "install", f"BUILD={BUILD}", f"DESTDIR={d}", *args, timeout=600)
    prefix = "/" + bindir.rsplit("/", 1)[0]
    want = {f"{bindir}/qvlmoefs", f"{bindir}/qvlmoefs-mkckpt", f"{bindir}/qvlmoefs-node-mount",
            f"{sbindir}/mount.fuse.qvlmoefs", f"{prefix[1:]}/share/man/man8/qvlmoefs.8"}
    got = {str(p.relative_to(d)) for p in d.rglob("*") if not p.is_dir()}
    assert got == want, f"installed {sorted(got)}, expected {sorted(want)}"
    for f in want - {f"{prefix[1:]}/share/man/man8/qvlmoefs.8"}:
        assert os.access(d / f, os.X_OK), f"{f} is not executable"
    for f in (f"{bindir}/qvlmoefs-node-mount", f"{sbindir}/mount.fuse.qvlmoefs"):
        assert f'BIN="{prefix}/bin/qvlmoefs"' in (d / f).read_text(), f"{f} does not name the binary"
    assert "--experts" in run(d / bindir / "qvlmoefs-mkckpt", "--help", check=False).stdout
    run("make", "-s", "-C", ROOT, "uninstall", f"DESTDIR={d}", *args)
    assert not [p for p in d.rglob("*") if not p.is_dir()], "uninstall left files"


def test_help_describes_inspect():
    """--help names the inspect subcommand, and inspect --help its --keys option."""
    assert "inspect SOURCE" in run(QV, "--help", check=False).stdout
    assert "--keys" in run(QV, "inspect", "--help", check=False).stdout
