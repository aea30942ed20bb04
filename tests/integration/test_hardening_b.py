"""Hardening against hostile options, hostile sources and unlucky timing.

Options whose arithmetic would wrap (ep_size x ep_shard_size in 32 bits), sharded saves whose
coverage check would wrap, files swapped for links or FIFOs between the scan and the open,
io_uring failures with reads in flight, shutdown while staging on a device, and option
strings the mount helper must pass through unmangled. Each test states the behaviour that
holds now; before the fixes each of them failed.
"""
import subprocess

import pytest

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
