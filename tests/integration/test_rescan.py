"""Rescans (SIGHUP) and the kernel's caches: inode numbers never clash with the root's, every
name the old generation gave the kernel is dropped (at every folder level), and a lookup in
flight during a rescan does not leave an old entry cached. Each old generation is freed, with
its source descriptors, once nothing open holds it, which the daemon's counters (the stats'
"generations") and its descriptors show, without dropping the kernel's caches: after 1,000
rescans the daemon holds the descriptors and memory it had, 100 rescans succeed under
`ulimit -n 48`, a file open across a rescan reads its old bytes to the end, and a lookup whose
reply the kernel did not take pins no generation.
"""
import errno
import os
import shutil
import signal
import threading
import time

import pytest

from helpers import QV, check_view, generations, refused_replies, run, stats, wait_for
from support_daemon import daemon_fixture  # noqa: F401  (provides the `daemon` fixture)
from support_daemon import Log, fd_targets, held_fds, rescan, rss_kib, unmount

SECOND = "model-00002-of-00002.safetensors"


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
    d = daemon(src, m, "-o", "ep_size=2", env={"QVLMOEFS_TEST_FAULTS": "slow_lookup=600"})
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
    # the lookup is in the daemon now, held (its line says so): a sleep instead lost the race
    # on a loaded machine, the SIGHUP coming first
    held = f"test: lookup of {path.rsplit('/', 1)[-1]} held"
    assert wait_for(lambda: log.count(held) > 0, timeout=10), log.text
    d.signal(signal.SIGHUP)
    t.join(timeout=30)
    assert done, "the lookup did not return"
    assert wait_for(lambda: log.count("rescanned the source") > 0, timeout=10)
    assert wait_for(lambda: generations(m) == 1, timeout=10), \
        f"the old generation stays held: {stats(m)}"
    unmount(m)
    assert d.wait() == 0


# --------------------------------------------------------------- many rescans, few descriptors


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


# ------------------------------------------------------------- what stays open across a rescan


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


def test_lookup_whose_reply_fails_does_not_pin_generation(daemon, ckpt, tmp):
    """A lookup whose reply the kernel does not take does not count: after a rescan the old
    generation is freed all the same."""
    src = tmp / "lk"
    shutil.copytree(ckpt["e10"], src)
    m = tmp / "m"
    d = daemon(src, m, env={"QVLMOEFS_TEST_FAULTS": "entry=2"})
    refused_replies(2, lambda: os.stat(m / "config.json"))
    os.stat(m / "tokenizer.json")
    rescan(d, Log(d), 0)
    assert wait_for(lambda: generations(m) == 1, timeout=10), stats(m)
    unmount(m)
    assert d.wait() == 0
