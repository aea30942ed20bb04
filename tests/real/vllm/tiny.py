"""The tiny Qwen3-VL-MoE that test_vllm.py serves with vLLM, and the folders it is served from.

Runs in the check-real environment (transformers 5.18, NeMo Automodel), never in vLLM's.
Built in code from a fixed seed, like tests/real/tf_model.py, whose helpers it reuses; its
config differs from tf_model's where vLLM's CPU build needs it to:

- head_dim 32 (tf_model has 16): vLLM's CPU attention refuses head sizes under 32
  ("Unsupported CPU attention configuration: head_dim=16 isa=2 kv_cache_idx=0" on AVX2);
- mrope_section [8, 4, 4], summing to head_dim / 2;
- a vision tower of head_dim 32 too, and image/video/vision-start/end token ids inside the
  tiny vocabulary, which the tokenizer below also holds, so vLLM's Qwen3-VL processor finds
  its special tokens;
- text_config.norm_topk_prob = true, written out: transformers 5.19's Qwen3VLMoeTextConfig
  has no such field (its MoE block always renormalizes, which true says), and vLLM 0.32's
  Qwen3MoeSparseMoeBlock reads config.norm_topk_prob (AttributeError: 'Qwen3VLMoeTextConfig'
  object has no attribute 'norm_topk_prob', without it);
- experts stored in the Hub's layout (gate_up_proj [E, H, 2I], down_proj [E, I, H]): vLLM
  0.32's Qwen3-VL-MoE loader transposes fused expert tensors unconditionally
  (is_fused_checkpoint_transposed=True), so transformers 5.18's own save_pretrained layout
  ([E, 2I, H]) does not load there ("The size of tensor a (16) must match the size of tensor
  b (64) at non-singleton dimension 1").

The tokenizer is made here too (no hub): a byte-level BPE without merges over the 256 byte
symbols, plus Qwen's special tokens, saved with PreTrainedTokenizerFast.save_pretrained; and the
image and video processor configs of the Hub's Qwen3-VL checkpoints (patch 16, merge 2), with
pixel bounds for small pictures, written as JSON (check-real's environment has no torchvision,
which transformers' Qwen2-VL image processor imports).

    python tiny.py original OUT          # save_pretrained (several shards), Hub layout, tokenizer
    python tiny.py automodel-save OUT W  # the same model saved by Automodel's Checkpointer by W
                                         # gloo ranks (tests/real/tf_save.py), OUT/model/...
"""
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
REAL = HERE.parent
if str(REAL) not in sys.path:
    sys.path.insert(0, str(REAL))

import torch  # noqa: E402
import tf_model  # noqa: E402
from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration  # noqa: E402

SEED = 4321
DTYPE = tf_model.DTYPE  # BF16, as the real checkpoints
EXPERTS, HIDDEN, MOE_INTER, LAYERS, HEAD_DIM = tf_model.EXPERTS, 64, 16, 2, 32
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
VOCAB = 256 + len(SPECIALS)  # the tokenizer's size; the model's vocab_size is the same
TOKEN_ID = {s: 256 + i for i, s in enumerate(SPECIALS)}


def config():
    """The tiny config (see the module docstring for what vLLM needs of it)."""
    return Qwen3VLMoeConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
            num_attention_heads=4, num_key_value_heads=2, head_dim=HEAD_DIM,
            moe_intermediate_size=MOE_INTER, num_experts=EXPERTS, num_experts_per_tok=2,
            norm_topk_prob=True, max_position_embeddings=512, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [8, 4, 4], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                           out_hidden_size=HIDDEN, patch_size=16, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
        image_token_id=TOKEN_ID["<|image_pad|>"], video_token_id=TOKEN_ID["<|video_pad|>"],
        vision_start_token_id=TOKEN_ID["<|vision_start|>"],
        vision_end_token_id=TOKEN_ID["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build():
    """The seeded random model, BF16, eval mode (as tf_model.build, with this config).

    The default init (std 0.02) leaves a tiny model's logits almost flat; the weights are
    scaled up so that greedy choices and logprobs depend clearly on every tensor.
    """
    torch.manual_seed(SEED)
    m = Qwen3VLMoeForConditionalGeneration._from_config(config(), dtype=DTYPE).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2:
                p.mul_(10.0)
    return m


def tokenizer():
    """The local tokenizer: byte-level BPE without merges, Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    assert len(vocab) == 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token=None,
                                   model_max_length=512)


PROCESSOR = {"size": {"shortest_edge": 64 * 64, "longest_edge": 128 * 128}, "patch_size": 16,
             "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
             "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor"}


def write_processor_config(folder):
    """preprocessor_config.json and video_preprocessor_config.json into folder."""
    folder = Path(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {**PROCESSOR, "image_processor_type": "Qwen2VLImageProcessorFast"}, indent=2) + "\n")
    (folder / "video_preprocessor_config.json").write_text(json.dumps(
        {**PROCESSOR, "video_processor_type": "Qwen3VLVideoProcessor"}, indent=2) + "\n")


def save_original(out):
    """save_pretrained of build() with several shards, expert tensors moved to the Hub's
    layout (tf_model.to_hub_layout), the tokenizer and processor configs beside them."""
    out = Path(out)
    tmp = out.parent / (out.name + ".tf5")
    shutil.rmtree(tmp, ignore_errors=True)
    shards = tf_model.save(build(), tmp)
    assert len(shards) >= 3, shards
    tf_model.to_hub_layout(tmp, out)
    shutil.rmtree(tmp)
    tokenizer().save_pretrained(out)
    write_processor_config(out)
    return out


def build_hub_layout():
    """build() with every expert parameter transposed to the Hub's layout: what
    Automodel's Checkpointer then writes is the same bytes as save_original's files (the model
    is only saved, never run, in this layout). Its config names its architecture, as that of a
    model loaded with from_pretrained does: the checkpointer writes the model's config as it is
    into .hf_metadata/config.json, and one built from a config alone has architectures null,
    which vLLM 0.32 serves as a pooling model ("LLM.generate() is only supported for
    generative models")."""
    m = build()
    m.config.architectures = [Qwen3VLMoeForConditionalGeneration.__name__]
    with torch.no_grad():
        for name, p in list(m.named_parameters()):
            if tf_model.is_hf_expert(name):
                owner, _, attr = name.rpartition(".")
                hub = p.data.transpose(1, 2).contiguous()
                setattr(m.get_submodule(owner), attr, torch.nn.Parameter(hub, requires_grad=False))
    return m


def automodel_save(out, world):
    """tests/real/tf_save.py (Automodel Checkpointer.save_model, `world` gloo ranks, experts
    Shard(0) DTensors) with this model in the Hub layout; then the tokenizer is written into
    the save's .hf_metadata/ as the checkpointer's tokenizer= argument does
    (tokenizer.save_pretrained(hf_metadata_dir)), which tf_save.py does not pass, and the
    processor configs beside it (what a processor passed there would add)."""
    import tf_save
    tf_model.build = build_hub_layout  # tf_save's ranks call tf_model.build(); forked after this
    rc = tf_save.main(["tf_save.py", str(out), str(world)])
    meta = Path(out) / "model" / ".hf_metadata"
    assert meta.is_dir(), f"no {meta}"
    tokenizer().save_pretrained(meta)
    write_processor_config(meta)
    return rc


def main(argv):
    """Command line (see the module docstring)."""
    if argv[1] == "original":
        save_original(argv[2])
        return 0
    if argv[1] == "automodel-save":
        return automodel_save(argv[2], int(argv[3]))
    raise SystemExit(f"usage: {argv[0]} original OUT | automodel-save OUT W")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
