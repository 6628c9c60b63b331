"""The work of the concept-injection rules, one function per rule, free of Snakemake.

A job loads its model at most once: `concept_vectors` writes the vector files of every configured
layer of one model (with each layer's mean residual norm), all layers captured in the same passes;
`inject` runs one experiment of the registry on the cells of its sweep for one model;
`grade_injection` grades the sampled detection responses of one model's cells with the judge. The
sweep jobs compute only the cells that are missing or stale (injection.sweep).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from ..jobs import log, open_model
from ..models import load_tokenizer
from ..prompts import uses_chat_template
from ..registry import EXPERIMENTS, RESOURCES
from ..sampling import SamplingParams
from ..storage import read_json
from ..tracing import hidden_state_indices
from . import texts
from .cell import open_cell, write_records
from .concepts import (
    concept_prompt_ids, contrastive_vectors, load_vectors, mean_residual_norms, mean_subtraction_vectors,
    save_vectors, sentence_ids,
)
from .grading import grade_responses
from .sweep import fingerprint, is_current, keep_finished, release_finished

NORM_SENTENCES = 32  # sentences of the neutral pool that measure a layer's mean residual norm


def load_resource(resources: dict, key: str) -> Any:
    """The loaded, validated texts of config key injection.resources.<key>."""
    return getattr(texts, RESOURCES[key])(resources[key])


def run_concept_vectors(manifest_path: Path | str, layer_fractions: Sequence[float], vector_paths: Sequence[Path | str],
                        settings: dict, resources: dict, runtime: dict, threads: int, *,
                        template_date: str | None) -> None:
    """concept_vectors: the vector file of each layer fraction (vector_paths parallel to
    layer_fractions), all layers captured in the same passes: the first n_concepts concepts'
    mean-subtraction vectors (and every baseline word's, for concept-like random vectors), or the
    first n_concepts contrastive pairs' vectors, with the layer's mean residual norm over neutral
    sentences (first position excluded) as attribute `mean_norm`. A file equals the one a run
    with its layer alone writes. The concept requests are rendered as on `template_date` (under a
    chat template)."""
    model, manifest, record, _ = open_model(manifest_path, runtime, threads, template_date)
    tokenizer = load_tokenizer(manifest)
    batch = settings["batch_size"]
    per_fraction = [hidden_state_indices([f], manifest["n_layers"])[0] for f in layer_fractions]
    indices = sorted(set(per_fraction))
    started = time.perf_counter()
    if settings["vector_method"] == "mean_subtraction":
        words = load_resource(resources, "concepts")
        names = words.concepts[: settings["n_concepts"]]

        def prompts(items):
            return concept_prompt_ids(items, words.template, tokenizer, record["variant"], record["frame"],
                                      record["name"], template_date=template_date)

        vectors, baseline = mean_subtraction_vectors(model, indices, prompts(names), prompts(words.baseline), batch)
    else:
        baseline = None
        pairs = load_resource(resources, "contrastive_pairs")[: settings["n_concepts"]]
        names = [pair.id for pair in pairs]
        vectors = contrastive_vectors(model, indices, sentence_ids([p.specific for p in pairs], tokenizer),
                                      sentence_ids([p.generic for p in pairs], tokenizer), batch)
    sentences = sentence_ids(load_resource(resources, "neutral_sentences")[:NORM_SENTENCES], tokenizer)
    norms = mean_residual_norms(model, indices, sentences, batch)
    for fraction, index, path in zip(layer_fractions, per_fraction, vector_paths):
        j = indices.index(index)
        save_vectors(path, vectors[:, j], names, model=record, layer=index, method=settings["vector_method"],
                     baseline=None if baseline is None else baseline[:, j], layer_fraction=fraction,
                     mean_norm=float(norms[j]), norm_sentences=NORM_SENTENCES)
    log(f"{len(names)} {settings['vector_method']} vectors at hidden states {indices} in "
        f"{time.perf_counter() - started:.1f} s")


def run_inject(manifest_path: Path | str, experiment: str, cells: Sequence[tuple[Path | str, float, Path | str]],
               settings: dict, resources: dict, runtime: dict, threads: int, *, template_date: str | None) -> None:
    """inject: one experiment of the registry on every cell of its sweep for one model, the model
    loaded once. `cells` lists (vector_path, strength, output_path); a cell whose file holds the
    fingerprint this run would write is skipped (sweep.is_current), every other is computed and
    written as soon as it is done. `settings` holds the injection keys the experiment reads (and,
    for an experiment that samples, max_new_tokens, temperature and top_p). Trials are rendered as
    on `template_date` (under a chat template), which is part of every cell's fingerprint."""
    spec = EXPERIMENTS[experiment]
    inputs = {"manifest": manifest_path, **{f"resource {key}": resources[key] for key in spec.resources}}
    todo = []
    for vector_path, strength, output_path in cells:
        expected = fingerprint(inputs | {"vectors": vector_path}, experiment=experiment, strength=strength,
                               settings=settings, runtime=runtime, template_date=template_date)
        if is_current(output_path, expected):
            log(f"{output_path}: current, kept")
        else:
            todo.append((vector_path, strength, output_path, expected))
    if todo:
        model, manifest, record, _ = open_model(manifest_path, runtime, threads, template_date)
        tokenizer = load_tokenizer(manifest)
        texts_ = [load_resource(resources, key) for key in spec.resources]
        run = getattr(import_module(f"{__package__}.{spec.module}"), f"run_{experiment}")
        for vector_path, strength, output_path, expected in todo:
            cell = open_cell(vector_path, record["name"], uses_chat_template(record["variant"], record["frame"]),
                             strength, load_vectors(vector_path).attrs["mean_norm"], template_date)
            arguments = {key: settings[key] for key in spec.settings}
            sampling = None
            if spec.samples:
                sampling = SamplingParams(settings["temperature"], settings["top_p"], settings["max_new_tokens"])
                arguments["params"] = sampling
            started = time.perf_counter()
            with torch.inference_mode():
                records = run(model, tokenizer, cell, *texts_, **arguments)
            log(f"{experiment} at hidden state {cell.layer}, strength {strength}: {len(records)} records in "
                f"{time.perf_counter() - started:.1f} s")
            write_records(output_path, records, fingerprint=expected, model=record, vectors=cell.provenance(),
                          settings=settings, sampling=vars(sampling) if sampling else None)
            keep_finished(output_path)
    log(f"{experiment}: {len(todo)} of {len(cells)} cells computed, {len(cells) - len(todo)} current")
    release_finished([output for _, _, output in cells])


def run_grade_injection(judge_manifest_path: Path | str, cells: Sequence[tuple[Path | str, Path | str]], settings: dict,
                        resources: dict, runtime: dict, threads: int, *, template_date: str) -> None:
    """grade_injection: the judge model's verdicts on the sampled detection responses of every cell
    of one model's sweep, the judge loaded once. `cells` lists (responses_path, output_path); a
    current cell (sweep.is_current) is skipped. The judge's chat template is rendered as on
    `template_date`, part of every cell's fingerprint."""
    inputs = {"manifest": judge_manifest_path, **{f"resource {key}": path for key, path in resources.items()}}
    todo = []
    for responses_path, output_path in cells:
        expected = fingerprint(inputs | {"responses": responses_path}, settings=settings, runtime=runtime,
                               template_date=template_date)
        if not is_current(output_path, expected):
            todo.append((responses_path, output_path, expected))
    if todo:
        model, manifest, record, _ = open_model(judge_manifest_path, runtime, threads, template_date)
        tokenizer = load_tokenizer(manifest)
        rubric = load_resource(resources, "grading_rubric")
        question = load_resource(resources, "detection").question
        for responses_path, output_path, expected in todo:
            responses = read_json(responses_path)["records"]
            graded = grade_responses(model, tokenizer, responses, rubric, question, settings["max_response_tokens"],
                                     settings["batch_size"], template_date=template_date)
            write_records(output_path, graded, fingerprint=expected, judge=record, responses=str(responses_path),
                          settings=settings)
            keep_finished(output_path)
    log(f"graded {len(todo)} of {len(cells)} cells, {len(cells) - len(todo)} current")
    release_finished([output for _, output in cells])
