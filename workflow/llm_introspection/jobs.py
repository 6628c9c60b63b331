"""The work of the model rules, one function per rule, free of Snakemake.

Each job loads its model once and serves every prompt it was given in batches; every output
file is per (model, prompt) and written atomically with its provenance.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from transformers.utils import logging as transformers_logging

from .activations import reduce_states, write_activations
from .batching import PAD_ID
from .memory import (
    BatchRecord, generate_bytes_per_sequence, gigabytes, plan_record, scaled_rate, shape_from_config,
    trace_bytes_per_sequence,
)
from .models import load_model, load_tokenizer, prepare_lora, prepare_model, resolve_device, resolve_dtype
from .progress import Progress, compare_with_plan
from .prompts import answer_end_labels, load_prompt, render_prompt, uses_chat_template
from .records import completion_rows, weight_noise_name
from .sampling import COMPACT_BELOW, STAT_NAMES, SamplingParams, check_context, eos_token_ids, sample_completions
from .storage import atomic_h5, read_json, set_attrs, versions, write_csv, write_json
from .study.judge import score_completions
from .study.rubric import load_rubric
from .tracing import hidden_state_indices, trace_prompts
from .weights import add_difference_sized_noise

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# runtime keys a job reads from the config rather than its params: they change no output but their
# provenance record (the batch plan), so changing them reruns nothing.
PLANNING_KEYS = ("memory_budget_gb", "memory_fraction", "progress_interval_s")
PLAN_DEFAULTS = {"tokens_per_s": 2000.0, "trace_tokens_per_s": 20000.0, "reference_size_b": 8.0}

transformers_logging.disable_progress_bar()  # job logs stay readable


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _check_paths_follow(ids, *path_lists):
    """The rule's per-prompt path lists must name the prompts in the order the job serves them."""
    for paths in path_lists:
        if [Path(p).stem for p in paths] != list(ids):
            raise ValueError(f"output paths {list(paths)} do not follow the prompts {list(ids)}")


def job_settings(params_runtime: dict, config: dict) -> tuple[dict, dict]:
    """A job's runtime (its params, plus the planning keys of the config's runtime) and the config's
    plan section (the throughput the job's actual numbers are compared with)."""
    runtime = dict(params_runtime) | {k: config.get("runtime", {}).get(k) for k in PLANNING_KEYS}
    return {k: v for k, v in runtime.items() if v is not None}, config.get("plan", {})


def plan_batch(model: PreTrainedModel, record: dict, runtime: dict, configured: int, per_sequence: int) -> BatchRecord:
    """The batch plan of a job: the free memory after loading on a GPU, runtime.memory_budget_gb
    minus the weights on the CPU (no plan without it)."""
    fraction = runtime.get("memory_fraction", 0.9)
    if record["device"].startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(record["device"]))
        return plan_record(configured, per_sequence, free, "cuda free memory after loading", fraction)
    if runtime.get("memory_budget_gb"):
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        budget = int(runtime["memory_budget_gb"] * 1e9) - weights
        return plan_record(configured, per_sequence, max(budget, 0), "runtime.memory_budget_gb minus the weights",
                           fraction)
    return plan_record(configured, per_sequence, None, "none", fraction)


def _shape_and_bytes(model):
    return shape_from_config(model.config.get_text_config().to_dict()), next(model.parameters()).element_size()


def _log_plan(what: str, plan: BatchRecord) -> None:
    budget = f"{gigabytes(plan.budget_bytes)} ({plan.budget_source})" if plan.budget_bytes is not None else "none"
    log(f"{what}: {gigabytes(plan.per_sequence_bytes)} planned per sequence, budget {budget}: "
        f"batch {plan.start} (configured {plan.configured}, planned {plan.planned})")


def _compare(what, plan: BatchRecord, record, progress: Progress, projected_tokens, actual_tokens, rate) -> None:
    peak = torch.cuda.max_memory_allocated() if record["device"].startswith("cuda") else None
    planned_peak = None if plan.per_sequence_bytes is None else plan.start * plan.per_sequence_bytes
    log(compare_with_plan(what, {
        "batch": plan.start, "tokens (at most)": projected_tokens,
        "seconds": projected_tokens / rate, "tok/s": float(rate), "batch memory GB": planned_peak and planned_peak / 1e9,
    }, {
        "batch": max(plan.used, default=0), "tokens (at most)": actual_tokens,
        "seconds": progress.elapsed, "tok/s": actual_tokens / max(progress.elapsed, 1e-9),
        "batch memory GB": peak and peak / 1e9,
    }) + f"; batches run {plan.used} after {len(plan.backoffs)} out-of-memory back-offs (peak memory measured "
        "on CUDA only)")


def open_model(manifest_path: Path | str, runtime: dict, threads: int,
               template_date: str | None = None) -> tuple[PreTrainedModel, dict, dict, float]:
    """Load a prepared model as the runtime config says; return it, its manifest, the model
    record every output carries and the load time. The record's `template_date` is the date the
    job renders the chat templates it renders with (config key prompts.template_date; None: the job
    renders none, e.g. a model that reads a plain frame, or a trace of token ids)."""
    torch.set_num_threads(threads)
    manifest = read_json(manifest_path)
    device = resolve_device(runtime["device"])
    dtype = resolve_dtype(runtime["dtype"], device)
    gpus = runtime.get("gpus", 1)  # present only for a model on more than one GPU
    started = time.perf_counter()
    model = load_model(manifest, device, dtype, gpus)
    load_s = time.perf_counter() - started
    where = f"{gpus} GPUs" if gpus > 1 and device.startswith("cuda") else device
    log(f"loaded {manifest['name']} on {where} as {dtype} in {load_s:.1f} s")
    record = {k: manifest[k] for k in ("name", "family", "size_b", "variant", "frame", "source", "revision")}
    record.update(
        model_type=manifest["model_type"], n_layers=manifest["n_layers"], hidden_size=manifest["hidden_size"],
        dtype=str(dtype).removeprefix("torch."), device=device,
        trust_remote_code=manifest["trust_remote_code"], template_date=template_date,
    )
    record.update({key: manifest[key] for key in ("base", "adapter") if key in manifest})  # LoRA variants
    if gpus > 1:
        record["gpus"] = gpus
    if device == "cpu":  # float sums on a CPU depend on how many threads share them
        record["cpu_threads"] = threads
    return model, manifest, record, load_s


def run_generate(manifest_path: Path | str, prompt_paths: Sequence[Path | str], generation_paths: Sequence[Path | str],
                 entropy_paths: Sequence[Path | str], study: str, settings: dict, threads: int, *,
                 template_date: str | None) -> None:
    """Sample settings['generation']['reps'] completions of every prompt; write one JSON and one
    entropy HDF5 per prompt (the lists of paths are parallel). A completion of a base frame ends
    before the first line that starts with one of the frame's end labels (stop_reason frame_end).
    A chat template is rendered as on `template_date` (prompts.apply_template)."""
    gen = settings["generation"]
    model, manifest, record, load_s = open_model(manifest_path, settings["runtime"], threads, template_date)
    tokenizer = load_tokenizer(manifest)
    params = SamplingParams(gen["temperature"], gen["top_p"], gen["max_new_tokens"])
    prompts = [load_prompt(path) for path in prompt_paths]  # validated when the workflow parsed them
    _check_paths_follow([p.id for p in prompts], generation_paths, entropy_paths)
    rendered = [render_prompt(p, tokenizer, record["variant"], record["frame"], record["name"],
                              template_date=template_date) for p in prompts]
    check_context(model, record["name"], {p.id: len(ids) for p, (_, ids) in zip(prompts, rendered)}, gen["max_new_tokens"])
    end_labels = [answer_end_labels(p, record["variant"], record["frame"]) for p in prompts]
    chat = uses_chat_template(record["variant"], record["frame"])
    seeds = [gen["seed"] + rep for rep in range(gen["reps"])]
    runtime, plan_settings = settings["runtime"], PLAN_DEFAULTS | settings.get("plan", {})
    shape, dtype_bytes = _shape_and_bytes(model)
    per_sequence = generate_bytes_per_sequence(shape, max(len(ids) for _, ids in rendered), gen["max_new_tokens"],
                                               dtype_bytes)
    plan = plan_batch(model, record, runtime, gen["batch_size"], per_sequence)
    _log_plan("generate", plan)
    progress = Progress("generate", len(prompts) * len(seeds), runtime.get("progress_interval_s", 30), log)
    started = time.perf_counter()
    completions = sample_completions(
        model,
        [ids for _, ids in rendered for _ in seeds],
        seeds * len(prompts),
        params,
        eos_token_ids(model, tokenizer),
        PAD_ID,
        gen["batch_size"],
        gen["top_k_mass"],
        [labels for labels in end_labels for _ in seeds],
        lambda rows: tokenizer.batch_decode(rows, skip_special_tokens=True),
        record=plan,
        progress=progress,
        compact=COMPACT_BELOW,
    )
    generate_s = time.perf_counter() - started
    n_tokens = sum(len(c.token_ids) for c in completions)
    log(f"sampled {len(completions)} completions, {n_tokens} tokens in {generate_s:.1f} s ({n_tokens / generate_s:.1f} tok/s)")
    _compare("generate", plan, record, progress, len(completions) * gen["max_new_tokens"], n_tokens,
             scaled_rate(plan_settings["tokens_per_s"], record["size_b"], plan_settings["reference_size_b"]))
    timings = {"load_s": load_s, "generate_s": generate_s, "job_tokens": n_tokens, "job_prompts": len(prompts)}
    for index, prompt in enumerate(prompts):
        text, prompt_ids = rendered[index]
        mine = completions[index * len(seeds) : (index + 1) * len(seeds)]
        header = {
            "study": study,
            "model": record,
            "prompt": {
                "id": prompt.id, "type": prompt.type, "text": text, "token_ids": prompt_ids,
                "chat_template": chat, "template_date": template_date if chat else None,
                "end_labels": list(end_labels[index]),
            },
            "generation": gen,
            "versions": versions(),
        }
        reps = [
            {
                "rep": rep, "seed": seed, "text": tokenizer.decode(c.token_ids, skip_special_tokens=True),
                "token_ids": c.token_ids, "n_tokens": len(c.token_ids), "stop_reason": c.stop_reason,
            }
            for rep, (seed, c) in enumerate(zip(seeds, mine))
        ]
        write_json(generation_paths[index], {**header, "reps": reps, "timings": timings, "batching": plan.as_dict()})
        _write_entropy(entropy_paths[index], header | {"batching": plan.as_dict()}, seeds, mine)


def _write_entropy(path, header, seeds, completions):
    width = max(len(c.token_ids) for c in completions)
    stats = np.full((len(completions), width, len(STAT_NAMES)), np.nan, dtype=np.float32)
    for row, completion in enumerate(completions):
        stats[row, : len(completion.token_ids)] = completion.stats
    with atomic_h5(path) as h5:
        set_attrs(h5, header)
        h5.attrs["description"] = (
            "Per generated token (columns, NaN after a completion ends), from the logits it was "
            "sampled from: entropy_t1 = entropy of the model's T=1 next-token distribution; "
            "entropy_sampling = entropy of the distribution actually sampled (temperature + top-p); "
            "topk_mass = T=1 probability mass of the top-k tokens (k = generation.top_k_mass); "
            "logprob_t1 / logprob_sampling = log-probability of the sampled token under each. "
            "Natural logarithms. first_token_* = column 0."
        )
        h5.create_dataset("seeds", data=np.array(seeds))
        h5.create_dataset("n_tokens", data=np.array([len(c.token_ids) for c in completions]))
        for column, name in enumerate(STAT_NAMES):
            h5.create_dataset(name, data=stats[:, :, column])
        h5.create_dataset("first_token_entropy_t1", data=stats[:, 0, 0])
        h5.create_dataset("first_token_entropy_sampling", data=stats[:, 0, 1])


def _trace_generations(model, record, generation_paths, activation_paths, settings):
    """Teacher-force every rep of every generation file through `model`; one activation file each,
    keeping the positions trace.positions says."""
    trace, runtime = settings["trace"], settings["runtime"]
    plan_settings = PLAN_DEFAULTS | settings.get("plan", {})
    positions, last_k = trace.get("positions", "all"), trace.get("last_k", 16)
    indices = hidden_state_indices(trace["layer_fractions"], record["n_layers"])
    generations = [read_json(path) for path in generation_paths]
    _check_paths_follow([g["prompt"]["id"] for g in generations], activation_paths)
    shape, dtype_bytes = _shape_and_bytes(model)
    longest = max(rep["n_tokens"] for g in generations for rep in g["reps"])
    per_sequence = trace_bytes_per_sequence(shape, max(len(g["prompt"]["token_ids"]) for g in generations), longest,
                                            dtype_bytes, len(indices))
    plan = plan_batch(model, record, runtime, trace["batch_size"], per_sequence)
    _log_plan("trace", plan)
    progress = Progress("trace", sum(len(g["reps"]) for g in generations), runtime.get("progress_interval_s", 30), log)
    traced = trace_prompts(
        model,
        [g["prompt"]["token_ids"] for g in generations],
        [[rep["token_ids"] for rep in g["reps"]] for g in generations],
        indices,
        trace["batch_size"],
        pad_id=PAD_ID,
        record=plan,
        progress=progress,
        keep=lambda prompt_states, states: reduce_states(prompt_states, states, positions, last_k),
    )
    # teacher-forced tokens as the plan command counts them: prompt + completion per rep
    projected = sum(len(g["prompt"]["token_ids"]) + rep["n_tokens"] for g in generations for rep in g["reps"])
    _compare("trace", plan, record, progress, projected, projected,
             scaled_rate(plan_settings["trace_tokens_per_s"], record["size_b"], plan_settings["reference_size_b"]))
    for generation, path, reduced in zip(generations, activation_paths, traced):
        write_activations(path, generation, record, indices, trace["layer_fractions"], reduced,
                          {"positions": positions, "last_k": last_k}, plan.as_dict())


def run_trace(manifest_path: Path | str, generation_paths: Sequence[Path | str], activation_paths: Sequence[Path | str],
              settings: dict, threads: int) -> None:
    """Teacher-force every rep of every prompt and store the residual stream per prompt."""
    model, _, record, _ = open_model(manifest_path, settings["runtime"], threads)
    _trace_generations(model, record, generation_paths, activation_paths, settings)


def run_trace_cross(manifest_path: Path | str, generation_paths: Sequence[Path | str],
                    activation_paths: Sequence[Path | str], settings: dict, threads: int) -> None:
    """The identical-text condition: this model teacher-forced on its pair partner's generations
    (prompt and completion token ids as the partner saw and wrote them)."""
    model, _, record, _ = open_model(manifest_path, settings["runtime"], threads)
    writers = {read_json(path)["model"]["name"] for path in generation_paths}
    if record["name"] in writers:
        raise ValueError(f"trace_cross of {record['name']} was given its own generations")
    _trace_generations(model, record, generation_paths, activation_paths, settings)


def run_trace_noise(manifest_path: Path | str, partner_manifest_path: Path | str,
                    generation_paths: Sequence[Path | str], activation_paths: Sequence[Path | str], settings: dict,
                    threads: int) -> None:
    """The weight-difference calibration: the base model, with Gaussian noise added to every
    weight tensor of the norm of its difference from the instruct partner, teacher-forced on the
    base model's own generations."""
    model, _, record, _ = open_model(manifest_path, settings["runtime"], threads)
    partner, _, partner_record, _ = open_model(partner_manifest_path, settings["runtime"], threads)
    noise = add_difference_sized_noise(model, partner, settings["seed"])
    del partner
    log(f"weight noise: |difference| {noise['difference_norm']:.4g} over {noise['n_tensors']} tensors, "
        f"|weights| {noise['weight_norm']:.4g}")
    record = record | {"name": weight_noise_name(record["name"]),
                       "weight_noise": {"partner": partner_record["name"], "seed": settings["seed"], **noise}}
    _trace_generations(model, record, generation_paths, activation_paths, settings)


def run_judge(manifest_path: Path | str, generation_paths: Sequence[Path | str], prompt_paths: Sequence[Path | str],
              rubric_path: Path | str, output_path: Path | str, settings: dict, threads: int, *,
              template_date: str) -> None:
    """Rate every completion of one model with the judge model: one row per completion, per
    dimension the option probabilities' expected level, argmax and option mass. The judge's chat
    template is rendered as on `template_date` (column judge_template_date)."""
    judge_settings = settings["judge"]
    model, manifest, record, _ = open_model(manifest_path, settings["runtime"], threads, template_date)
    tokenizer = load_tokenizer(manifest)
    rubric = load_rubric(rubric_path)
    requests = {p.id: p.instruct for p in (load_prompt(path) for path in prompt_paths)}
    rows = completion_rows(generation_paths)
    started = time.perf_counter()
    scores = score_completions(
        model, tokenizer, [(requests[r["prompt_id"]], r["text"]) for r in rows], rubric,
        judge_settings["max_completion_tokens"], judge_settings["batch_size"], template_date=template_date,
    )
    log(f"judged {len(rows)} completions x {len(rubric.dimensions)} dimensions in {time.perf_counter() - started:.1f} s")
    wide = scores.pivot(index="item", columns="dimension", values=["expected", "argmax", "option_mass"])
    wide.columns = [f"judge_{dimension}" + ("" if value == "expected" else f"_{value}") for value, dimension in wide.columns]
    table = pd.DataFrame(rows).drop(columns="text").join(wide.sort_index().reset_index(drop=True))
    table["judge_truncated"] = scores.groupby("item", sort=True)["truncated"].any().to_numpy()
    table["judge_model"], table["judge_revision"], table["rubric_sha256"] = record["name"], record["revision"], rubric.sha256
    table["judge_template_date"] = template_date
    write_csv(output_path, table)


def run_prepare_model(name: str, spec: dict, manifest_path: Path | str,
                      shared_manifest_paths: Sequence[Path | str] = (), base_manifest_path: Path | str | None = None,
                      adapter_dir: Path | str | None = None) -> None:
    """prepare_model: build or locate the weights and write the manifest; a twin of the
    shared-frame condition (one `shared_manifest_paths`) reuses its original's weights; a LoRA
    variant (`base_manifest_path`, `adapter_dir`) its base model's, with the adapter's hash."""
    started = time.perf_counter()
    if base_manifest_path is not None:
        manifest = prepare_lora(name, spec, read_json(base_manifest_path), adapter_dir)
    elif shared_manifest_paths:
        (shared,) = shared_manifest_paths
        original = read_json(shared)
        manifest = original | {"name": name, "frame": spec["frame"], "twin_of": original["name"]}
    else:
        manifest = prepare_model(name, spec, Path(manifest_path).parent)
    log(f"prepared {name} ({manifest['revision']}) in {time.perf_counter() - started:.1f} s")
    write_json(manifest_path, manifest)
