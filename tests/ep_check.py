#!/usr/bin/python3
"""Expert-parallel checks that need more than one view: reassembly and minimal source bytes.

ep_check.py reassemble SRC MNT W [K]  -- MNT holds ep-rank-R (or ep-rank-R-shard-S) folders;
    concatenating every rank's expert tensors on dim 0 (and shards on dim 1) must give back
    each source expert tensor byte for byte.
ep_check.py minbytes SRC W R1,R2,... [K S]  -- print the fewest source bytes that reading
    those ranks' views can take: their expert slices, plus, per rank, every dense tensor and
    every pass-through file (the index is generated, headers are synthesized).

The code lives in checkview/ep.py; this wrapper keeps the command line.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from checkview.ep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv))
