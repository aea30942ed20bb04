#!/usr/bin/python3
"""ep_check.py reassemble|minbytes ...: the command line of checkview/ep.py (its docstring
says what each subcommand checks)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from checkview.ep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv))
