"""The work of the concept-injection rules, one function per rule, free of Snakemake.

A job loads its model once: `concept_vectors` writes the vector file of one (model, layer) with
the layer's mean residual norm; `inject` runs one experiment of the registry at one (layer,
strength) cell; `grade_injection` grades a cell's sampled detection responses with the judge.
"""

import time
from importlib import import_module

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
    concept_prompt_ids, contrastive_vectors, load_vectors, mean_residual_norm, mean_subtraction_vectors,
    save_vectors, sentence_ids,
)
from .grading import grade_responses

NORM_SENTENCES = 32  # sentences of the neutral pool that measure a layer's mean residual norm


def load_resource(resources: dict, key: str):
    """The loaded, validated texts of config key injection.resources.<key>."""
    return getattr(texts, RESOURCES[key])(resources[key])


def run_concept_vectors(manifest_path, layer_fraction, vector_path, settings, resources, runtime, threads):
    """The vector file of one layer fraction: the first n_concepts concepts' mean-subtraction
    vectors (and every baseline word's, for concept-like random vectors), or the first n_concepts
    contrastive pairs' vectors, with the layer's mean residual norm over neutral sentences (first
    position excluded) as attribute `mean_norm`."""
    model, manifest, record, _ = open_model(manifest_path, runtime, threads)
    tokenizer = load_tokenizer(manifest)
    batch = settings["batch_size"]
    index = hidden_state_indices([layer_fraction], manifest["n_layers"])[0]
    started = time.perf_counter()
    if settings["vector_method"] == "mean_subtraction":
        words = load_resource(resources, "concepts")
        names = words.concepts[: settings["n_concepts"]]

        def prompts(items):
            return concept_prompt_ids(items, words.template, tokenizer, record["variant"], record["frame"], record["name"])

        vectors, baseline = mean_subtraction_vectors(model, [index], prompts(names), prompts(words.baseline), batch)
        baseline = baseline[:, 0]
    else:
        baseline = None
        pairs = load_resource(resources, "contrastive_pairs")[: settings["n_concepts"]]
        names = [pair.id for pair in pairs]
        vectors = contrastive_vectors(model, [index], sentence_ids([p.specific for p in pairs], tokenizer),
                                      sentence_ids([p.generic for p in pairs], tokenizer), batch)
    sentences = sentence_ids(load_resource(resources, "neutral_sentences")[:NORM_SENTENCES], tokenizer)
    norm = mean_residual_norm(model, index, sentences, batch)
    save_vectors(vector_path, vectors[:, 0], names, model=record, layer=index, method=settings["vector_method"],
                 baseline=baseline, layer_fraction=layer_fraction, mean_norm=float(norm), norm_sentences=NORM_SENTENCES)
    log(f"{len(names)} {settings['vector_method']} vectors at hidden state {index} in "
        f"{time.perf_counter() - started:.1f} s")


def run_inject(manifest_path, vector_path, experiment, strength, output_path, settings, resources, runtime,
               threads):
    """inject: one experiment of the registry at one (layer, strength) cell; its per-trial records
    as one file. `settings` holds the injection keys the experiment reads (and, for an experiment
    that samples, max_new_tokens, temperature and top_p)."""
    spec = EXPERIMENTS[experiment]
    model, manifest, record, _ = open_model(manifest_path, runtime, threads)
    tokenizer = load_tokenizer(manifest)
    cell = open_cell(vector_path, record["name"], uses_chat_template(record["variant"], record["frame"]),
                     strength, load_vectors(vector_path).attrs["mean_norm"])
    arguments = {key: settings[key] for key in spec.settings}
    sampling = None
    if spec.samples:
        sampling = SamplingParams(settings["temperature"], settings["top_p"], settings["max_new_tokens"])
        arguments["params"] = sampling
    run = getattr(import_module(f"{__package__}.{spec.module}"), f"run_{experiment}")
    started = time.perf_counter()
    with torch.inference_mode():
        records = run(model, tokenizer, cell, *[load_resource(resources, key) for key in spec.resources], **arguments)
    log(f"{experiment} at hidden state {cell.layer}, strength {strength}: {len(records)} records in "
        f"{time.perf_counter() - started:.1f} s")
    write_records(output_path, records, model=record, vectors=cell.provenance(), settings=settings,
                  sampling=vars(sampling) if sampling else None)


def run_grade_injection(judge_manifest_path, responses_path, output_path, settings, resources, runtime, threads):
    """grade_injection: the judge model's verdicts on one cell's sampled detection responses."""
    model, manifest, record, _ = open_model(judge_manifest_path, runtime, threads)
    tokenizer = load_tokenizer(manifest)
    rubric = load_resource(resources, "grading_rubric")
    question = load_resource(resources, "detection").question
    responses = read_json(responses_path)["records"]
    graded = grade_responses(model, tokenizer, responses, rubric, question, settings["max_response_tokens"],
                             settings["batch_size"])
    write_records(output_path, graded, judge=record, responses=str(responses_path), settings=settings)
