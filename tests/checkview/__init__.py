"""checkview: an independent checker of qvlmoefs views, as a Python API and a command line.

    rep = checkview.check(src, view, view_naming="hf", exclude=r"model\\.visual\\..*")
    assert not rep.errors, rep.errors

check() takes the options of `check_view.py` as keywords (view_naming is --view) and
validates them the same way; it returns a Report whose .errors lists one line per mismatch.
It raises Fatal for a bad source and ValueError for bad options. Modules: reader (strict
source reading), contract (naming and slicing rules, the plan), verify (checking a view),
selftest, cli (check_view.py), ep (ep_check.py).
"""
import contextlib
import io

from .cli import main, parse_args
from .contract import (HF_EXPERT, NATIVE_SUFFIXES, build_plan, ep_range, is_expert, rename,
                       slice_extents, slice_meta)
from .reader import (DTYPE_SIZE, HIDDEN, INDEX_NAME, Fatal, load_json, read_source_header,
                     scan_source, tensor_info)
from .verify import Report
from .verify import check as check_with

DEFAULT_EXCLUDE = ".*_extra_state.*"

__all__ = ["DEFAULT_EXCLUDE", "DTYPE_SIZE", "HF_EXPERT", "HIDDEN", "INDEX_NAME", "NATIVE_SUFFIXES",
           "Fatal", "Report", "build_plan", "check", "check_args", "check_with", "ep_range",
           "is_expert", "load_json", "main", "parse_args", "read_source_header", "rename",
           "scan_source", "slice_extents", "slice_meta", "tensor_info"]


def check_args(args, quiet=True):
    """Check args.view against args.src for parsed command-line args; return the Report."""
    rep = Report(quiet=quiet)
    check_with(args.src, args.view, args, rep)
    return rep


def check(src, view, view_naming=None, exclude=DEFAULT_EXCLUDE, ep_size=None, ep_rank=None,
          ep_shard_size=None, ep_shard_rank=None, mmap="auto", quiet=True):
    """Check VIEW against SRC with the same options (and validation) as the command line."""
    argv = [str(src), str(view), "--exclude", exclude, "--mmap", mmap]
    for flag, value in (("--view", view_naming), ("--ep-size", ep_size), ("--ep-rank", ep_rank),
                        ("--ep-shard-size", ep_shard_size), ("--ep-shard-rank", ep_shard_rank)):
        if value is not None:
            argv += [flag, str(value)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parse_args(argv)
    except SystemExit:
        raise ValueError(err.getvalue().strip().splitlines()[-1]) from None
    return check_args(args, quiet=quiet)
