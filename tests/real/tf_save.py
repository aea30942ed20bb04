"""Save tf_model's tiny model with NeMo Automodel's checkpointer, as W gloo ranks on CPU.

    python tf_save.py OUT W

Starts W processes (torch.multiprocessing, forked after the imports so that each rank does not
import torch and Automodel again on 2 cores: 0.3 s instead of 30; gloo, a file:// rendezvous in
OUT). Each builds the
same seeded model (tf_model.build), turns the two expert parameters of every layer into DTensors
sharded on dim 0 over a 1-D CPU DeviceMesh (expert parallelism: rank r keeps experts
[r*E/W, (r+1)*E/W)), leaves every other parameter a plain (replicated) tensor, and calls
nemo_automodel.components.checkpoint.checkpointing.Checkpointer.save_model in its per-rank
safetensors format (model_save_format="safetensors", save_consolidated=False): OUT/model/
holds shard-0000R-model-00001-of-00001.safetensors per rank plus .hf_metadata/. Exits non-zero,
with each failing rank's traceback on stderr, when any rank fails.
"""
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def shard_experts(model, mesh):
    """Replace each expert parameter with a Shard(0) DTensor of its local experts."""
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor
    import tf_model
    for name, p in list(model.named_parameters()):
        if tf_model.is_hf_expert(name):
            owner, _, attr = name.rpartition(".")
            mod = model.get_submodule(owner)
            setattr(mod, attr, torch.nn.Parameter(distribute_tensor(p.data, mesh, [Shard(0)]),
                                                  requires_grad=False))


def rank_main(rank, world, out):
    """One saving rank."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from nemo_automodel.components.checkpoint.checkpointing import Checkpointer
    from nemo_automodel.components.checkpoint.config import CheckpointingConfig
    import tf_model
    dist.init_process_group("gloo", init_method=f"file://{out}/.rendezvous", rank=rank,
                            world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
        model = tf_model.build()
        shard_experts(model, mesh)
        cfg = CheckpointingConfig(enabled=True, checkpoint_dir=out, model_save_format="safetensors",
                                  model_cache_dir=os.path.join(out, ".no-hub-cache"),
                                  model_repo_id=None, save_consolidated=False, is_peft=False)
        ckpt = Checkpointer(cfg, dp_rank=rank, tp_rank=0, pp_rank=0, moe_mesh=None)
        ckpt.save_model(model, out)
        ckpt.close()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _entry(rank, world, out):
    """torch.multiprocessing target: print the traceback, then fail the process."""
    try:
        rank_main(rank, world, out)
    except BaseException as e:
        # the traceback, then one line with the cause (DCP's CheckpointException ends with it)
        last = [x for x in str(e).strip().splitlines() if x.strip()][-1:] or [""]
        sys.stderr.write(f"tf_save rank {rank}:\n{traceback.format_exc()}"
                         f"tf_save rank {rank} failed: {type(e).__name__}: {last[0].strip()}\n")
        sys.stderr.flush()
        os._exit(1)


def main(argv):
    """Command line: OUT W."""
    import torch.multiprocessing as mp
    # imported once here, before any thread pool exists, and inherited by the forked ranks
    import nemo_automodel.components.checkpoint.checkpointing  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    import tf_model  # noqa: F401
    out, world = os.path.abspath(argv[1]), int(argv[2])
    os.makedirs(out, exist_ok=True)
    try:
        os.unlink(f"{out}/.rendezvous")
    except FileNotFoundError:
        pass
    mp.start_processes(_entry, args=(world, out), nprocs=world, join=True, start_method="fork")
    if os.path.exists(f"{out}/.rendezvous"):
        os.unlink(f"{out}/.rendezvous")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
