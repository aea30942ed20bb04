"""Worker: what Automodel's Qwen3VLMoeStateDictAdapter.from_hf gives each rank of a
real expert-parallel DeviceMesh, written down for test_automodel_adapter.py to hold against the
mount's rank folders.

    python am_launch.py W am_adapter_worker OUT JOBS       (W forked gloo ranks)
    python -m torch.distributed.run --standalone --nproc-per-node=W am_adapter_worker.py OUT JOBS

JOBS is a JSON list of {"name", "source", "ep"}. For each job every rank builds the meshes as
Automodel's recipes do (MeshContext.build with an FSDP2Config and ParallelismSizes(ep_size=ep)
over the W processes: a moe_mesh of dims ("ep_shard", "ep") shaped (W/ep, ep)), loads the HF
source with safetensors, calls from_hf(state_dict, device_mesh=moe_mesh) and writes
OUT/NAME/rank-G.safetensors (the local tensors: DTensor.to_local() for the sliced experts, the
whole tensor for everything else) and OUT/NAME/rank-G.json (its mesh coordinates, the expert
range get_expert_range_for_rank_from_mesh gives, the DTensor placements).
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

import am_common
from nemo_automodel.components.distributed.config import FSDP2Config
from nemo_automodel.components.distributed.mesh import MeshContext, ParallelismSizes
from nemo_automodel.components.moe.state_dict_utils import get_expert_range_for_rank_from_mesh

# what am_common.make_adapter imports, imported here so that am_launch's ranks share one import
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeTextConfig  # noqa: F401
from nemo_automodel.components.models.common import BackendConfig  # noqa: F401
from nemo_automodel.components.models.qwen3_vl_moe.state_dict_adapter import (  # noqa: F401
    Qwen3VLMoeStateDictAdapter)


def run_job(job, out, world):
    """One source on one mesh shape: from_hf on this rank, written to out/NAME/rank-G.*."""
    ctx = MeshContext.build(FSDP2Config(), ParallelismSizes(ep_size=job["ep"]), world_size=world)
    mesh = ctx.moe_mesh
    assert mesh is not None and tuple(mesh.mesh_dim_names) == ("ep_shard", "ep"), mesh
    adapter = am_common.make_adapter(job["source"])
    hf, _ = am_common.load_folder(job["source"])
    native = adapter.from_hf(hf, device_mesh=mesh)
    n = adapter.moe_config.n_routed_experts
    start, end = get_expert_range_for_rank_from_mesh(mesh, n)
    placements = {k: [str(p) for p in v.placements] for k, v in native.items() if isinstance(v, DTensor)}
    tensors = {k: am_common.local(v).contiguous().clone() for k, v in native.items()}
    rank = dist.get_rank()
    d = Path(out) / job["name"]
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / f"rank-{rank}.safetensors"))
    (d / f"rank-{rank}.json").write_text(json.dumps({
        "rank": rank, "experts": n,
        "ep_size": mesh["ep"].size(), "ep_rank": mesh["ep"].get_local_rank(),
        "ep_shard_size": mesh["ep_shard"].size(), "ep_shard_rank": mesh["ep_shard"].get_local_rank(),
        "expert_start": start, "expert_end": end, "placements": placements,
    }, indent=1))


def main(args):
    """Run every job of the JOBS file (args: OUT JOBS) on this rank of the initialized group."""
    out, jobs = args[0], json.loads(Path(args[1]).read_text())
    torch.set_num_threads(1)
    for job in jobs:
        run_job(job, out, dist.get_world_size())
        dist.barrier()
    return 0


if __name__ == "__main__":  # under torch.distributed.run
    dist.init_process_group("gloo")
    try:
        rc = main(sys.argv[1:])
    finally:
        dist.destroy_process_group()
    sys.exit(rc)
