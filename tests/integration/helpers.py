"""Shared helpers of the integration suite: paths of the build, running commands, the checkers.

Test modules import this as `helpers` (pytest puts this folder on sys.path). Everything here
works from any current folder: paths derive from this file, not from where pytest was started.
The view checker and ep_check run in-process through the tests/checkview package, so a
mismatch shows up in the assertion message instead of in a child's stderr; safetensors files
are read with its reader (checkview.reader: read_header, header_of, read_tensors) and written
with write_st here. Also here: the second user of the permission tests (TEST_USER, as_user...),
one-line error checks, and the daemon's counters (stats, generations, getxattr_raw). What needs
the foreground daemon process itself (signals, its log, its descriptors) is in support_daemon.
"""
import contextlib
import errno
import ctypes
import ctypes.util
import io
import json
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = os.environ.get("BUILD", "build")
QV = ROOT / BUILD / "qvlmoefs"
MK = ROOT / BUILD / "qvlmoefs-mkckpt"
PY = sys.executable

if str(ROOT / "tests") not in sys.path:  # the checkview package lives in tests/
    sys.path.insert(0, str(ROOT / "tests"))

import checkview  # noqa: E402  (needs the sys.path entry above)
from checkview.reader import read_tensors  # noqa: E402
from checkview import ep as _ep  # noqa: E402


def _show(args, rc, out, err):
    """A readable account of one command's outcome, for assertion messages."""
    return (f"command: {shlex.join(str(a) for a in args)}\nexit status: {rc}\n"
            f"--- stdout ---\n{out or ''}--- stderr ---\n{err or ''}")


def run(*args, check=True, timeout=120, **kw):
    """Run a command in text mode with stdout/stderr captured; return the CompletedProcess.

    With check=True a nonzero exit (or running past timeout) raises AssertionError showing the
    command, its exit status and both outputs, so a failing test says what went wrong.
    """
    __tracebackhide__ = True  # failures point at the test, not here
    args = [str(a) for a in args]
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    try:
        p = subprocess.run(args, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise AssertionError(f"timed out after {timeout}s\n" + _show(args, None, out, err)) from None
    if check and p.returncode != 0:
        raise AssertionError("command failed\n" + _show(args, p.returncode, p.stdout, p.stderr))
    return p


def check_view(src, view, *cli_args):
    """Check VIEW against SRC with the independent checker; same arguments as check_view.py.

    Returns the Report; raises AssertionError listing the mismatches (or the source/argument
    problem) when the view is not what the contract says.
    """
    __tracebackhide__ = True  # failures point at the test, not here
    argv = [str(src), str(view)] + [str(a) for a in cli_args]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = checkview.parse_args(argv)
    except SystemExit:
        raise AssertionError(f"check_view {shlex.join(argv)}: bad arguments: {err.getvalue()}") from None
    try:
        rep = checkview.check_args(args)
    except (checkview.Fatal, OSError) as e:
        raise AssertionError(f"check_view {shlex.join(argv)}: error: {e}") from None
    if rep.errors:
        shown = "\n".join(rep.errors[:60])
        more = f"\n... and {len(rep.errors) - 60} more" if len(rep.errors) > 60 else ""
        raise AssertionError(f"check_view {shlex.join(argv)}: {len(rep.errors)} mismatches "
                             f"({rep.files} files, {rep.tensors} tensors compared):\n{shown}{more}")
    return rep


def ep_check(*args):
    """Run ep_check (reassemble|minbytes ...) in-process; assert it succeeds; return its stdout."""
    __tracebackhide__ = True  # failures point at the test, not here
    argv = ["ep_check.py"] + [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = _ep.main(argv)
    except SystemExit as e:  # view_tensor exits with a message
        rc = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int):
            err.write(f"{e.code}\n")
    if rc != 0:
        raise AssertionError("ep_check failed\n" + _show(argv, rc, out.getvalue(), err.getvalue()))
    return out.getvalue()


def mountpoint(path):
    """True when path is a mountpoint, exactly as `mountpoint -q` decides it.

    A mount whose daemon does not answer within 10 s counts as mounted (something is there).
    """
    try:
        return subprocess.run(["mountpoint", "-q", str(path)], timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return True


def wait_for(pred, timeout=10, interval=0.05):
    """Poll pred() until it is true; return its last value (falsy when the time ran out)."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= end:
            return v
        time.sleep(interval)


def stat_field(mnt, name):
    """One counter of the daemon serving mnt (from the user.qvlmoefs.stats xattr of its root)."""
    return json.loads(os.getxattr(str(mnt), "user.qvlmoefs.stats"))[name]


def read_all(folder):
    """Read every regular file below folder to its end with plain read() calls.

    Like `find -name .qvlmoefs -prune -o -type f`: inspection folders and symlinks are skipped.
    """
    for d, dirs, files in os.walk(folder):
        dirs[:] = [x for x in dirs if x != ".qvlmoefs"]
        for name in files:
            p = os.path.join(d, name)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass


def within_1pct(got, want):
    """Assert got is at least want and at most 1% above it (source bytes against the minimum)."""
    __tracebackhide__ = True
    assert want <= got and got * 100 <= want * 101, \
        f"source bytes read: {got}, minimal: {want} (must be within [minimal, minimal + 1%])"


def mounts_below(root):
    """Mountpoints strictly below root (from /proc/mounts, which never blocks), deepest first."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            target = line.split()[1]
            target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), target)
            if target.startswith(prefix):
                found.append(target)
    return sorted(found, reverse=True)


def unmount_all(root):
    """Unmount every mount below root, deepest first: fusermount3 -u, else umount -l."""
    for m in mounts_below(root):
        try:
            ok = subprocess.run(["fusermount3", "-u", m], stderr=subprocess.DEVNULL,
                                timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if not ok:
            subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL, timeout=30)


def fuse_missing():
    """Why this machine cannot mount, or None when it can."""
    try:
        if not stat.S_ISCHR(os.stat("/dev/fuse").st_mode):
            return "no /dev/fuse or fusermount3 on this machine"
    except OSError:
        return "no /dev/fuse or fusermount3 on this machine"
    if shutil.which("fusermount3") is None:
        return "no /dev/fuse or fusermount3 on this machine"
    return None


# What `make install` writes to (mount(8) finds helpers in /sbin only); the tests that install
# for real do it in a private mount namespace where each of these is an overlay.
SYSTEM_DIRS = ("/usr/local", "/sbin")


def private_ns_missing():
    """Why a private mount namespace with overlays cannot be made here, or None when it can."""
    if os.getuid() != 0:
        return "a private mount namespace with overlays needs root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    return None


def in_private_ns(tmp, script, cwd=None, env=None, timeout=300):
    """Run bash script in a private mount namespace (unshare -m --propagation private) in which
    /usr/local and /sbin are overlays whose writes land under tmp/ns (and /run/mount, libmount's
    utab, a tmpfs): `make install` and
    `mount -t fuse.qvlmoefs` then work as on a machine where it was installed, and the machine
    itself is never changed. Every qvlmoefs mount made inside is unmounted when the script ends
    (the daemons exit), so nothing outlives the namespace. Returns the CompletedProcess."""
    __tracebackhide__ = True
    setup = ["set -e"]
    for i, d in enumerate(SYSTEM_DIRS):
        real = os.path.realpath(d)
        up, work = tmp / "ns" / f"upper{i}", tmp / "ns" / f"work{i}"
        up.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        # a mount below the folder (a bind-mounted /usr/local/cuda) would vanish under the
        # overlay, and a `make` inside would build without it: park it, then move it back
        park = shlex.quote(str(tmp / "ns" / f"sub{i}"))
        q = shlex.quote(real)
        setup.append(f"subs{i}=$(findmnt -rn -o TARGET | grep '^'{q}/ | sort || true)")
        setup.append(f"n=0; for s in $subs{i}; do n=$((n+1)); mkdir -p {park}/$n; "
                     f"mount --rbind \"$s\" {park}/$n; done")
        setup.append(f"mount -t overlay overlay -o lowerdir={q},"
                     f"upperdir={shlex.quote(str(up))},workdir={shlex.quote(str(work))} {q}")
        setup.append(f"n=0; for s in $subs{i}; do n=$((n+1)); mount --move {park}/$n \"$s\"; done")
    # libmount records helper mounts in /run/mount/utab: a tmpfs there keeps that in here too
    setup.append("if [ -d /run/mount ]; then mount -t tmpfs qvtest /run/mount; fi")
    cleanup = ("qv_cleanup() { awk '$3 == \"fuse.qvlmoefs\" {print $2}' /proc/self/mounts | "
               "sort -r | while read -r m; do fusermount3 -u \"$m\" 2>/dev/null || "
               "umount -l \"$m\"; done; }\ntrap qv_cleanup EXIT")
    body = "\n".join(setup + ["set +e", cleanup, "set -e", script])
    # from a file, not bash -c: `pgrep -f` in a script must not find the shell running it
    f = tmp / "ns" / "script.sh"
    f.write_text(body + "\n")
    return run("unshare", "-m", "--propagation", "private", "bash", f, check=False,
               cwd=cwd, env=env, timeout=timeout)


def run_merged(*args, timeout=60, env=None, cwd=None):
    """Run a command with stderr folded into stdout, as `out=$(cmd 2>&1)` did.

    Returns (exit status, output); the exit status is None when the command ran past timeout
    (it is killed then), so a caller can decide whether a hang matters.
    """
    args = [str(a) for a in args]
    full_env = None if env is None else {**os.environ, **env}
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out
    return p.returncode, p.stdout


def single_line(p):
    """The output of a failed command (a CompletedProcess): one line (asserted), without its
    newline."""
    __tracebackhide__ = True
    out = (p.stdout + (p.stderr or "")).rstrip("\n")
    assert out and "\n" not in out, f"not one line: {out!r}"
    return out


def one_line_naming(output, *words):
    """The one line of output holding every word (asserted: exactly one)."""
    __tracebackhide__ = True
    lines = [ln for ln in output.splitlines() if all(w in ln for w in words)]
    assert len(lines) == 1, f"want one line naming {words}, got:\n{output}"
    return lines[0]


# ---------------------------------------------------------------------------- a second user

TEST_USER = "qvlmoefs-test"  # the other user of the permission tests (they need root)


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


# ---------------------------------------------------------------------------- files and counters

def write_st(path, meta, tensors):
    """A safetensors file as a writer makes one: metadata (None: no __metadata__), then
    tensors {name: (dtype, shape, bytes)} in the given order, the header padded to 8 bytes.
    (checkview.reader.read_tensors reads one back.)"""
    hdr, off = ({"__metadata__": meta} if meta is not None else {}), 0
    for name, (dtype, shape, data) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    j = json.dumps(hdr, separators=(",", ":")).encode()
    j += b" " * (-(8 + len(j)) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(j)) + j + b"".join(d for _, _, d in tensors.values()))


def stats(mnt):
    """The daemon's counters (user.qvlmoefs.stats of the root)."""
    return json.loads(os.getxattr(str(mnt), "user.qvlmoefs.stats"))


def generations(mnt):
    """Generations the daemon holds (1 when it does not say: the descriptors tell then)."""
    return stats(mnt).get("generations", 1)


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


def refused_replies(n, call):
    """call() n times; each must fail with ECANCELED, the error of a reply the daemon's fault
    injection refused (QVLMOEFS_TEST_FAULTS open=N or entry=N)."""
    for _ in range(n):
        try:
            call()
        except OSError as e:
            assert e.errno == errno.ECANCELED, e
        else:
            raise AssertionError(f"{call} succeeded; its reply should have been refused")


# ---------------------------------------------------------------------------- comparing views

def tensors_below(root):
    """{relative path: (metadata, {key: (dtype, shape, bytes)})} of every safetensors file below
    root, and {relative path: weight_map} of every index."""
    files, maps = {}, {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if n.endswith(".safetensors"):
                files[rel] = read_tensors(p)
            elif n.endswith(".safetensors.index.json"):
                maps[rel] = json.loads(p.read_text())["weight_map"]
    return files, maps


def assert_same_views(got, want):
    """The two mounted views hold the same files, tensors (names, dtypes, shapes, bytes),
    metadata and index maps (headers may be padded differently: computed tensors are copied,
    so their file offsets need no page alignment)."""
    __tracebackhide__ = True
    (gf, gm), (wf, wm) = tensors_below(got), tensors_below(want)
    assert sorted(gf) == sorted(wf), f"files {sorted(gf)} != {sorted(wf)}"
    assert gm == wm, "index weight maps differ"
    for rel in wf:
        (gmeta, gt), (wmeta, wt) = gf[rel], wf[rel]
        assert gmeta == wmeta, f"{rel}: __metadata__ {gmeta} != {wmeta}"
        assert list(gt) == list(wt), f"{rel}: keys {list(gt)} != {list(wt)}"
        for k in wt:
            assert gt[k][:2] == wt[k][:2], f"{rel}: {k}: {gt[k][:2]} != {wt[k][:2]}"
            assert gt[k][2] == wt[k][2], f"{rel}: {k}: bytes differ"
