"""Benchmarks of the foundation: sampling throughput, tracing cost, per-job overhead, dry-run time.

Run from the repository root with the .venv active:  python benchmarks/foundation.py
It prepares the two embedded models through the workflow if needed, then prints measured ratios.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from llm_introspection import sampling  # noqa: E402
from llm_introspection.config import read_yaml  # noqa: E402
from llm_introspection.models import load_model, load_tokenizer  # noqa: E402
from llm_introspection.prompts import PROMPT_TYPES, load_prompt, render_prompt  # noqa: E402
from llm_introspection.storage import read_json  # noqa: E402
from llm_introspection.tracing import hidden_state_indices, trace_prompts  # noqa: E402

PROMPTS = ["self_reference_01", "topic_control_01", "unconstrained_01", "structured_novelty_01"]



def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def snakemake(*args):
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    return timed(lambda: subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True))


def hf_generate(model, ids, count, params, batch):
    """Plain transformers sampling, `batch` sequences per call: tokens generated."""
    tokens = 0
    for _ in range(count // batch):
        out = model.generate(
            input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0,
            max_new_tokens=params.max_new_tokens, num_return_sequences=batch,
        )
        new = out[:, len(ids):]
        pad = model.generation_config.pad_token_id
        tokens += int((new != pad).sum()) if pad is not None else new.numel()
    return tokens


def bench_model(name, reps, params, layer_fractions):
    manifest = read_json(REPO / f"results/models/{name}/manifest.json")
    (model, tokenizer), load_s = timed(lambda: (load_model(manifest, "cpu", torch.float32), load_tokenizer(manifest)))
    prompts = [load_prompt(REPO / f"resources/prompts/{p}.yaml") for p in PROMPTS]
    rendered = [render_prompt(p, tokenizer, manifest["variant"], manifest["frame"], name)[1] for p in prompts]
    eos = sampling.eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    seeds = [42 + r for r in range(reps)]
    row = {"model": name, "load_s": load_s}

    def ours(prompt_ids, batch_size=64):
        completions = sampling.sample_completions(
            model, [p for p in prompt_ids for _ in seeds], seeds * len(prompt_ids), params, eos, pad, batch_size, 10)
        return completions, sum(len(c.token_ids) for c in completions)

    tokens, seconds = timed(lambda: hf_generate(model, rendered[0], reps, params, batch=1))
    row["hf_batch1_tok_s"] = tokens / seconds
    tokens, seconds = timed(lambda: hf_generate(model, rendered[0], reps, params, batch=reps))
    row["hf_batch_reps_tok_s"] = tokens / seconds
    (_, tokens), seconds = timed(lambda: ours(rendered[:1]))
    row["ours_reps_tok_s"] = tokens / seconds
    (completions, tokens), generate_s = timed(lambda: ours(rendered))
    row["ours_job_tok_s"] = tokens / generate_s
    row["job_generate_s"] = generate_s

    real_statistics = sampling.token_statistics
    sampling.token_statistics = lambda logits, probs, column, chosen, top_k: torch.zeros(len(chosen), 5)
    try:
        _, without_stats_s = timed(lambda: ours(rendered))
    finally:
        sampling.token_statistics = real_statistics
    row["entropy_cost"] = (generate_s - without_stats_s) / generate_s

    design = read_yaml(REPO / "config/config.yaml")["generation"]
    design_params = sampling.SamplingParams(0.8, 0.95, design["max_new_tokens"])
    design_seeds = [42 + r for r in range(design["reps"])]
    eight = [render_prompt(p, tokenizer, manifest["variant"], manifest["frame"], name)[1]
             for p in (load_prompt(REPO / f"resources/prompts/{i}_{n:02d}.yaml") for i in PROMPT_TYPES for n in (1, 2))]
    for key, prompt_ids in (("work_model_s", eight), ("work_prompt_s", eight[:1])):
        _, row[key] = timed(lambda: sampling.sample_completions(
            model, [p for p in prompt_ids for _ in design_seeds], design_seeds * len(prompt_ids), design_params,
            eos, pad, 64, 10))
    row["bytes"] = sum(f.stat().st_size for f in Path(manifest["load_path"]).glob("*.safetensors"))

    indices = hidden_state_indices(layer_fractions, manifest["n_layers"])
    groups = [[c.token_ids for c in completions[i * reps:(i + 1) * reps]] for i in range(len(rendered))]
    _, trace_s = timed(lambda: trace_prompts(model, rendered, groups, indices, 16, 0))
    row["trace_cost"] = trace_s / generate_s
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = read_yaml(REPO / "config/config.yaml")
    models = list(config["models"])
    snakemake(*[f"results/models/{m}/manifest.json" for m in models])
    params = sampling.SamplingParams(0.8, 0.95, args.max_new_tokens)

    rows = [bench_model(m, args.reps, params, config["trace"]["layer_fractions"]) for m in models]
    print(f"\n## Sampling ({args.reps} reps x {args.max_new_tokens} new tokens, T=0.8, top-p 0.95, 2 CPU threads)")
    print("| model | HF generate batch 1 | HF generate batch 10 | ours, 10 reps | ours, job of 4 prompts x 10 reps | ours / HF batch 1 (10 reps) | ours / HF batch 1 (job) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['hf_batch1_tok_s']:.1f} tok/s | {r['hf_batch_reps_tok_s']:.1f} tok/s "
              f"({r['hf_batch_reps_tok_s'] / r['hf_batch1_tok_s']:.1f}x) | {r['ours_reps_tok_s']:.1f} tok/s | "
              f"{r['ours_job_tok_s']:.1f} tok/s | {r['ours_reps_tok_s'] / r['hf_batch1_tok_s']:.1f}x | "
              f"{r['ours_job_tok_s'] / r['hf_batch1_tok_s']:.1f}x |")

    print("\n## Tracing and entropy, as a fraction of the job's generation time (goal <= 15%)")
    print("| model | entropy statistics (inside sampling) | teacher-forced trace | total |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['entropy_cost']:.1%} | {r['trace_cost']:.1%} | {r['entropy_cost'] + r['trace_cost']:.1%} |")

    _, import_s = timed(lambda: subprocess.run(
        [sys.executable, "-c", "import snakemake.script, llm_introspection.jobs"], cwd=REPO, check=True,
        env={"PYTHONPATH": str(REPO / "workflow"), "PATH": ""}))
    print("\n## Per-job overhead (process start + imports + model load) as a fraction of job time (goal <= 25%)")
    print(f"process start + imports: {import_s:.1f} s (measured)")
    print("| model | load | default design, one job per model (8 prompts) | default design, one job per prompt |")
    print("|---|---|---|---|")
    for r in rows:
        overhead = import_s + r["load_s"]
        cells = [f"{overhead / (overhead + work):.0%} (work {work:.0f} s)" for work in (r["work_model_s"], r["work_prompt_s"])]
        print(f"| {r['model']} | {r['load_s']:.1f} s | {cells[0]} | {cells[1]} |")
    throughput = max(r["bytes"] / r["load_s"] for r in rows)
    load_8b = 16e9 / throughput
    overhead = import_s + load_8b
    print(f"\nSeed study, projected: an 8B bf16 model is 16 GB; at the load rate measured here "
          f"({throughput / 1e9:.2f} GB/s) it loads in {load_8b:.0f} s, so a job's overhead is ~{overhead:.0f} s. "
          f"Overhead <= 25% needs >= {3 * overhead:.0f} s of work per job: one job per model samples "
          f"400 x 500 = 200,000 tokens, which stays above that unless the GPU exceeds "
          f"{200000 / (3 * overhead):.0f} tok/s; one job per prompt samples 10 x 500 = 5,000 tokens, "
          f"above it only below {5000 / (3 * overhead):.0f} tok/s.")

    print("\n## Dry run of the seed-study config (16 models x 40 prompts; goal <= 10 s)")
    for granularity in ("model", "prompt"):
        _, seconds = snakemake("--configfile", "config/seed_study.yaml", "--dry-run", "--quiet", "all",
                               "--config", f"jobs={{granularity: {granularity}}}")
        print(f"granularity {granularity}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
