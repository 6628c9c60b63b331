"""GPU benchmark that needs no download: randomly initialised models with the seed study's real
shapes, built directly on the device, timed at batch 1 and at a planned batch.

Run from the repository root with the .venv active:
    python benchmarks/gpu.py                       # Llama-3.1-8B's shape on the GPU, bfloat16
    python benchmarks/gpu.py --shape gemma-2-9b     # another seed-study shape
    python benchmarks/gpu.py --small                # a small Llama shape (automatic without CUDA)
For each batch it prints plain transformers `generate` tokens/s, this workflow's sampler tokens/s,
the teacher-forced trace's time as a share of sampling, and the memory-bandwidth limit: a decode
step reads every weight and the whole key/value cache once, so tokens/s <= batch x bandwidth /
(weight bytes + KV bytes per step). Speed does not depend on the weights' values, so random ones
measure it; the sampler's outputs are not looked at.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from llm_introspection.sampling import SamplingParams, sample_completions  # noqa: E402
from llm_introspection.tracing import hidden_state_indices, trace_prompts  # noqa: E402

# Published config.json values of the seed study's models (and a small shape for CPUs).
SHAPES = {
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0,
                       max_position_embeddings=131072),
    "mistral-7b-v0.3": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=8, vocab_size=32768, rope_theta=1000000.0,
                            max_position_embeddings=32768, sliding_window=None),
    "gemma-2-9b": dict(model_type="gemma2", hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000,
                       query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, max_position_embeddings=8192),
    "small": dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=32000, max_position_embeddings=4096),
}
# Memory bandwidth (GB/s) by device name; --bandwidth-gbs overrides, a CPU's is measured.
BANDWIDTH_GBS = {"H200": 4800, "H100 SXM": 3350, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039,
                 "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "RTX 4090": 1008, "V100": 900}
SEED_STUDY_BATCH = 400  # 40 prompts x 10 reps, config/seed_study.yaml
REPS = 10


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, function):
    synchronize(device)
    started = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - started


def bandwidth_gbs(device, override):
    """The device's memory bandwidth in GB/s and where the figure comes from."""
    if override:
        return override, "given"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in BANDWIDTH_GBS.items():
            if key in name:
                return value, f"{name} spec"
        return None, f"{name}: unknown, pass --bandwidth-gbs"
    block = torch.empty(64 * 2**20, dtype=torch.float32)  # 256 MB, well past the caches
    copy = torch.empty_like(block)
    copy.copy_(block)
    _, seconds = timed(device, lambda: [copy.copy_(block) for _ in range(5)])
    return 5 * 2 * block.numel() * 4 / seconds / 1e9, "measured copy"


def kv_bytes_per_token(config, dtype):
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype.itemsize


def planned_batch(config, dtype, weights, device, context, requested):
    """The batch to time: `requested`, or what fits in 90% of the free memory beside the weights
    (KV cache of `context` tokens per sequence, twice for the trace's activations), at most the
    seed study's 400."""
    if requested:
        return requested
    if device.type != "cuda":
        return 8
    free = torch.cuda.mem_get_info(device)[0]
    per_sequence = 2 * kv_bytes_per_token(config, dtype) * context
    return max(1, min(SEED_STUDY_BATCH, int(0.9 * free / per_sequence)))


def hf_generate(model, prompts, params):
    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                         temperature=params.temperature, top_p=params.top_p, top_k=0,
                         max_new_tokens=params.max_new_tokens, min_new_tokens=params.max_new_tokens)
    return (out.shape[1] - prompts.shape[1]) * out.shape[0]


def bench_batch(model, device, batch, prompt_tokens, params, weights, bandwidth):
    generator = torch.Generator().manual_seed(batch)
    n_prompts = max(1, batch // REPS)
    unique = torch.randint(10, model.config.vocab_size, (n_prompts, prompt_tokens), generator=generator)
    prompts = unique[torch.arange(batch) % n_prompts]
    tokens, hf_s = timed(device, lambda: hf_generate(model, prompts.to(device), params))
    seeds = list(range(batch))
    completions, ours_s = timed(device, lambda: sample_completions(
        model, prompts.tolist(), seeds, params, [], 0, batch_size=batch, top_k=10))
    ours_tokens = sum(len(c.token_ids) for c in completions)
    grouped = [[completions[i].token_ids for i in range(batch) if i % n_prompts == p] for p in range(n_prompts)]
    indices = hidden_state_indices([0, 0.25, 0.5, 0.75, 1.0], model.config.num_hidden_layers)
    _, trace_s = timed(device, lambda: trace_prompts(model, unique.tolist(), grouped, indices, batch, 0))
    kv_step = batch * (prompt_tokens + params.max_new_tokens / 2) * kv_bytes_per_token(model.config, model.dtype)
    limit = batch * bandwidth * 1e9 / (weights + kv_step) if bandwidth else float("nan")
    return {"batch": batch, "hf": tokens / hf_s, "ours": ours_tokens / ours_s, "trace_share": trace_s / ours_s,
            "limit": limit}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="llama-3.1-8b")
    parser.add_argument("--small", action="store_true", help="the small shape (default without CUDA)")
    parser.add_argument("--batch", type=int, help="the planned batch (default: what fits, at most 400; 8 on CPU)")
    parser.add_argument("--prompt-tokens", type=int)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--bandwidth-gbs", type=float, help="the device's memory bandwidth, GB/s")
    args = parser.parse_args()
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = args.small or device.type == "cpu"
    shape = "small" if small else args.shape
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    prompt_tokens = args.prompt_tokens or (32 if small else 60)  # the seed study's prompts: ~60 tokens
    params = SamplingParams(0.8, 0.95, args.new_tokens or (32 if small else 500))
    config = AutoConfig.for_model(**SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs: no weights on disk, no copy
        model, build_s = timed(device, lambda: AutoModelForCausalLM.from_config(config, dtype=dtype).eval())
    model.generation_config.pad_token_id = 0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth, source = bandwidth_gbs(device, args.bandwidth_gbs)
    batch = planned_batch(config, dtype, weights, device, prompt_tokens + params.max_new_tokens, args.batch)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"## {shape} shape ({weights / 1e9:.2f} GB of {str(dtype).removeprefix('torch.')} weights, built in "
          f"{build_s:.1f} s) on {name}")
    print(f"{prompt_tokens} prompt tokens, {params.max_new_tokens} new tokens, T={params.temperature}, "
          f"top-p {params.top_p}; bandwidth {bandwidth or float('nan'):.0f} GB/s ({source})\n")
    bench_batch(model, device, 1, 8, SamplingParams(0.8, 0.95, 4), weights, bandwidth)  # warm-up
    rows = [bench_batch(model, device, b, prompt_tokens, params, weights, bandwidth) for b in sorted({1, batch})]
    print("| batch | transformers generate tok/s | workflow sampler tok/s | sampler / generate "
          "| trace time / sampling time | bandwidth limit tok/s | sampler / limit |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['hf']:.1f} | {r['ours']:.1f} | {r['ours'] / r['hf']:.2f}x | "
              f"{100 * r['trace_share']:.0f}% | {r['limit']:.0f} | {100 * r['ours'] / r['limit']:.0f}% |")


if __name__ == "__main__":
    main()
