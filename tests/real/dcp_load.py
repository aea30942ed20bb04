"""Load a native view with torch.distributed.checkpoint as W gloo ranks on CPU.

    python dcp_load.py SRC OUT W VIEW_0 ... VIEW_{W-1}

Rank r (forked after the imports, gloo, file:// rendezvous in OUT) builds its native-named state
dict with Automodel's adapter (dcp_adapter.native_template over a 1-D CPU DeviceMesh named "ep":
expert tensors are Shard(0) DTensors, the rest plain whole tensors), loads it with
torch.distributed.checkpoint.load(storage_reader=HuggingFaceStorageReader(VIEW_r)), and writes
OUT/rank-r.safetensors (each DTensor's local shard, each plain tensor whole) and OUT/rank-r.json
(the global offset and size of each local shard; the reader's metadata of VIEW_r). The test
compares them with the source. Each rank reads its own mount, so the page cache of one rank's
reads cannot hide another's. Exits non-zero, with the failing ranks' tracebacks, when any fails.
"""
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rank_main(rank, world, src, out, views):
    """One loading rank."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    import dcp_adapter
    dist.init_process_group("gloo", init_method=f"file://{out}/.rendezvous", rank=rank,
                            world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
        dt = {dt for _, _, dt, _ in dcp_adapter.tensor_infos(src).values()}
        assert len(dt) == 1, f"{src}: mixed dtypes {dt}"
        ad = dcp_adapter.adapter(dcp_adapter.n_experts(src), dt.pop())
        sd = dcp_adapter.native_template(src, ad, device_mesh=mesh)
        reader = HuggingFaceStorageReader(views[rank])
        dcp.load(sd, storage_reader=reader)
        md = reader.read_metadata().state_dict_metadata
        local, info = {}, {"rank": rank, "world": world, "shards": {}, "reader_metadata": {}}
        for k, t in sd.items():
            if isinstance(t, DTensor):
                chunk = t.__create_chunk_list__()
                assert len(chunk) == 1, f"{k}: {len(chunk)} local chunks"
                info["shards"][k] = {"offsets": list(chunk[0].offsets), "sizes": list(chunk[0].sizes),
                                     "placements": [str(p) for p in t.placements]}
                local[k] = t.to_local().contiguous()
            else:
                local[k] = t.contiguous()
        for k, m in md.items():
            info["reader_metadata"][k] = {"size": list(m.size), "dtype": str(m.properties.dtype)}
        save_file(local, f"{out}/rank-{rank}.safetensors")
        Path(f"{out}/rank-{rank}.json").write_text(json.dumps(info))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _entry(rank, world, src, out, views):
    """torch.multiprocessing target: print the traceback, then fail the process."""
    try:
        rank_main(rank, world, src, out, views)
    except BaseException as e:
        # the traceback, then one line with the cause (DCP's CheckpointException ends with it)
        last = [x for x in str(e).strip().splitlines() if x.strip()][-1:] or [""]
        sys.stderr.write(f"dcp_load rank {rank}:\n{traceback.format_exc()}"
                         f"dcp_load rank {rank} failed: {type(e).__name__}: {last[0].strip()}\n")
        sys.stderr.flush()
        os._exit(1)


def main(argv):
    """Command line: SRC OUT W VIEW_0 ... VIEW_{W-1}."""
    import torch.multiprocessing as mp
    # imported once here, before any thread pool exists, and inherited by the forked ranks
    import nemo_automodel.components.models.qwen3_vl_moe.state_dict_adapter  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    src, out, world = argv[1], os.path.abspath(argv[2]), int(argv[3])
    views = argv[4:]
    assert len(views) == world, f"{world} ranks need {world} views, got {len(views)}"
    os.makedirs(out, exist_ok=True)
    if os.path.exists(f"{out}/.rendezvous"):
        os.unlink(f"{out}/.rendezvous")
    mp.start_processes(_entry, args=(world, src, out, views), nprocs=world, join=True,
                       start_method="fork")
    if os.path.exists(f"{out}/.rendezvous"):
        os.unlink(f"{out}/.rendezvous")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
