"""The daemon's life cycle and control surface: signals, unmount paths, valgrind, GPU, docs.

These tests need the foreground daemon process itself (to signal it, kill it, read its log or
run it under valgrind), so they start it through the `daemon` fixture (support_daemon),
which always unmounts, stops and reaps it at teardown. The last tests check the GPU options'
failure path, staging on a real device where there is one, staging against a stand-in CUDA
runtime (tests/gpu/fake_cudart.c: the device opened after the fork, by the staging thread;
SIGTERM while staging), the soft descriptor limit, and the shipped documentation.
"""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from helpers import BUILD, QV, ROOT, check_view, mountpoint, run, run_merged, wait_for
from support_daemon import daemon_fixture  # noqa: F401  (provides the `daemon` fixture)
from support_daemon import one_line, unmount

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


# --------------------------------------------------------------- GPU staging, stand-in runtime


FAKE_CUDART = ROOT / "tests" / "gpu" / "fake_cudart.c"
STAGING_OPS = ("cudaHostAlloc", "cudaMalloc", "cudaStreamCreateWithFlags", "cudaMemcpyAsync",
               "cudaEventSynchronize")


@pytest.fixture
def fake_cuda(tmp):
    """Environment that makes the daemon load tests/gpu/fake_cudart.c as libcudart.so."""
    if "cuda runtime" not in run(QV, "-V").stdout:
        pytest.skip("built without the CUDA runtime headers: -o gpu cannot load a runtime")
    lib = tmp / "fakecuda"
    lib.mkdir()
    run("cc", "-O1", "-shared", "-fPIC", "-o", lib / "libcudart.so", FAKE_CUDART, "-lpthread")
    log = tmp / "cuda.log"
    return {"LD_LIBRARY_PATH": str(lib), "FAKE_CUDA_LOG": str(log)}, log


def _calls(log):
    """The stand-in runtime's log: (pid, tid, function, current device, forked-after-init)."""
    if not log.exists():
        return []
    return [(int(p[0]), int(p[1]), p[2], int(p[3]), len(p) > 4)
            for p in (line.split() for line in log.read_text().splitlines())]


def _gpu_status(m):
    """.qvlmoefs/gpu.json, parsed. The file stays open a moment after the read: the daemon
    frees a generated file's bytes at release, and AddressSanitizer's writev interceptor
    checks the reply buffer after the write, so a release that follows the read at once is
    reported as a use after free in sanitizer builds (not a fault in other builds)."""
    with open(m / ".qvlmoefs" / "gpu.json") as f:
        st = json.load(f)
        time.sleep(0.05)
    return st


def _staged(m):
    """gpu.json once staging has settled (no tensor pending), else None."""
    st = _gpu_status(m)
    return st if st["tensors"] and all(t["state"] != "pending" for t in st["tensors"]) else None


def test_gpu_device_opened_in_the_staging_thread_after_the_fork(fake_cuda, mount, ckpt, tmp):
    """Daemonized (no -f, as mount -t and fstab run it), -o gpu=1 stages on device 1: the
    runtime is first used after the daemon forked, by the staging thread, which selects the
    device itself. Before, the parent opened the device and forked (every call in the daemon
    failed: CUDA cannot be used in a child forked after init), and the staging thread never
    called cudaSetDevice (device 0 while gpu.json said 1)."""
    env, log = fake_cuda
    m = tmp / "m"
    m.mkdir()
    p = subprocess.Popen([str(QV), str(ckpt["e10"]), str(m), "-o", "gpu=1,ep_size=2,ep_rank=0"],
                         env={**os.environ, **env, "FAKE_CUDA_DEVICES": "2"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 0 and mountpoint(m), out
    st = wait_for(lambda: _staged(m), timeout=30)
    assert st, f"staging did not settle: {_gpu_status(m)}\n{log.read_text()}"
    assert st["device"] == 1 and {t["state"] for t in st["tensors"]} == {"ready"}, st
    calls = _calls(log)
    assert not [c for c in calls if c[4]], "the runtime was used in a child forked after init"
    staging = [c for c in calls if c[2] in STAGING_OPS]
    assert staging, log.read_text()
    daemon = {c[0] for c in staging}
    assert len(daemon) == 1, staging
    threads = {c[1] for c in staging}
    assert len(threads) == 1, f"staging from several threads: {staging}"
    assert {c[3] for c in staging} == {1}, f"staged on the wrong device: {staging}"
    setdev = [c[:2] for c in calls if c[0] in daemon and c[2] == "cudaSetDevice"]
    assert setdev == [(*daemon, *threads)], f"the staging thread did not select: {calls}"
    # the early check ran the runtime only in a short-lived child: not the daemon, not us
    others = [c for c in calls if c[0] not in daemon]
    assert others and {c[2] for c in others} <= {"cudaGetDeviceCount", "cudaSetDevice"}, others
    assert p.pid not in {c[0] for c in calls}, "the process that forked used the runtime"


# (stand-in runtime?, words of the message): the machine's own (no runtime, or no driver), or a
# stand-in runtime without devices
NO_DEVICE = {"no_runtime": (False, "no CUDA"), "no_device": (True, "no CUDA device 0")}


@pytest.mark.parametrize("foreground", [False, True], ids=["daemonized", "foreground"])
@pytest.mark.parametrize("case", NO_DEVICE.values(), ids=NO_DEVICE.keys())
def test_gpu_without_device_fails_fast(fake_cuda, ckpt, tmp, case, foreground):
    """-o gpu=0 without a usable device fails at once, with one line, with and without -f."""
    with_runtime, words = case
    env = {**fake_cuda[0], "FAKE_CUDA_DEVICES": "0"} if with_runtime else {}
    m = tmp / "m"
    m.mkdir()
    rc, out = run_merged(QV, *(["-f"] if foreground else []), ckpt["e10"], m, "-o", "gpu=0",
                         env=env, timeout=20)
    assert rc is not None and rc != 0, f"exit status {rc}: {out}"
    assert one_line(out) and "gpu=0" in out and words in out, out
    assert not mountpoint(m)


def test_sigterm_while_staging_stops_promptly(fake_cuda, daemon, ckpt, tmp):
    """SIGTERM while -o gpu stages (each copy of the stand-in device takes 1 s, ~16 s in all)
    unmounts within seconds: staging stops between pieces. Before, shutdown waited for it."""
    env, log = fake_cuda
    src = ckpt.make("e10-l16", "--experts", "10", "--layers", "16")
    m = tmp / "m"
    d = daemon(src, m, "-o", "gpu=0", env={**env, "FAKE_CUDA_COPY_MS": "1000"})
    assert wait_for(lambda: any(t["state"] == "ready" for t in _gpu_status(m)["tensors"]),
                    timeout=20), _gpu_status(m)
    st = _gpu_status(m)
    assert any(t["state"] == "pending" for t in st["tensors"]), "staging ended too soon to test"
    time.sleep(0.2)  # the kernel sends gpu.json's release after close(): let it arrive first
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=30) == 0
    took = time.monotonic() - t0
    print(f"SIGTERM to exit while staging: {took:.2f} s")
    assert took < 6, f"SIGTERM took {took:.1f} s while staging\n{d.log()}"
    assert not mountpoint(m)


# ---------------------------------------------------------------------------- descriptor limit


def test_soft_descriptor_limit_raised(daemon, ckpt, tmp):
    """The daemon raises its soft RLIMIT_NOFILE to the hard limit at start."""
    m = tmp / "m"
    d = daemon(ckpt["e10"], m, argv=["sh", "-c", 'ulimit -Sn 64 && exec "$@"', "sh", QV, "-f",
                                     ckpt["e10"], m])
    with open(f"/proc/{d.pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, f"soft limit {soft}, hard {hard}: {line}"


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
