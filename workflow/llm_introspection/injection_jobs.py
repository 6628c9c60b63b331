"""The work of the concept-injection rules, one function per rule, free of Snakemake.

A job loads its model once: `concept_vectors` writes the vector file of one (model, layer) with
the layer's mean residual norm; `inject` runs one experiment at one (layer, strength) cell;
`grade_injection` grades a cell's sampled detection responses with the judge model.
"""

import time
from pathlib import Path

import torch

from . import injection as experiments
from .concepts import (
    concept_prompt_ids, contrastive_vectors, load_concept_words, load_contrastive_pairs, load_neutral_sentences,
    load_vectors, mean_residual_norm, mean_subtraction_vectors, save_vectors, sentence_ids,
)
from .jobs import log, open_model
from .models import load_tokenizer
from .prompts import uses_chat_template
from .sampling import SamplingParams
from .storage import read_json
from .tracing import hidden_state_indices

# Each resource of config key injection.resources and the schema it is validated against.
SCHEMAS = {
    "concepts": "concepts", "contrastive_pairs": "concepts_contrastive_pairs",
    "neutral_sentences": "concepts_neutral_sentences", "detection": "injection_detection",
    "localization": "injection_localization", "thought_and_intent": "injection_thought_and_intent",
    "grading_rubric": "injection_grading_rubric",
}
NORM_SENTENCES = 32  # sentences of the neutral pool that measure a layer's mean residual norm


def _resource(settings, schema_dir, key, loader):
    return loader(settings["resources"][key], Path(schema_dir) / f"{SCHEMAS[key]}.schema.yaml")


def run_concept_vectors(manifest_path, layer_fraction, vector_path, settings, schema_dir, runtime, threads):
    """The vector file of one layer fraction: the first n_concepts concepts' mean-subtraction
    vectors, or the first n_concepts contrastive pairs' vectors, with the layer's mean residual
    norm over neutral sentences (first position excluded) as attribute `mean_norm`."""
    model, manifest, record, _ = open_model(manifest_path, runtime, threads)
    tokenizer = load_tokenizer(manifest)
    batch = settings["batch_size"]
    index = hidden_state_indices([layer_fraction], manifest["n_layers"])[0]
    started = time.perf_counter()
    if settings["vector_method"] == "mean_subtraction":
        words = _resource(settings, schema_dir, "concepts", load_concept_words)
        names = words.concepts[: settings["n_concepts"]]

        def prompts(items):
            return concept_prompt_ids(items, words.template, tokenizer, record["variant"], record["frame"], record["name"])

        vectors = mean_subtraction_vectors(model, [index], prompts(names), prompts(words.baseline), batch)
    else:
        pairs = _resource(settings, schema_dir, "contrastive_pairs", load_contrastive_pairs)[: settings["n_concepts"]]
        names = [pair.id for pair in pairs]
        vectors = contrastive_vectors(model, [index], sentence_ids([p.specific for p in pairs], tokenizer),
                                      sentence_ids([p.generic for p in pairs], tokenizer), batch)
    sentences = sentence_ids(_resource(settings, schema_dir, "neutral_sentences", load_neutral_sentences)
                             [:NORM_SENTENCES], tokenizer)
    norm = mean_residual_norm(model, index, sentences, batch)
    save_vectors(vector_path, vectors[:, 0], names, model=record, layer=index, method=settings["vector_method"],
                 layer_fraction=layer_fraction, mean_norm=float(norm), norm_sentences=NORM_SENTENCES)
    log(f"{len(names)} {settings['vector_method']} vectors at hidden state {index} in "
        f"{time.perf_counter() - started:.1f} s")


def _run(experiment, model, tokenizer, cell, settings, schema_dir, sampling):
    """The records of one experiment at one cell."""
    batch, seed, n_trials = settings["batch_size"], settings["seed"], settings["n_trials"]
    if experiment in ("detection_logits", "detection_responses", "forced_identification"):
        texts = _resource(settings, schema_dir, "detection", experiments.load_detection_texts)
        if experiment == "detection_responses":
            return experiments.run_detection_responses(model, tokenizer, cell, texts, sampling,
                                                       settings["samples"], seed, batch)
        run = getattr(experiments, f"run_{experiment}")
        return run(model, tokenizer, cell, texts, batch)
    sentences = _resource(settings, schema_dir, "neutral_sentences", load_neutral_sentences)
    if experiment == "localization":
        texts = _resource(settings, schema_dir, "localization", experiments.load_localization_texts)
        return experiments.run_localization(model, tokenizer, cell, texts, sentences, n_trials, seed, batch,
                                            settings["n_sentences"])
    texts = _resource(settings, schema_dir, "thought_and_intent", experiments.load_thought_texts)
    run = getattr(experiments, f"run_{experiment}")
    return run(model, tokenizer, cell, texts, sentences, n_trials, seed, batch)


def run_injection_cell(manifest_path, vector_path, experiment, strength, output_path, settings, generation,
                       schema_dir, runtime, threads):
    """inject: one experiment at one (layer, strength) cell; its per-trial records as one file."""
    model, manifest, record, _ = open_model(manifest_path, runtime, threads)
    tokenizer = load_tokenizer(manifest)
    mean_norm = load_vectors(vector_path).attrs["mean_norm"]
    cell = experiments.open_cell(vector_path, record["name"], uses_chat_template(record["variant"], record["frame"]),
                                 strength, mean_norm)
    sampling = SamplingParams(generation["temperature"], generation["top_p"], settings["max_new_tokens"])
    started = time.perf_counter()
    with torch.inference_mode():
        records = _run(experiment, model, tokenizer, cell, settings, schema_dir, sampling)
    log(f"{experiment} at hidden state {cell.layer}, strength {strength}: {len(records)} records in "
        f"{time.perf_counter() - started:.1f} s")
    experiments.write_records(output_path, records, model=record, vectors=cell.provenance(), settings=settings,
                              sampling=vars(sampling) if experiment == "detection_responses" else None)


def run_grade_injection(judge_manifest_path, responses_path, output_path, settings, schema_dir, runtime, threads):
    """grade_injection: the judge model's verdicts on one cell's sampled detection responses."""
    model, manifest, record, _ = open_model(judge_manifest_path, runtime, threads)
    tokenizer = load_tokenizer(manifest)
    rubric = _resource(settings, schema_dir, "grading_rubric", experiments.load_grading_rubric)
    texts = _resource(settings, schema_dir, "detection", experiments.load_detection_texts)
    responses = read_json(responses_path)["records"]
    graded = experiments.grade_responses(model, tokenizer, responses, rubric, texts.question,
                                         settings["max_response_tokens"], settings["batch_size"])
    experiments.write_records(output_path, graded, judge=record, responses=str(responses_path), settings=settings)
