"""torch.distributed.checkpoint's HuggingFaceStorageReader on the native view of an HF source.

DCP's own HF reader (torch.distributed.checkpoint.HuggingFaceStorageReader, torch 2.15) lists the
view's *.safetensors, reads each header with safe_open and fetches what the state dict asks for
with get_slice. The state dict it fills is native-named by NeMo Automodel's own adapter
(Qwen3VLMoeStateDictAdapter.from_hf over the HF source's shapes), so the names the mount shows must
be the ones Automodel asks for, and every loaded byte must be the source's:

- one process, no process group (DCP then loads "in a single process"), whole tensors;
- W = 2 and 4 gloo ranks whose expert tensors are Shard(0) DTensors over a 1-D CPU DeviceMesh
  (Automodel's EP init path makes them), the rest plain: each rank's local shard is the source
  slice of its experts, and each rank, reading its own fresh mount, makes the daemon read the
  bytes that rank needs and at most MARGIN times them. (The expert counts divide by W, so
  DTensor's Shard(0) split and Automodel's get_expert_range_for_rank_from_mesh, which the
  expected ranges come from, are the same ranges.)
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dcp_adapter  # noqa: E402
import st_expect as sx  # noqa: E402
from helpers import run  # noqa: E402

HERE = Path(__file__).resolve().parent
# bytes_from_sources may exceed the minimum by this factor. The kernel asks the daemon for whole
# pages (4 KiB, a few 8 KiB), so each of the 8 slice boundaries of a rank costs a page or two:
# measured +32 KiB (W=2; first and last rank of W=4, +0.4% and +0.7%) and +64 KiB (middle ranks of
# W=4, +1.4%). One expert of another rank read by mistake would cost 512 KiB (gate_and_up_projs)
# or 256 KiB (down_projs): +3% to +11%, beyond the margin.
MARGIN = 1.02
# The DTensor case's source: experts dominate (12.6 MB of experts, 1.6 MB dense), so a rank that
# read other ranks' experts could not hide inside the margin.
WIDE = ["--hidden", "256", "--moe-inter", "512", "--heads", "4", "--head-dim", "64"]


def stats(view):
    """The daemon's counters (.qvlmoefs/stats of the view root)."""
    return json.loads((Path(view) / ".qvlmoefs" / "stats").read_text())


def readahead_kb(view):
    """The mount's readahead (its bdi's read_ahead_kb), or None where sysfs does not say."""
    d = os.stat(view).st_dev
    try:
        return int(Path(f"/sys/class/bdi/{os.major(d)}:{os.minor(d)}/read_ahead_kb").read_text())
    except (OSError, ValueError):
        return None


def source_tensor(src, infos, hf_key, rows=None):
    """The source tensor hf_key (rows: a dim-0 slice of it), read with safetensors."""
    with safe_open(str(Path(src) / infos[hf_key][0]), "pt") as f:
        return f.get_slice(hf_key)[rows] if rows is not None else f.get_tensor(hf_key)


def bits(t):
    """The tensor's bytes, as uint8 (mkckpt's random BF16 bytes include NaNs, which no
    value comparison calls equal to themselves)."""
    return t.contiguous().view(-1).view(torch.uint8)


def compare(got, want, what):
    """One mismatch line, or None when got is want (dtype, shape and every byte)."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"{what}: loaded {got.dtype} {tuple(got.shape)}, source {want.dtype} {tuple(want.shape)}"
    if not torch.equal(bits(got), bits(want)):
        bad = ((bits(got) != bits(want)).nonzero().view(-1) // got.element_size()).unique()
        return (f"{what}: {len(bad)} of {got.numel()} elements differ, "
                f"first at flat index {bad[0].item()}")
    return None


def fail_if(errors, head):
    """Fail with head and the first mismatch lines when there are any."""
    __tracebackhide__ = True
    if errors:
        more = f"\n... and {len(errors) - 30} more" if len(errors) > 30 else ""
        pytest.fail(f"{head}: {len(errors)} mismatches:\n" + "\n".join(errors[:30]) + more,
                    pytrace=False)


def check_reader_metadata(md, template, view):
    """What DCP's reader sees in the view is exactly the native state dict: same keys (nothing
    left over, which DCP itself would silently ignore), same global sizes and dtypes."""
    __tracebackhide__ = True
    missing = sorted(set(template) - set(md))
    extra = sorted(set(md) - set(template))
    errors = [f"view lacks {k}" for k in missing] + [f"view has unexpected {k}" for k in extra]
    for k in sorted(set(md) & set(template)):
        size, dt = md[k]
        if list(size) != list(template[k].shape) or dt != str(template[k].dtype):
            errors.append(f"{k}: view {dt} {list(size)}, native state dict "
                          f"{template[k].dtype} {list(template[k].shape)}")
    fail_if(errors, f"HuggingFaceStorageReader({view}).read_metadata()")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_dcp_single_process_whole_tensors(ckpt, mount):
    """dcp.load without a process group fills a whole-tensor native state dict from the native
    view of ckpt["hf"] with exactly the source tensors, reading each source byte once."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.api import CheckpointException
    src = ckpt["hf"]
    view = mount(src)  # the default view of an HF source: native names
    infos = dcp_adapter.tensor_infos(src)
    dt = {d for _, _, d, _ in infos.values()}
    ad = dcp_adapter.adapter(dcp_adapter.n_experts(src), dt.pop())
    sd = dcp_adapter.native_template(src, ad)
    assert any(dcp_adapter.is_expert(k) for k in sd), f"adapter gave no native expert keys: {list(sd)}"
    before = stats(view)["bytes_from_sources"]
    reader = HuggingFaceStorageReader(str(view))
    err = None
    try:
        dcp.load(sd, storage_reader=reader)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException; it
        # carries each rank's traceback, the cause on its last line
        last = [x for x in str(e).strip().splitlines() if x.strip()][-1:]
        err = f"dcp.load(storage_reader=HuggingFaceStorageReader({view})) raised " \
              f"{type(e).__name__}: {' '.join(last)}"
    if err:  # outside the except clause: the message alone, without DCP's chained tracebacks
        pytest.fail(err, pytrace=False)
    got = stats(view)["bytes_from_sources"] - before
    md = {k: (m.size, str(m.properties.dtype))
          for k, m in reader.read_metadata().state_dict_metadata.items()}
    check_reader_metadata(md, sd, view)
    errors = []
    for k, t in sd.items():
        hf = dcp_adapter.to_hf_name(ad, k)
        e = compare(t, source_tensor(src, infos, hf), f"{k} (source {hf})")
        if e:
            errors.append(e)
    fail_if(errors, f"dcp.load from {view}")
    need = sum(n for _, _, _, n in infos.values())
    print(f"single process: {len(sd)} tensors, bytes_from_sources {got}, minimum {need}")
    assert need <= got <= need * MARGIN, \
        f"bytes_from_sources {got}, minimum {need} (whole tensors, each byte once): " \
        f"limit {need * MARGIN:.0f}"


@pytest.mark.parametrize("world", [2, 4])
def test_dcp_expert_sharded_dtensors(ckpt, mount, tmp, world):
    """W gloo ranks, expert tensors Shard(0) DTensors: each rank's local shard is the source
    slice of its experts, every dense tensor whole, and each rank's mount read at most MARGIN
    times the bytes that rank needs (its expert slices and every dense tensor once)."""
    src = ckpt.make("dcp-reader-wide", *WIDE)
    # one fresh mount per rank, its readahead one page: the kernel's default window (4 MiB here)
    # is larger than a whole tiny shard and would read for the loader what it never asked for
    views = [mount(src, tmp / f"m{r}", "-o", "readahead_kb=4") for r in range(world)]
    before = [stats(v)["bytes_from_sources"] for v in views]
    out = tmp / "out"
    p = run(sys.executable, HERE / "dcp_load.py", src, out, world, *views, check=False, timeout=300)
    if p.returncode != 0:
        causes = [x for x in p.stderr.splitlines()
                  if x.startswith("dcp_load rank ") and " failed: " in x]
        pytest.fail(f"dcp_load.py failed (exit {p.returncode}):\n" + "\n".join(causes) +
                    f"\n--- stderr (end) ---\n{p.stderr[-4000:]}", pytrace=False)
    got = [stats(v)["bytes_from_sources"] - b for v, b in zip(views, before)]

    infos = dcp_adapter.tensor_infos(src)
    n = dcp_adapter.n_experts(src)
    ad = dcp_adapter.adapter(n, torch.bfloat16)
    template = dcp_adapter.native_template(src, ad)
    errors, report = [], []
    for r in range(world):
        info = json.loads((out / f"rank-{r}.json").read_text())
        local = load_file(str(out / f"rank-{r}.safetensors"))
        check_reader_metadata({k: (m["size"], m["dtype"]) for k, m in info["reader_metadata"].items()},
                              template, views[r])
        start, count = sx.ep_range(n, world, r)  # Automodel's own range of this rank
        end = start + count
        need = 0
        for k in template:
            hf = dcp_adapter.to_hf_name(ad, k)
            nbytes = infos[hf][3]
            if dcp_adapter.is_expert(k):
                sh = info["shards"].get(k)
                if sh is None:
                    errors.append(f"rank {r}: {k} is not a DTensor")
                    continue
                if (sh["offsets"][0], sh["sizes"][0], sh["placements"]) != (start, end - start, ["S(0)"]):
                    errors.append(f"rank {r}: {k} holds experts from {sh['offsets'][0]}, "
                                  f"{sh['sizes'][0]} of them, {sh['placements']}; "
                                  f"Automodel's range: [{start}, {end}) Shard(0)")
                want = source_tensor(src, infos, hf, slice(start, end))
                need += nbytes // n * (end - start)
            else:
                if k in info["shards"]:
                    errors.append(f"rank {r}: dense {k} is a DTensor")
                want = source_tensor(src, infos, hf)
                need += nbytes
            e = compare(local[k], want, f"rank {r}: {k} (source {hf}, experts [{start}, {end}))"
                        if dcp_adapter.is_expert(k) else f"rank {r}: {k} (source {hf})")
            if e:
                errors.append(e)
        report.append((r, got[r], need))
    fail_if(errors, f"W={world} DCP load of {src}'s native view")
    whole = sum(x[3] for x in infos.values())
    ra = {readahead_kb(v) for v in views}
    if ra != {4}:  # only a daemon run as root may set it (README: readahead_kb)
        pytest.skip(f"every tensor matched; the source-bytes check needs the mounts' readahead at "
                    f"4 KiB, and it is {ra} KiB (not root?)")
    for r, g, need in report:
        print(f"W={world} rank {r}: bytes_from_sources {g}, minimum {need} ({g / need:.4f}x), "
              f"whole checkpoint {whole}")
    bad = [f"rank {r}: bytes_from_sources {g}, minimum {need}, limit {need * MARGIN:.0f} "
           f"({g / need:.4f}x; the whole checkpoint is {whole})"
           for r, g, need in report if not need <= g <= need * MARGIN]
    assert not bad, "source reads outside [minimum, minimum x %.2f]:\n" % MARGIN + "\n".join(bad)


def test_dcp_reads_ep_shared_rank_folder(ckpt, mount):
    """-o ep_shared: DCP's HF reader, one process, loads a rank folder (the dense part of each
    shard in a file every rank folder shares, the rank's experts in NAME-experts.safetensors)
    into exactly the state dict of the same rank folder without the option."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    src = ckpt["hf"]
    plain = mount(src, None, "-o", "ep_size=4")
    view = mount(src, None, "-o", "ep_size=4,ep_shared")
    want = {}
    for p in sorted((plain / "ep-rank-2").glob("*.safetensors")):
        want.update(load_file(str(p)))
    sd = {k: torch.zeros_like(t) for k, t in want.items()}
    assert any(p.name.endswith("-experts.safetensors") for p in (view / "ep-rank-2").iterdir())
    reader = HuggingFaceStorageReader(str(view / "ep-rank-2"))
    dcp.load(sd, storage_reader=reader)
    md = {k: (m.size, str(m.properties.dtype))
          for k, m in reader.read_metadata().state_dict_metadata.items()}
    check_reader_metadata(md, sd, view)
    fail_if([e for k in want if (e := compare(sd[k], want[k], k))], f"dcp.load from {view}")
