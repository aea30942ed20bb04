"""Foreground daemons for the integration tests: start `qvlmoefs -f`, signal it, always reap it.

Every foreground daemon a test starts belongs to a Daemons object
(the test modules' `daemon` fixture) whose close() unmounts what that daemon still has
mounted, then stops and reaps the process, whatever state the test left it in: still
serving, killed with -9 (a dead mount that answers ENOTCONN), lazily unmounted, or never
mounted at all. Tests that signal the daemon (SIGHUP, SIGUSR1, SIGTERM, SIGKILL), give it
fault-injection variables or a low descriptor limit, or run it under valgrind need the
process itself, which the daemonizing `mount` fixture does not give them. What such tests
read of the process is here too: its descriptors (fd_targets, held_fds, source_fds), its
memory (rss_kib), its log read incrementally (Log) and SIGHUP rescans (rescan).
"""
import errno
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import QV, mountpoint, run, wait_for

MOUNT_TIMEOUT = 10  # daemon_fg waited 200 x 0.05 s for the mount to appear
EXIT_TIMEOUT = 30   # how long a daemon may take to exit once its mount is gone


def _unescape(field):
    """A /proc/mounts path field with its octal escapes (\\040 for a space...) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def listed_mount(path):
    """True when path is a mount point in /proc/self/mounts (never blocks on a dead daemon)."""
    want = os.path.abspath(str(path))
    with open("/proc/self/mounts") as f:
        for line in f:
            if _unescape(line.split()[1]) == want:
                return True
    return False


def mount_options(path):
    """The options field of path's line in /proc/mounts (the last one when stacked), or None."""
    want, found = os.path.abspath(str(path)), None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[1]) == want:
                found = fields[3]
    return found


def one_line(text):
    """True when text is a single line, as `[ "$(echo "$out" | wc -l)" -eq 1 ]` decided it."""
    return "\n" not in text.rstrip("\n")


class Daemon:
    """One daemon process started by Daemons; its output goes to a log file below tmp."""

    def __init__(self, argv, mnt, log, env=None, preexec_fn=None, merge_stdout=False):
        """Start argv (the mount point folder is created first); do not wait for the mount."""
        self.argv = [str(a) for a in argv]
        self.mnt = Path(mnt)
        self.log_path = Path(log)
        self.mnt.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL,
            stdout=self._log if merge_stdout else subprocess.DEVNULL, stderr=self._log,
            env=None if env is None else {**os.environ, **env}, preexec_fn=preexec_fn)

    @property
    def pid(self):
        """The daemon's process id."""
        return self.proc.pid

    def alive(self):
        """True while the process has not exited."""
        return self.proc.poll() is None

    def log(self):
        """Everything the daemon wrote to stderr (and stdout when merged) so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_mounted(self, timeout=MOUNT_TIMEOUT):
        """Wait until the mount point is mounted; fail (showing the log) when it is not."""
        ok = wait_for(lambda: mountpoint(self.mnt) or not self.alive(), timeout=timeout)
        if not (ok and mountpoint(self.mnt)):
            state = "still running" if self.alive() else f"exited with {self.proc.returncode}"
            raise AssertionError(f"mount of {self.argv} did not appear at {self.mnt} within "
                                 f"{timeout}s (daemon {state})\n--- daemon log ---\n{self.log()}")
        return self

    def signal(self, sig):
        """Send sig to the daemon."""
        os.kill(self.proc.pid, sig)

    def wait(self, timeout=EXIT_TIMEOUT):
        """Wait for the daemon to exit and return its exit status; fail if it does not exit."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon {self.argv} still running {timeout}s later\n"
                                 f"--- daemon log ---\n{self.log()}") from None

    def wait_log(self, text, timeout=10):
        """Wait until text appears in the log; return whether it did."""
        return bool(wait_for(lambda: text in self.log(), timeout=timeout))

    def _stale(self):
        """True when the mount point is a mount nobody serves any more (ENOTCONN)."""
        try:
            os.stat(self.mnt)
        except OSError as e:
            return e.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        return False

    def close(self):
        """Unmount what this daemon left mounted, then stop and reap it; never raises.

        A live daemon's mount goes with fusermount3 -u (lazily when busy); once the daemon
        is dead only a stale mount is removed, so a later healthy mount on the same folder
        (the `mount` fixture's, say) is left to its owner.
        """
        try:
            if self.alive() and listed_mount(self.mnt):
                if subprocess.run(["fusermount3", "-u", str(self.mnt)], stderr=subprocess.DEVNULL,
                                  timeout=30).returncode != 0:
                    subprocess.run(["fusermount3", "-uz", str(self.mnt)],
                                   stderr=subprocess.DEVNULL, timeout=30)
            elif not self.alive() and listed_mount(self.mnt) and self._stale():
                subprocess.run(["fusermount3", "-uz", str(self.mnt)], stderr=subprocess.DEVNULL,
                               timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for sig, grace in ((None, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if not self.alive():
                break
            if sig is not None:
                try:
                    self.proc.send_signal(sig)
                    self.proc.send_signal(signal.SIGCONT)  # a stopped daemon takes SIGTERM too
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()


def unmount(path):
    """fusermount3 -u path; assert it worked."""
    run("fusermount3", "-u", path, timeout=30)


class Daemons:
    """The foreground daemons of one test: daemons(src, mnt, *opts) starts and waits for one.

    close() (the fixture's teardown) closes them all, newest first.
    """

    def __init__(self, folder):
        """Daemon logs go to folder/daemon-N.log."""
        self.folder = Path(folder)
        self.started = []

    def __call__(self, src, mnt, *opts, argv=None, env=None, preexec_fn=None, merge_stdout=False,
                 wait=True, timeout=MOUNT_TIMEOUT):
        """Start `QV -f src mnt *opts` (or argv instead) and, with wait, wait for the mount.

        env adds variables to the daemon's environment; preexec_fn runs in the child before
        exec (resource limits); merge_stdout sends stdout to the log as well.
        """
        if argv is None:
            argv = [QV, "-f", src, mnt, *opts]
        log = self.folder / f"daemon-{len(self.started) + 1}.log"
        d = Daemon(argv, mnt, log, env=env, preexec_fn=preexec_fn, merge_stdout=merge_stdout)
        self.started.append(d)
        if wait:
            d.wait_mounted(timeout)
        return d

    def close(self):
        """Close every daemon this test started (see Daemon.close)."""
        for d in reversed(self.started):
            d.close()


def source_fds(pid, src):
    """How many descriptors of process pid are open on src or a file below it."""
    src = os.path.realpath(src)
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target == src or target.startswith(src + "/"):
            n += 1
    return n



@pytest.fixture(name="daemon")
def daemon_fixture(fuse, tmp):
    """Start foreground daemons for one test; all are unmounted, stopped and reaped after it.

    Test modules import daemon_fixture and ask for `daemon`; it needs a machine that can mount.
    """
    daemons = Daemons(tmp)
    try:
        yield daemons
    finally:
        daemons.close()


def fd_targets(pid):
    """What each open descriptor of process pid names (readlink of /proc/PID/fd/N), sorted."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return sorted(out)


def rss_kib(pid):
    """The resident set size of process pid in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def held_fds(pid):
    """Descriptors of pid other than io_uring rings (which come and go with worker threads)."""
    return [t for t in fd_targets(pid) if t != "anon_inode:[io_uring]"]


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
