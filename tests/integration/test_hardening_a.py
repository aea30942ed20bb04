"""Hardening (issue 14, part A): what other users may read, generations freed after rescans,
names that folders and files may have, xattr size queries, access(), statfs while folders are
built, and replies the kernel did not take.

Each test is one behaviour; the other users' tests need root (to create the test user and to
mount with allow_other), as test_reliability.py's do.
"""
import os
import threading

from support_daemon import daemon_fixture  # noqa: F401  (provides the `daemon` fixture)


# ---------------------------------------------------------------------------- helpers


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
