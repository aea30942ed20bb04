"""The check_view.py command line: argument parsing (shared by the Python API) and main()."""
import argparse
import re
import sys

from .reader import Fatal
from .verify import Report, check

def parse_args(argv):
    """Parse and validate the command line."""
    p = argparse.ArgumentParser(prog="check_view.py",
                                description="Check a mounted qvlmoefs view against its source checkpoint.")
    p.add_argument("src", nargs="?", metavar="SRC", help="source checkpoint folder")
    p.add_argument("view", nargs="?", metavar="VIEW", help="mounted view folder")
    p.add_argument("--view", dest="naming", choices=["native", "hf"],
                   help="naming of the view (default: the other naming than the source's)")
    p.add_argument("--exclude", default=".*_extra_state.*", help="keys left out of an HF view (re.match)")
    p.add_argument("--ep-size", type=int, metavar="W")
    p.add_argument("--ep-rank", type=int, metavar="R")
    p.add_argument("--ep-shard-size", type=int, metavar="K")
    p.add_argument("--ep-shard-rank", type=int, metavar="S")
    p.add_argument("--mmap", choices=["auto", "shared", "private", "none"], default="auto",
                   help="how shards are mapped to compare mmap with read() (auto: MAP_SHARED, "
                   "else MAP_PRIVATE as under -o direct_io, else read() alone)")
    p.add_argument("--selftest", action="store_true", help="check the checker on hand-built views")
    a = p.parse_args(argv)
    if a.selftest:
        return a
    k = a.ep_shard_size or 1
    for bad, why in ((a.src is None or a.view is None, "SRC and VIEW are required"),
                     ((a.ep_size is None) != (a.ep_rank is None), "--ep-size and --ep-rank go together"),
                     (None not in (a.ep_size, a.ep_rank) and not 0 <= a.ep_rank < a.ep_size, "need 0 <= R < W"),
                     (k > 1 and a.ep_size is None, "--ep-shard-size needs --ep-size and --ep-rank"),
                     (k > 1 and not 0 <= (a.ep_shard_rank if a.ep_shard_rank is not None else -1) < k,
                      "--ep-shard-size K > 1 needs --ep-shard-rank S with 0 <= S < K"),
                     (k < 1, "--ep-shard-size must be >= 1")):
        if bad:
            p.error(why)
    try:
        re.compile(a.exclude)
    except re.error as e:
        p.error(f"bad --exclude: {e}")
    return a


def main(argv=None):
    """Command-line entry point."""
    args = parse_args(argv)
    if args.selftest:
        from .selftest import selftest  # imports this module: only on demand
        return selftest()
    rep = Report()
    try:
        check(args.src, args.view, args, rep)
    except (Fatal, OSError) as e:  # view I/O errors are caught per file; these concern the source
        print(f"check_view: error: {e}", file=sys.stderr)
        return 2
    counts = f"{rep.files} files, {rep.tensors} tensors, {rep.bytes} bytes compared"
    if rep.errors:
        print(f"check_view: FAIL {len(rep.errors)} mismatches; {counts}")
        return 1
    print(f"check_view: OK {counts}")
    return 0
