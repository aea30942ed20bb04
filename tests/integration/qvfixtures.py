"""Fixtures of the integration suite and of tests/real: a work folder, generated checkpoints,
mounts that always unmount, and a sanitizer-report check after every test.

Each suite's conftest.py star-imports this module, so the fixtures and hooks are the same
objects in both (pytest finds fixtures and hooks among a conftest's attributes).

Modelled on libfuse's test/ folder: each test mounts what it needs through the `mount`
fixture, and teardown unmounts everything below the test's folder even when the test failed,
so one broken test cannot leave mounts (or blocked daemons) behind for the next. The session
ends with a plain `N passed, N failed[, N skipped]` line that tests/run.sh can tally.
"""
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

import helpers
from helpers import MK, QV, run

# mkckpt arguments of the checkpoints that many tests share
CHECKPOINTS = {
    "hf": [],
    "native": ["--naming", "native", "--extra-state"],
    "odd": ["--unpadded", "--shuffle-keys", "--no-metadata", "--data-order", "reverse",
            "--scale-inv", "--shards", "3"],
    "noprefix": ["--no-prefix", "--data-order", "name", "--shards", "1"],
    "e10": ["--experts", "10"],
    "e10n": ["--experts", "10", "--naming", "native", "--shards", "3"],
    # files of several 1 MiB requests, most of them inside one tensor (-o splice replies)
    "big": ["--experts", "16", "--hidden", "512", "--layers", "2"],
}
SANITIZERS = {"ASAN_OPTIONS": "log_path={}/san:", "UBSAN_OPTIONS": "log_path={}/san:print_stacktrace=1:",
              "TSAN_OPTIONS": "log_path={}/san:"}


def _rmtree(path):
    """Remove a tree even where tests dropped write bits (read-only copies of sources)."""
    def fix(func, p, _):
        """Give the folder back its write bit and retry once."""
        try:
            os.chmod(os.path.dirname(p), 0o755)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o755)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=fix)


def _daemons_below(root):
    """Pids of qvlmoefs processes whose command line names a path below root."""
    prefix, pids = str(root).rstrip("/") + "/", []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith("qvlmoefs") and \
                any(a.startswith(prefix) for a in argv[1:]):
            pids.append(int(d))
    return pids


def _settle(root, timeout=10):
    """Unmount everything below root, then give the daemons time to exit.

    A daemon writes its sanitizer report (LeakSanitizer's, say) as it exits, after fusermount3
    has returned; waiting here lets the report be blamed on the test that started it.
    """
    helpers.unmount_all(root)
    helpers.wait_for(lambda: not _daemons_below(root), timeout=timeout)


@pytest.fixture(scope="session")
def work():
    """The session's scratch folder (0755 so other users can enter it), removed at the end.

    Sanitizer logs of daemonized processes (which have no stderr) go to work/san.*.
    """
    w = Path(tempfile.mkdtemp(prefix="qvlmoefs-it.", dir="/tmp"))
    w.chmod(0o755)
    saved = {k: os.environ.get(k) for k in SANITIZERS}
    for k, fmt in SANITIZERS.items():
        os.environ[k] = fmt.format(w) + (saved[k] or "")
    yield w
    _settle(w)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if not helpers.mounts_below(w):  # never delete through a mount that would not go away
        _rmtree(w)


class Checkpoints:
    """Generated checkpoints under work, each made on first use and then shared by all tests.

    ckpt["hf"] etc. are the shared set (CHECKPOINTS); ckpt.make(name, *args) makes others.
    Tests must treat them as read-only.
    """

    def __init__(self, work):
        """Remember where checkpoints go; nothing is generated yet."""
        self.work, self.made = work, {}

    def make(self, name, *mkckpt_args):
        """Generate work/name with qvlmoefs-mkckpt *mkckpt_args (once); return its Path."""
        if name not in self.made:
            path = self.work / name
            run(MK, *mkckpt_args, path, timeout=300)
            self.made[name] = path
        return self.made[name]

    def __getitem__(self, name):
        """One of the fixed checkpoints (KeyError for other names)."""
        return self.make(name, *CHECKPOINTS[name])


@pytest.fixture(scope="session")
def ckpt(work):
    """The session's checkpoints, generated lazily (see Checkpoints)."""
    return Checkpoints(work)


@pytest.fixture(scope="session")
def fuse():
    """Skip, saying why, when this machine cannot mount; never skip when it can."""
    why = helpers.fuse_missing()
    if why:
        pytest.skip(why)


@pytest.fixture
def tmp(work, request):
    """A fresh empty folder (0755) for one test, removed afterwards unless a mount stays."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    t = Path(tempfile.mkdtemp(prefix=name + ".", dir=work))
    t.chmod(0o755)
    yield t
    _settle(t)
    if not helpers.mounts_below(t):
        _rmtree(t)


class Mounter:
    """mount(src, mnt=None, *opts): mount a view with the daemon forking into the background.

    Every mount lies below the test's tmp folder; teardown unmounts them all.
    """

    def __init__(self, tmp):
        """Start with no mounts; automatic mountpoints are tmp/m, tmp/m2, tmp/m3, ..."""
        self.tmp, self.n = tmp, 0

    def _next(self, consume=True):
        """The next automatic mountpoint folder (created)."""
        n = self.n + 1
        if consume:
            self.n = n
        m = self.tmp / ("m" if n == 1 else f"m{n}")
        m.mkdir(parents=True, exist_ok=True)
        return m

    def __call__(self, src, mnt=None, *opts, timeout=60):
        """Run QV src mnt *opts; assert it exited 0 and mnt is a mountpoint; return mnt."""
        __tracebackhide__ = True
        mnt = self._next() if mnt is None else Path(mnt)
        mnt.mkdir(parents=True, exist_ok=True)
        run(QV, src, mnt, *opts, timeout=timeout)
        assert helpers.mountpoint(mnt), f"{QV} {src} {mnt} exited 0 but {mnt} is not a mountpoint"
        return mnt

    def fail(self, src, mnt=None, *opts, timeout=60, **kw):
        """Run QV src mnt *opts expecting failure; assert nothing got mounted; return the result.

        With mnt None the folder is the one the next mount(src) would use; kw go to run()
        (stderr=subprocess.STDOUT gives the output as `2>&1` would).
        """
        __tracebackhide__ = True
        mnt = self._next(consume=False) if mnt is None else Path(mnt)
        mnt.mkdir(parents=True, exist_ok=True)
        p = run(QV, src, mnt, *opts, check=False, timeout=timeout, **kw)
        assert p.returncode != 0, f"mount was expected to fail but exited 0: {QV} {src} {mnt} " \
            f"{' '.join(map(str, opts))}\noutput: {p.stdout}{p.stderr or ''}"
        assert not helpers.mountpoint(mnt), f"{mnt} got mounted although the command failed"
        return p

    def umount(self, path):
        """fusermount3 -u path (30 s at most); assert it succeeded."""
        run("fusermount3", "-u", path, timeout=30)


@pytest.fixture
def mount(fuse, tmp):
    """The Mounter of one test; every mount below tmp is unmounted at teardown, always."""
    m = Mounter(tmp)
    try:
        yield m
    finally:
        _settle(tmp)


@pytest.fixture(autouse=True)
def sanitizer_reports(work):
    """Fail the test when a sanitizer report file (work/san*) appeared during it.

    Daemons have no stderr, so their ASan/UBSan/TSan reports only exist as these files. This
    fixture is set up first and so torn down last, after the mounts are gone.
    """
    yield
    found = sorted(p for p in work.glob("san*") if p.is_file())
    if not found:
        return
    seen = work / "reported"
    seen.mkdir(exist_ok=True)
    text = []
    for p in found:
        text.append(f"--- {p.name}\n" + p.read_text(errors="replace")[:6000])
        p.rename(seen / f"{time.monotonic_ns()}.{p.name}")
    pytest.fail("sanitizer reports:\n" + "\n".join(text), pytrace=False)


# ---------------------------------------------------------------- the closing summary line

from tally import (pytest_collectreport, pytest_runtest_logreport,  # noqa: E402,F401
                   pytest_sessionfinish, pytest_terminal_summary)



def pytest_report_header():
    """Say which binaries the session tests."""
    return f"qvlmoefs: {QV} (mkckpt {MK})" + ("" if os.access(QV, os.X_OK) else " MISSING")


def pytest_sessionstart(session):
    """Refuse early, with a clear message, when the binaries have not been built."""
    for b in (QV, MK):
        if not (b.is_file() and os.access(b, os.X_OK)) or not stat.S_ISREG(b.stat().st_mode):
            raise pytest.UsageError(f"{b} is missing: build it first (make all)")
