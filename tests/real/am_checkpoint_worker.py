"""Worker: NeMo Automodel's own Checkpointer saves tiny models sharded over W CPU ranks, for
test_automodel_checkpoint.py to mount.

    python am_launch.py W am_checkpoint_worker OUT QWEN_CONFIG_JSON NAME...

For each NAME of SAVES every rank builds the model on the meta device, parallelizes it as
Automodel's recipes do (MeshContext.build(FSDP2Config(), ParallelismSizes(ep_size=...)) and
nemo_automodel.components.distributed.model_parallelizer.parallelize_model: FSDP2 over the
W ranks, the MoE experts sharded over the moe_mesh's "ep" dim and, with ep < W, over
"ep_shard" on dim 1), materializes it on the CPU with deterministic values, and saves it with
CheckpointingConfig(model_save_format="safetensors", save_consolidated="final").build(...)
.save_model(model, OUT/NAME/step, is_final_checkpoint=True): per-rank
shard-0000R-model-00001-of-00001.safetensors files and .hf_metadata/ in OUT/NAME/step/model,
and Automodel's own consolidation of them in OUT/NAME/step/model/consolidated.

It also writes what the tests compare the mount with:
- OUT/NAME/full.safetensors: the model's full state dict gathered from the ranks
  (DTensor.full_tensor()), in HF names (the model's state_dict_adapter.to_hf with the
  `.*_extra_state.*` exclude the checkpointer passes; a model without adapter as it is);
- OUT/NAME/rank-G.safetensors + rank-G.json: rank G's local expert tensors (to_local(), HF
  names) and its coordinates on the moe_mesh (MoE saves only).

Two things of the pinned stack that stop this on a CPU, worked around here (and reported):
- nemo-automodel 0.7.0's apply_fsdp patches FSDPParam.to_accumulated_grad_if_needed, which
  torch 2.15.0 no longer has (AttributeError: type object 'FSDPParam' has no attribute
  'to_accumulated_grad_if_needed'): a no-op method is added when it is missing. The patched
  method is only called by FSDP's post-backward; nothing here runs a backward.
- Qwen3VLMoeForConditionalGeneration.initialize_weights() defaults its buffer device to
  torch.cuda.current_device() (RuntimeError: Found no NVIDIA driver on your system): the
  parameters are materialized with Automodel's to_empty_parameters_only and filled here.
"""
import json
import sys
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeConfig

import am_common
from nemo_automodel.components.checkpoint.checkpointing import to_empty_parameters_only
from nemo_automodel.components.checkpoint.config import CheckpointingConfig
from nemo_automodel.components.distributed.config import FSDP2Config
from nemo_automodel.components.distributed.mesh import MeshContext, ParallelismSizes
from nemo_automodel.components.distributed.model_parallelizer import parallelize_model
from nemo_automodel.components.models.common import BackendConfig
from nemo_automodel.components.models.qwen3_vl_moe.model import Qwen3VLMoeForConditionalGeneration

# name: (model, ep size); the ep_shard size is W / ep, as Automodel derives it
SAVES = {"qwen-ep4": ("qwen", 4), "qwen-ep2x2": ("qwen", 2), "llama-fsdp4": ("llama", 1)}

if not hasattr(FSDPParam, "to_accumulated_grad_if_needed"):  # see the module docstring
    FSDPParam.to_accumulated_grad_if_needed = lambda self: None


def tiny_llama():
    """A two-layer Llama with random weights; vocab 250 does not divide by 4, so FSDP2's
    dim-0 chunks of the embeddings are uneven (63, 63, 63, 61)."""
    cfg = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=250, max_position_embeddings=64,
                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"], dtype="bfloat16")
    with torch.device("meta"):
        return LlamaForCausalLM(cfg).to(torch.bfloat16)


def build(kind, qwen_config):
    """The model of one save, on the meta device."""
    if kind == "llama":
        return tiny_llama()
    cfg = Qwen3VLMoeConfig(**json.loads(Path(qwen_config).read_text()))
    with torch.device("meta"):
        return Qwen3VLMoeForConditionalGeneration(cfg, backend=BackendConfig())


@torch.no_grad()
def materialize(model, name):
    """Parameters on the CPU, each rank holding its shard of one deterministic full tensor.

    Returns the full tensors (parameter name -> tensor), the same on every rank.
    """
    to_empty_parameters_only(model, device=torch.device("cpu"))
    for mod in model.modules():  # non-persistent buffers (rotary inv_freq): never saved
        for key, buf in list(mod._buffers.items()):
            if buf is not None and buf.device.type == "meta":
                mod._buffers[key] = torch.zeros_like(buf, device="cpu")
    full = {}
    for pname, p in model.named_parameters():
        g = torch.Generator().manual_seed(zlib.crc32(f"{name}:{pname}".encode()))
        f = torch.randn(tuple(p.shape), generator=g).to(p.dtype)
        full[pname] = f
        if isinstance(p, DTensor):
            shape, off = compute_local_shape_and_global_offset(f.shape, p.device_mesh, p.placements)
            p.to_local().copy_(f[tuple(slice(o, o + s) for o, s in zip(off, shape))])
        else:
            p.copy_(f)
    return full


def save(name, out, qwen_config):
    """Build, parallelize, fill and save one model; write the comparison files."""
    kind, ep = SAVES[name]
    world, rank = dist.get_world_size(), dist.get_rank()
    d = Path(out) / name
    d.mkdir(parents=True, exist_ok=True)
    ctx = MeshContext.build(FSDP2Config(), ParallelismSizes(ep_size=ep), world_size=world)
    model = parallelize_model(build(kind, qwen_config), ctx)
    full = materialize(model, name)

    sd = model.state_dict()
    assert set(sd) == set(full), f"state dict keys are not the parameters: {set(sd) ^ set(full)}"
    gathered = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in sd.items()}
    bad = am_common.diff(gathered, full, "gathered state dict", "values filled in")
    assert not bad, bad[:5]
    adapter = getattr(model, "state_dict_adapter", None)
    to_hf = (lambda s: adapter.to_hf(s, exclude_key_regex=am_common.MOUNT_EXCLUDE)) if adapter else dict
    if rank == 0:
        save_file({k: v.contiguous() for k, v in to_hf(gathered).items()}, str(d / "full.safetensors"))
    if ctx.moe_mesh is not None:
        mine = {k: v.to_local().contiguous().clone() for k, v in sd.items()
                if isinstance(v, DTensor) and "ep" in v.device_mesh.mesh_dim_names}
        save_file(to_hf(mine), str(d / f"rank-{rank}.safetensors"))
        m = ctx.moe_mesh
        (d / f"rank-{rank}.json").write_text(json.dumps({
            "rank": rank, "ep_size": m["ep"].size(), "ep_rank": m["ep"].get_local_rank(),
            "ep_shard_size": m["ep_shard"].size(), "ep_shard_rank": m["ep_shard"].get_local_rank(),
            "placements": {k: [str(p) for p in sd[k].placements] for k in mine}}, indent=1))

    conf = CheckpointingConfig(checkpoint_dir=str(d), model_save_format="safetensors",
                               save_consolidated="final", model_cache_dir=str(Path(out) / "hf-cache"))
    dp = ctx.device_mesh["dp_shard"]
    checkpointer = conf.build(dp_rank=dp.get_local_rank() if dp.size() > 1 else 0, tp_rank=0, pp_rank=0,
                              moe_mesh=ctx.moe_mesh)
    checkpointer.save_model(model, str(d / "step"), is_final_checkpoint=True)
    checkpointer.close()
    dist.barrier()


def main(args):
    """args: OUT QWEN_CONFIG_JSON NAME...; save each NAME on this rank of the initialized group."""
    out, qwen_config, names = args[0], args[1], args[2:]
    torch.set_num_threads(1)
    for name in names:
        save(name, out, qwen_config)
    return 0


if __name__ == "__main__":  # under torch.distributed.run
    dist.init_process_group("gloo")
    try:
        rc = main(sys.argv[1:])
    finally:
        dist.destroy_process_group()
    sys.exit(rc)
