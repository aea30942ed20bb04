"""Hardening against hostile options, hostile sources and unlucky timing.

Options whose arithmetic would wrap (ep_size x ep_shard_size in 32 bits), sharded saves whose
coverage check would wrap, files swapped for links or FIFOs between the scan and the open,
io_uring failures with reads in flight, shutdown while staging on a device, and option
strings the mount helper must pass through unmangled. Each test states the behaviour that
holds now; before the fixes each of them failed.
"""
import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import time

import pytest

from helpers import QV, ROOT, check_view, mountpoint, run, wait_for
from support_daemon import daemon_fixture  # noqa: F401  (provides the `daemon` fixture)
from support_daemon import one_line, run_merged, unmount

# ---------------------------------------------------------------- option arithmetic

# -o options: words the one-line error must contain
WRAPPING_OPTIONS = {
    # 65536 x 65536 folders wrapped to 0 in 32 bits: a zero-size plan table, read anyway
    "wraps_to_zero": ("ep_size=65536,ep_shard_size=65536",
                      ["4294967296 folders", "at most 65536"]),
    # 4000000000 plans asked for at once
    "huge": ("ep_size=4000000000", ["ep_size=4000000000", "from 1 to 65536"]),
    # %u read "-1" as 4294967295
    "negative": ("ep_size=-1", ["ep_size=-1", "from 1 to 65536"]),
    "negative_rank": ("ep_size=2,ep_rank=-1", ["ep_rank=-1", "from 0 to 65535"]),
    "trailing_junk": ("ep_size=2x", ["ep_size=2x", "whole number"]),
    "too_many_folders": ("ep_size=10,ep_shard_size=65536", ["655360 folders", "at most 65536"]),
    # the expert count bounds ep_size, and the message gives the range
    "more_ranks_than_experts": ("ep_size=65536", ["ep_size=65536 exceeds its 10 experts",
                                                  "from 1 to 10"]),
}


@pytest.mark.parametrize("case", WRAPPING_OPTIONS.values(), ids=WRAPPING_OPTIONS.keys())
def test_option_arithmetic_is_bounded(ckpt, mount, tmp, case):
    """Slicing options are bounded (by the expert count too) and fail fast with one line."""
    opts, words = case
    p = mount.fail(ckpt["e10"], tmp / "m", "-o", opts, stderr=subprocess.STDOUT, timeout=20)
    lines = [x for x in p.stdout.rstrip("\n").split("\n") if "do not divide" not in x]
    assert len(lines) == 1, f"-o {opts}: not one error line: {p.stdout!r}"
    for w in words:
        assert w in lines[0], f"-o {opts}: {w!r} not in {lines[0]!r}"


# ---------------------------------------------------------------- hostile sharded saves

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


# ---------------------------------------------------------------- io_uring failures

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

SECOND = "model-00002-of-00002.safetensors"
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


# ---------------------------------------------------------------- GPU staging, stand-in runtime

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


# ---------------------------------------------------------------- the mount helper's quoting

HELPER = ROOT / "mount-scripts" / "mount.fuse.qvlmoefs"
RECORDER = """#!/usr/bin/python3
import json, os, sys
with open(os.environ["RECORD"], "w") as f:
    json.dump(sys.argv[1:], f)
"""


def _helper(tmp, binary):
    """A copy of the mount helper with @BIN@ made binary, as make install writes it."""
    h = tmp / "mount.fuse.qvlmoefs"
    h.write_text(HELPER.read_text().replace("@BIN@", str(binary)))
    h.chmod(0o755)
    return h


# helper arguments after SOURCE MOUNTPOINT: the -o string the daemon must get (None: no -o)
HELPER_CASES = {
    "drops_fstab_words": (["-o", "ro,view=native,nofail"], "ro,view=native"),
    "all_dropped": (["-o", "nofail,_netdev"], None),
    "empty_fields": (["-o", "ro,,view=hf,"], "ro,view=hf"),
    # libfuse's escaped comma is part of the value: "auto" here is no fstab word
    "escaped_comma": (["-o", r"ro,exclude=a\,auto,nofail"], r"ro,exclude=a\,auto"),
    # libmount's quoting: the quotes go, the commas inside get their backslash; the
    # backslashes of exclude= are the regex's and stay, those of other values get libfuse's
    "quoted_value": (["-o", r'exclude="x{1,2}\d\,",defaults,ro'], r"exclude=x{1\,2}\d\,,ro"),
    "quoted_whole": (["-o", r'"exclude=x{1,2}\d",ro'], r"exclude=x{1\,2}\d,ro"),
    "quoted_other": (["-o", r'fsname="a\b,c"'], r"fsname=a\\b\,c"),
    # glob characters stay literal even when a file in the current folder matches them
    "glob_star": (["-o", "exclude=x*"], "exclude=x*"),
    "glob_class": (["-o", "ro,exclude=[ab]?"], "ro,exclude=[ab]?"),
    "two_o": (["-o", "ro", "-o", r"exclude=y\,z"], r"ro,exclude=y\,z"),
    "joined_o": (["-oro,exclude=.*_extra_state.*"], "ro,exclude=.*_extra_state.*"),
}


@pytest.mark.parametrize("case", HELPER_CASES.values(), ids=HELPER_CASES.keys())
def test_mount_helper_passes_options_unmangled(tmp, case):
    """mount.fuse.qvlmoefs hands the daemon the options as written, minus fstab-only words:
    no word splitting inside escaped or quoted commas, no globbing (before, `for o in $opts`
    split escaped commas, so a value could lose a piece that looked like an fstab word, and
    expanded globs against the current folder)."""
    args, want = case
    rec = tmp / "rec.py"
    rec.write_text(RECORDER)
    rec.chmod(0o755)
    h = _helper(tmp, rec)
    for bait in ("exclude=x-globbed", "exclude=a1"):  # what the globs would expand to
        (tmp / bait).write_text("")
    out = tmp / "argv.json"
    run(h, "SRC", "MNT", *args, cwd=tmp, env={**os.environ, "RECORD": str(out)})
    got = json.loads(out.read_text())
    assert got == ["SRC", "MNT"] + ([] if want is None else ["-o", want]), got


# a regex with a comma and glob characters, written with libmount's quotes or "\," (the
# one escape of exclude=: its backslashes are the regex's)
PATTERN = r".*(_extra_state|layers\.[0-9]{1,3}\.input_layernorm).*"
WRITTEN = {"quoted": f'exclude="{PATTERN}"', "escaped": "exclude=" + PATTERN.replace(",", "\\,")}


@pytest.mark.parametrize("written", WRITTEN.values(), ids=WRITTEN.keys())
def test_mount_helper_mounts_with_a_comma_in_exclude(fuse, ckpt, tmp, written):
    """Through the helper (as mount -t and fstab run it), exclude= with a comma and glob
    characters reaches the daemon intact: the view leaves out exactly what it matches."""
    h = _helper(tmp, QV)
    m = tmp / "m"
    m.mkdir()
    run(h, ckpt["native"], m, "-o", f"ro,{written},nofail", cwd=tmp, timeout=60)
    try:
        assert mountpoint(m)
        check_view(ckpt["native"], m, "--view", "hf", "--exclude", PATTERN)
        assert not any(".input_layernorm" in k for k in
                       json.loads((m / "model.safetensors.index.json").read_text())["weight_map"])
    finally:
        unmount(m)
