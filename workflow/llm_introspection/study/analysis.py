"""The work of the analysis rules, free of Snakemake: keyword coding, content, entropy and
agreement statistics.

No torch here: these rules run in the analysis environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..records import completion_rows, condition_tables, design_columns
from ..storage import open_h5, read_csv, versions, write_csv, write_json
from .clustered import VARIANCE_COMPONENTS, clustered_statistics, crossed_mixed_effects
from .coding import DIMENSIONS, code_table, load_lexicon
from .identity import pair_analysis
from .layers import sweep_holm
from .probe_summary import probing_summary
from .probing import activation_layouts, completion_tokens, embed, pooled_activations
from .tasks import LABEL_KEYS, probe_tasks
from .statistics import agreement, bootstrap_ci, content_statistics, mixed_effects, scaling
# The first token's distribution depends on the prompt alone (every rep shares it), so its
# entropies count once per (model, prompt); the mean entropies once per completion.
FIRST_TOKEN_MEASURES = ("first_token_entropy_t1", "first_token_entropy_sampling")
COMPLETION_MEASURES = ("mean_entropy_t1", "mean_entropy_sampling")


def run_code_keywords(generation_paths: Iterable[Path | str], lexicon_path: Path | str,
                      output_path: Path | str) -> None:
    """Code every completion of one model with the keyword lexicon: one row per completion."""
    lexicon = load_lexicon(lexicon_path)
    table = code_table(completion_rows(generation_paths), lexicon)
    table["lexicon_version"] = lexicon.version
    table["lexicon_sha256"] = lexicon.sha256
    write_csv(output_path, table)


def _records(frame):
    """DataFrame to JSON-ready records (NaN becomes null)."""
    return json.loads(frame.to_json(orient="records"))


def comparisons_by_condition(table: pd.DataFrame, dimensions: Sequence[str], n_resamples: int,
                             seed: int) -> pd.DataFrame:
    """content_statistics (completions as units) and clustered_statistics (model pairs x prompts)
    per condition, told apart by `unit` and `condition` (Holm within each unit and condition): the
    native frame in full, and the shared frame's instruct-vs-base rows when the design has them."""
    parts = []
    for name, rows in condition_tables(table).items():
        for statistics in (content_statistics, clustered_statistics):
            part = statistics(rows, dimensions, n_resamples, seed, base_contrast=name == "native")
            parts.append(part.assign(condition=name))
    return pd.concat(parts, ignore_index=True)


def run_content_statistics(coding_paths: Iterable[Path | str], outputs: Mapping[str, Path | str],
                           settings: Mapping[str, Any]) -> None:
    """content_statistics.csv (both conditions, completion and clustered rows), mixed_effects.json
    (family random intercept, and crossed model and prompt effects) and scaling_statistics.json
    (native frame) over all models."""
    table = pd.concat([read_csv(path) for path in coding_paths], ignore_index=True)
    n_resamples, seed = settings["bootstrap_resamples"], settings["seed"]
    write_csv(outputs["content"], comparisons_by_condition(table, DIMENSIONS, n_resamples, seed))
    table = condition_tables(table)["native"]
    provenance = {
        "condition": "native", "models": sorted(table["model"].unique()), "n_completions": len(table),
        "lexicon_sha256": sorted(table["lexicon_sha256"].unique()), "versions": versions(),
    }
    write_json(outputs["mixed_effects"], {
        "random_effects": {"instruct_crossed": list(VARIANCE_COMPONENTS), "other models": ["family"]}, **provenance,
        "dimensions": {d: mixed_effects(table, d) | crossed_mixed_effects(table, d) for d in DIMENSIONS},
    })
    write_json(outputs["scaling"], {
        "bootstrap_resamples": n_resamples, "seed": seed, **provenance,
        "dimensions": {
            d: {part: _records(frame) for part, frame in scaling(table, d, n_resamples, seed).items()}
            for d in DIMENSIONS
        },
    })


def entropy_tables(entropy_paths: Iterable[Path | str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per completion (first-token and mean entropies) and per position (the profile) tables."""
    completions, positions = [], []
    for path in entropy_paths:
        with open_h5(path) as h5:
            design = design_columns(json.loads(h5.attrs["model"]), json.loads(h5.attrs["prompt"]))
            seeds, lengths = h5["seeds"][:], h5["n_tokens"][:]
            t1, sampling = h5["entropy_t1"][:], h5["entropy_sampling"][:]
        for rep, (seed, length) in enumerate(zip(seeds, lengths)):
            completions.append(design | {
                "rep": rep, "seed": int(seed), "n_tokens": int(length),
                "first_token_entropy_t1": t1[rep, 0], "first_token_entropy_sampling": sampling[rep, 0],
                "mean_entropy_t1": np.nanmean(t1[rep]), "mean_entropy_sampling": np.nanmean(sampling[rep]),
            })
            positions += [design | {"rep": rep, "position": k, "entropy_t1": t1[rep, k],
                                    "entropy_sampling": sampling[rep, k]} for k in range(int(length))]
    return pd.DataFrame(completions), pd.DataFrame(positions)


def describe_by_model(table: pd.DataFrame, measures: Sequence[str], n_resamples: int, seed: int) -> pd.DataFrame:
    """Mean and percentile-bootstrap CI of each measure per model and prompt type (descriptive)."""
    rows = []
    for (model, prompt_type), group in table.groupby(["model", "prompt_type"], sort=True):
        design = group.iloc[0][["family", "size_b", "variant", "condition"]].to_dict()
        for measure in measures:
            mean, low, high = bootstrap_ci(group[measure], np.mean, n_resamples, seed=seed)
            rows.append({"comparison": "descriptive", "dimension": measure, "model": model,
                         "prompt_type": prompt_type, **design, "n_a": len(group),
                         "mean_a": mean, "mean_a_low": low, "mean_a_high": high})
    return pd.DataFrame(rows)


def run_entropy_statistics(entropy_paths: Iterable[Path | str], outputs: Mapping[str, Path | str],
                           settings: Mapping[str, Any]) -> None:
    """entropy_statistics_enhanced.csv (per-model descriptives and instruct vs base comparisons of
    first-token and mean entropy, at T=1 and of the sampling distribution) and entropy_profiles.csv
    (mean entropy per position, model and prompt type)."""
    completions, positions = entropy_tables(entropy_paths)
    n_resamples, seed = settings["bootstrap_resamples"], settings["seed"]
    per_prompt = completions.drop_duplicates(["model", "prompt_id"])
    parts = [
        analysis(table, measures, n_resamples, seed)
        for table, measures in ((per_prompt, FIRST_TOKEN_MEASURES), (completions, COMPLETION_MEASURES))
        for analysis in (describe_by_model, comparisons_by_condition)
    ]
    write_csv(outputs["statistics"], pd.concat(parts, ignore_index=True))
    profile = (positions.groupby(["model", "family", "variant", "prompt_type", "position"], sort=True)
               [["entropy_t1", "entropy_sampling"]].agg(["mean", "count"]))
    profile.columns = [f"{measure}_{stat}" for measure, stat in profile.columns]
    write_csv(outputs["profiles"], profile.reset_index())


def run_agreement_statistics(coding_paths: Iterable[Path | str], judge_paths: Iterable[Path | str],
                             output_path: Path | str) -> None:
    """Keyword coder vs LLM judge (its argmax level) per shared dimension, over all models and per model."""
    keys = ["model", "prompt_id", "rep"]
    coded = pd.concat([read_csv(p) for p in coding_paths], ignore_index=True)
    judged = pd.concat([read_csv(p) for p in judge_paths], ignore_index=True)
    both = coded.merge(judged, on=keys, suffixes=("", "_judge"), validate="one_to_one")
    result = {"judge": sorted(judged["judge_model"].unique()), "rubric_sha256": sorted(judged["rubric_sha256"].unique()),
              "lexicon_sha256": sorted(coded["lexicon_sha256"].unique()), "versions": versions(), "dimensions": {}}
    for dimension in DIMENSIONS:
        pairs = both[[dimension, f"judge_{dimension}_argmax", "model"]].dropna()
        result["dimensions"][dimension] = {
            "all_models": agreement(pairs[dimension], pairs[f"judge_{dimension}_argmax"]),
            "per_model": {m: agreement(g[dimension], g[f"judge_{dimension}_argmax"])
                          for m, g in pairs.groupby("model", sort=True)},
        }
    write_json(output_path, result)


def content_labels(coding_paths: Iterable[Path | str], judge_paths: Iterable[Path | str]) -> pd.DataFrame:
    """Per completion: the keyword self-reference level and the judge's introspective-depth argmax."""
    keys = ["model", "prompt_id", "rep"]
    coded = pd.concat([read_csv(p) for p in coding_paths], ignore_index=True)
    judged = pd.concat([read_csv(p) for p in judge_paths], ignore_index=True)
    labels = coded[keys + ["self_reference"]].rename(columns={"self_reference": "keyword_self_reference"})
    depth = judged[keys + ["judge_introspective_depth_argmax"]].rename(
        columns={"judge_introspective_depth_argmax": "judge_introspective_depth"})
    return labels.merge(depth, on=keys, how="outer", validate="one_to_one")


def run_probes(
    activation_paths: Sequence[Path | str], cross_paths: Sequence[Path | str], noise_paths: Sequence[Path | str],
    coding_paths: Iterable[Path | str], judge_paths: Iterable[Path | str], outputs: Mapping[str, Path | str],
    settings: Mapping[str, Any],
) -> None:
    """Linear probes at every dumped layer, per group of models sharing one activation layout, and
    the identity probes of each base/instruct pair (on the identical-text and weight-noise traces):
    probes.csv (one row per task, subset and layer) and probing_statistics.json (its summary)."""
    labels = content_labels(coding_paths, judge_paths)
    options = {"n_splits": settings["n_splits"], "n_permutations": settings["n_permutations"], "seed": settings["seed"]}
    tables, selections = [], []
    for layout, paths in activation_layouts(activation_paths).items():
        features, meta = pooled_activations(paths)
        tokens = meta[LABEL_KEYS].merge(completion_tokens(paths), on=LABEL_KEYS, validate="one_to_one")["tokens"]
        table, selection = probe_tasks(features, meta, labels, tokens=tokens.to_numpy(),
                                       pre_generation=pooled_activations(paths, pooling="last_prompt")[0], **options)
        tables.append(table.assign(hidden_size=layout[0], n_layers=layout[1]))
        selections.append(selection)
    codes = labels[LABEL_KEYS + ["keyword_self_reference"]].rename(columns={"keyword_self_reference": "code"})
    table, selection, direction, pairs = pair_analysis(activation_paths, cross_paths, noise_paths, codes, **options)
    table = pd.concat([*tables, table], ignore_index=True)
    table.insert(table.columns.get_loc("p_holm") + 1, "p_holm_sweep", sweep_holm(table))
    write_csv(outputs["table"], table)
    write_json(outputs["statistics"], {
        "settings": settings, "versions": versions(),
        "pooling": "mean over the completion's positions; pre-generation: the prompt's last position",
        "folds": "grouped by prompt_id: the reps of one prompt never sit on both sides of a split",
        **probing_summary(table, pd.concat([*selections, selection], ignore_index=True), direction, pairs),
    })


def mid_layer_index(indices: Sequence[int], n_layers: int) -> int:
    """The stored hidden-state index nearest the middle of the network."""
    return min(indices, key=lambda index: (abs(index / n_layers - 0.5), index))


def run_embeddings(activation_paths: Iterable[Path | str], output_path: Path | str, seed: int) -> None:
    """embeddings.csv: 2-D PCA and UMAP coordinates of each completion's mid-layer activations
    (mean over its response tokens), one embedding per activation layout (hidden size, layers)."""
    tables = []
    for (hidden_size, n_layers, indices), paths in activation_layouts(activation_paths).items():
        features, meta = pooled_activations(paths)
        index = mid_layer_index(indices, n_layers)
        for method in ("pca", "umap"):
            if method == "umap" and len(meta) < 4:
                continue  # too few completions for a neighbourhood graph
            xy = embed(features[index], method, seed=seed)
            tables.append(meta.assign(method=method, hidden_state_index=index, layer_fraction=index / n_layers,
                                      layout=f"hidden size {hidden_size}, {n_layers} layers", x=xy[:, 0], y=xy[:, 1]))
    write_csv(output_path, pd.concat(tables, ignore_index=True))
