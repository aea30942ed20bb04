"""Rescans (SIGHUP) and the kernel's caches: inode numbers never clash with the root's, every
name the old generation gave the kernel is dropped (at every folder level), and a lookup in
flight during a rescan does not leave an old entry cached. Each old generation is freed, with
its source descriptors, once nothing open holds it, which the daemon's counters (the stats'
"generations") and its descriptors show, without dropping the kernel's caches.
"""
import errno
import os
import shutil
import signal
import threading
import time

import pytest

from helpers import check_view, wait_for
from support_daemon import daemon_fixture  # noqa: F401  (provides the `daemon` fixture)
from support_daemon import unmount
from test_hardening_a import Log, generations, held_fds, rescan, stats


def _inodes(top):
    """Inode number of every entry below top (followed into folders), by path."""
    out = {}
    for dirpath, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            out[p] = os.lstat(p).st_ino
    return out


def test_rank_folders_after_rescan_keep_their_own_inodes(daemon, ckpt, tmp):
    """ep_size=2, SIGHUP, then the rank folders (built on first use, after the rescan) list
    and read; no entry shares the root's inode number 1; the old generation is freed."""
    src = tmp / "rs"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m, "-o", "ep_size=2")
    log = Log(d)
    os.listdir(m)
    rescan(d, log, 0)
    assert "rescanned the source" in log.text, log.text
    assert os.stat(m).st_ino == 1
    names = os.listdir(m / "ep-rank-0")
    assert "config.json" in names, names
    assert (m / "ep-rank-0/config.json").read_bytes() == (src / "config.json").read_bytes()
    ino = _inodes(m)
    assert 1 not in ino.values(), [p for p, i in ino.items() if i == 1]
    assert len(set(ino.values())) == len(ino), "two entries share an inode number"
    assert wait_for(lambda: generations(m) == 1, timeout=10), stats(m)
    check_view(src, m / "ep-rank-1", "--ep-size", "2", "--ep-rank", "1")
    unmount(m)
    assert d.wait() == 0


def test_inspection_folder_first_used_after_rescan(daemon, ckpt, tmp):
    """In a plain view, `.qvlmoefs/` used for the first time after a rescan (so built then)
    lists and reads, under an inode number of its own."""
    src = tmp / "rs"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m)
    log = Log(d)
    os.listdir(m)
    rescan(d, log, 0)
    h = m / ".qvlmoefs"
    assert os.stat(h).st_ino != 1
    assert "view.json" in os.listdir(h)
    assert (h / "view.json").read_bytes()
    assert wait_for(lambda: generations(m) == 1, timeout=10), stats(m)
    unmount(m)
    assert d.wait() == 0


def test_files_open_across_rescans_free_every_generation(daemon, ckpt, tmp):
    """Five rounds of "open ep-rank-0/config.json, SIGHUP, close": once closed, every old
    generation and its descriptors are freed, with no help from drop_caches (before, the
    entries below the root stayed cached and held them for a day)."""
    src = tmp / "rs"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m, "-o", "ep_size=2")
    log, n = Log(d), 0
    (m / "ep-rank-0/config.json").read_bytes()
    n = rescan(d, log, n)
    assert wait_for(lambda: generations(m) == 1, timeout=10), stats(m)
    fds0 = len(held_fds(d.pid))
    for _ in range(5):
        with open(m / "ep-rank-0/config.json", "rb") as f:
            f.read()
            n = rescan(d, log, n)
    freed = wait_for(lambda: generations(m) == 1 and len(held_fds(d.pid)) <= fds0, timeout=10)
    assert freed, f"{stats(m)}; descriptors {fds0} -> {len(held_fds(d.pid))}"
    assert (m / "ep-rank-0/config.json").read_bytes() == (src / "config.json").read_bytes()
    unmount(m)
    assert d.wait() == 0


def test_folder_held_across_rescan_is_stale_then_freed(daemon, ckpt, tmp):
    """A folder two levels down (`ep-rank-0/.qvlmoefs/headers`) held open across a rescan
    still lists its names, but a lookup through it answers ESTALE: any entry the kernel took
    from it would stay cached and hold the old generation. Once it is closed, the generation
    is freed; the same path from the root reaches the new generation."""
    src = tmp / "rs"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m, "-o", "ep_size=2")
    log = Log(d)
    deep = m / "ep-rank-0/.qvlmoefs/headers"
    name = "model-00001-of-00002.safetensors.json"
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = sorted(os.listdir(deep))
        rescan(d, log, 0)
        assert sorted(os.listdir(f"/proc/self/fd/{fd}")) == before
        with pytest.raises(OSError) as e:
            os.stat(name, dir_fd=fd)
        assert e.value.errno == errno.ESTALE, e.value
    finally:
        os.close(fd)
    assert wait_for(lambda: generations(m) == 1, timeout=10), stats(m)
    assert (deep / name).read_bytes()
    unmount(m)
    assert d.wait() == 0


@pytest.mark.parametrize("path", ["ep-rank-0/nonexistent", ".qvlmoefs"],
                         ids=["negative_below", "root_name"])
def test_lookup_in_flight_during_rescan_is_not_cached(daemon, ckpt, tmp, path):
    """A lookup that began before a rescan and replies after it must not leave the old
    generation's entry cached for a day: with every lookup slowed down, a SIGHUP comes while
    one is in flight; the old generation is still freed afterwards. The kernel holds the
    folder's inode lock over a lookup, and the rescan's invalidation of a name in that folder
    waits for it, so what the lookup caches is dropped right after it lands (a negative entry
    below an old folder too, which would otherwise hold that folder)."""
    src = tmp / "rs"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m, "-o", "ep_size=2", env={"QVLMOEFS_TEST_FAIL_REPLIES": "slow_lookup=600"})
    os.listdir(m / "ep-rank-0")  # built, and its entry in the kernel: the lookup is the last
    log = Log(d)
    done = []

    def look():
        """stat the path; record the outcome."""
        try:
            done.append(os.stat(m / path))
        except FileNotFoundError as e:
            done.append(e)

    t = threading.Thread(target=look)
    t.start()
    time.sleep(0.2)  # the lookup is in the daemon now, waiting
    d.signal(signal.SIGHUP)
    t.join(timeout=30)
    assert done, "the lookup did not return"
    assert wait_for(lambda: log.count("rescanned the source") > 0, timeout=10)
    assert wait_for(lambda: generations(m) == 1, timeout=10), \
        f"the old generation stays held: {stats(m)}"
    unmount(m)
    assert d.wait() == 0
