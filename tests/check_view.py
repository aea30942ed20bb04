#!/usr/bin/python3
"""check_view.py: check a mounted qvlmoefs view against its source checkpoint.

An independent re-implementation of the contract in DESIGN.md §1-§2 (renaming, dropping,
expert-parallel slicing, strict virtual safetensors files, generated index, passthrough
files, read-only tree, symlink policy). Every mismatch prints one line
`check_view: <path>: <what differs>` to stderr; exit 1 on any mismatch, 2 on a bad source
or bad arguments, 0 otherwise. `--selftest` checks the checker on hand-built views.

The code lives in the checkview package next to this file; this wrapper keeps the command
line and `import check_view` (rename, is_expert, ep_range, NATIVE_SUFFIXES, ...) working.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from checkview import *  # noqa: E402,F401,F403  re-exported for `import check_view`
from checkview import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
