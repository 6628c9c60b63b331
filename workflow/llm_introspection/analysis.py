"""The work of the analysis rules, free of Snakemake: keyword coding and content statistics.

No torch here: these rules run in the analysis environment.
"""

import json

import pandas as pd

from .coding import code_table, load_lexicon
from .statistics import content_statistics, mixed_effects, scaling
from .storage import atomic_path, read_json, versions, write_json

DIMENSIONS = ("self_reference", "meta_cognition", "hedging")
DESIGN_COLUMNS = ("model", "family", "size_b", "variant", "prompt_id", "prompt_type", "rep", "seed")


def completion_rows(generation_paths):
    """One record per completion of the given generation files: the design columns and its text."""
    rows = []
    for path in generation_paths:
        generation = read_json(path)
        model, prompt = generation["model"], generation["prompt"]
        for rep in generation["reps"]:
            rows.append({
                "model": model["name"], "family": model["family"], "size_b": model["size_b"],
                "variant": model["variant"], "prompt_id": prompt["id"], "prompt_type": prompt["type"],
                "rep": rep["rep"], "seed": rep["seed"], "text": rep["text"],
            })
    return rows


def write_csv(path, table):
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def run_keyword_coding(generation_paths, lexicon_path, schema_path, output_path):
    """Code every completion of one model with the keyword lexicon: one row per completion."""
    lexicon = load_lexicon(lexicon_path, schema_path)
    table = code_table(completion_rows(generation_paths), lexicon)
    table["lexicon_version"] = lexicon.version
    table["lexicon_sha256"] = lexicon.sha256
    write_csv(output_path, table)


def _records(frame):
    """DataFrame to JSON-ready records (NaN becomes null)."""
    return json.loads(frame.to_json(orient="records"))


def run_content_statistics(coding_paths, outputs, settings):
    """content_statistics.csv, mixed_effects.json and scaling_statistics.json over all models."""
    table = pd.concat([pd.read_csv(path) for path in coding_paths], ignore_index=True)
    n_resamples, seed = settings["bootstrap_resamples"], settings["seed"]
    write_csv(outputs["content"], content_statistics(table, DIMENSIONS, n_resamples, seed))
    provenance = {
        "models": sorted(table["model"].unique()), "n_completions": len(table),
        "lexicon_sha256": sorted(table["lexicon_sha256"].unique()), "versions": versions(),
    }
    write_json(outputs["mixed_effects"], {
        "random_effect": "family", **provenance,
        "dimensions": {d: mixed_effects(table, d) for d in DIMENSIONS},
    })
    write_json(outputs["scaling"], {
        "bootstrap_resamples": n_resamples, "seed": seed, **provenance,
        "dimensions": {
            d: {part: _records(frame) for part, frame in scaling(table, d, n_resamples, seed).items()}
            for d in DIMENSIONS
        },
    })
