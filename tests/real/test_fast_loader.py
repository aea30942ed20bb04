"""A third-party fast loader on CPU: Run:ai's model streamer (runai-model-streamer, PyPI).

SafetensorsStreamer reads safetensors files with its own C++ reader threads (by default
io_uring reads of files opened O_DIRECT, into its own buffers, not mmap) and builds the
tensors from the header itself, so it is a second, independent reader of the views next to
the official safetensors.
It must give the same tensors as safetensors.torch.load_file of the same view. Its throughput on
a view is printed next to the same loader reading the SOURCE, under its default strategy
(io_uring with O_DIRECT, which FUSE passes to the daemon: no page cache on either side) and
with plain buffered reads; the figures are information only (performance claims belong to
`make bench`) and go to the output and to record_property.
"""
import glob
import json
import os
import statistics
import sys

import pytest
import safetensors.torch

import st_expect as sx
from helpers import run

PINS = "runai-model-streamer==0.17.0 humanize==4.17.0"


@pytest.fixture(scope="module")
def streamer():
    """The SafetensorsStreamer class; skip, with the import error, where it is not installed."""
    try:
        from runai_model_streamer import SafetensorsStreamer
    except Exception as e:  # ImportError, or a missing shared library of libstreamer
        pytest.skip(f"runai-model-streamer cannot be imported ({type(e).__name__}: {e}); "
                    f"tests/real/requirements.txt needs {PINS}")
    return SafetensorsStreamer


def st_paths(folder):
    """The folder's *.safetensors files, sorted (what a loader globbing it finds)."""
    return sorted(glob.glob(os.path.join(str(folder), "*.safetensors")))


def stream(cls, folder):
    """{name: tensor} of streaming every file of folder to CPU."""
    out = {}
    with cls() as s:
        s.stream_files(st_paths(folder), device="cpu")
        for name, t in s.get_tensors():
            assert name not in out, f"{folder}: {name} streamed twice"
            out[name] = t
    return out


VIEWS = {  # id: (mkckpt arguments, -o options, folder below the mount)
    "forward": (["--scale-inv", "--extra-state"], "", ""),
    "reverse": (["--naming", "native", "--scale-inv", "--extra-state"], "", ""),
    "ep-rank-1-of-4": (["--experts", "10", "--shards", "3"], "ep_size=4", "ep-rank-1"),
    "ep-rank-2-shard-1": (["--experts", "10", "--shards", "3"], "ep_size=4,ep_shard_size=2",
                          "ep-rank-2-shard-1"),
}


@pytest.mark.parametrize("args,opts,folder", VIEWS.values(), ids=VIEWS.keys())
def test_streamer_equals_safetensors(streamer, ckpt, mount, args, opts, folder):
    """Every tensor the streamer reads from a view equals safetensors' reading of the same view
    (dtype, shape, bytes), and the two find the same keys."""
    src = ckpt.make("fl-" + "-".join(a.strip("-") for a in args), *args)
    m = mount(src, None, *(["-o", opts] if opts else []))
    view = m / folder if folder else m
    assert st_paths(view), f"{view} holds no safetensors file"
    got = stream(streamer, view)
    want = {}
    for p in st_paths(view):
        want.update(safetensors.torch.load_file(p))
    errs = sx.compare_dicts(got, want, str(view.relative_to(m.parent)))
    if errs:
        pytest.fail(sx.report(errs, "runai-model-streamer against safetensors"), pytrace=False)


STRATEGIES = {  # RUNAI_STREAMER_FS_STRATEGY: what it means for the figures
    "io_uring_direct": "the streamer's default: O_DIRECT, so every read of a view goes to the "
                       "daemon and every read of the source to the disk",
    "sync_buffered": "plain buffered reads: a view's re-reads come from the page cache",
}
# A child process per strategy (the streamer fixes it once per process), importing nothing
# but the streamer: argv = reps, folders..., warm-up folder; prints {folder: [[GB/s], bytes]}.
MEASURE = """
import glob, json, os, sys, time
from runai_model_streamer import SafetensorsStreamer
def stream(folder):
    t0, n = time.perf_counter(), 0
    with SafetensorsStreamer() as s:
        s.stream_files(sorted(glob.glob(os.path.join(folder, "*.safetensors"))), device="cpu")
        for _, t in s.get_tensors():
            n += t.numel() * t.element_size()
    return n, time.perf_counter() - t0
reps, folders = int(sys.argv[1]), sys.argv[2:-1]
stream(sys.argv[-1])
out = {}
for f in folders:
    runs = [stream(f) for _ in range(reps)]
    out[f] = [[n / dt / 1e9 for n, dt in runs], runs[0][0]]
print(json.dumps(out), flush=True)
os._exit(0)
"""


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_streamer_throughput(streamer, ckpt, mount, capsys, record_property, strategy):
    """The streamer's GB/s on a 103 MB checkpoint: a fresh forward view, one EP rank of 4, and
    the SOURCE, each streamed 4 times (the first read of a view is through the daemon whatever
    the strategy). Printed and recorded, not asserted."""
    src = ckpt.make("fl-big", "--experts", "32", "--layers", "4", "--hidden", "512",
                    "--moe-inter", "256", "--shards", "4")
    warm = ckpt.make("fl-warmup", "--shards", "1")
    fwd = mount(src)
    ep = mount(src, None, "-o", "ep_size=4") / "ep-rank-1"
    env = dict(os.environ, RUNAI_STREAMER_FS_STRATEGY=strategy, RUNAI_STREAMER_LOG_LEVEL="WARNING")
    p = run(sys.executable, "-c", MEASURE, 4, fwd, ep, src, warm, timeout=300, env=env)
    got = json.loads(p.stdout.strip().splitlines()[-1])
    with capsys.disabled():
        print(f"\nrunai-model-streamer on CPU, {strategy} ({STRATEGIES[strategy]}); GB/s of "
              "tensor bytes, information only:")
        for label, folder in (("forward view", fwd), ("ep_size=4 ep-rank-1", ep), ("SOURCE", src)):
            rates, n = got[str(folder)]
            first, rest = rates[0], statistics.median(rates[1:])
            print(f"  {label:22s} {n / 1e6:6.1f} MB   first {first:5.2f}   median of next "
                  f"{len(rates) - 1} {rest:5.2f}")
            record_property(f"{strategy} {label}", f"first {first:.3f} GB/s, median {rest:.3f} GB/s")
    sizes = [got[str(f)][1] for f in (fwd, ep, src)]
    assert sizes[0] == sizes[2] and sizes[1] < sizes[0], f"tensor bytes streamed: {sizes}"
