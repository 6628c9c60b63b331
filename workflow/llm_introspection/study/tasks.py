"""The study's probe tasks over every stored layer, as one tidy table, with the held-out layer
selection of each task and subset (see layers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..records import base_instruct_pairs, condition_tables
from .layers import SELECTION_COLUMNS, held_out_layer
from .probing import make_text_probe, probe
from .statistics import holm

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

LABEL_KEYS = ["model", "prompt_id", "rep"]
RESULT_COLUMNS = (
    "hidden_state_index", "layer_fraction", "accuracy", "balanced_accuracy", "majority_baseline",
    "shuffled_control", "p_value", "p_holm", "n", "n_groups", "n_splits", "estimable", "reason",
)
TABLE_COLUMNS = ("task", "subset", *RESULT_COLUMNS)
NO_PAIR = ("no base/instruct pair (one base and one instruct model of the same family and size): "
           "models of different families have unrelated residual coordinates, so they are not pooled")


def probe_all_layers(features: Mapping[int, np.ndarray], meta: pd.DataFrame, target: str,
                     groups_column: str = "prompt_id", **probe_options: Any) -> pd.DataFrame:
    """`probe` of meta[target] at every hidden-state index, with Holm-adjusted p-values across layers.

    `features` and `meta` are row-aligned (as from `pooled_activations`); layer_fraction is
    index / n_layers. Returns one row per index with RESULT_COLUMNS."""
    labels, groups = meta[target].to_numpy(), meta[groups_column].to_numpy()
    n_layers = meta["n_layers"].iloc[0]
    rows = [
        {"hidden_state_index": index, "layer_fraction": index / n_layers, **probe(x, labels, groups, **probe_options)}
        for index, x in sorted(features.items())
    ]
    table = pd.DataFrame.from_records(rows, columns=RESULT_COLUMNS)
    table["p_holm"] = holm(table["p_value"])[0]
    return table


def _subset(features, meta, mask):
    mask = np.asarray(mask)
    return {index: x[mask] for index, x in features.items()}, meta[mask].reset_index(drop=True)


def not_estimable(task: str, reason: str, subset: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """A task's one row (table, selection) when it has no data, with the reason."""
    row = {"task": task, "subset": subset, "estimable": False, "reason": reason}
    return pd.DataFrame([row]), pd.DataFrame([row])


def _selection(task, subset, features, meta, target, table, options):
    """held_out_layer of one subset, beside the max over layers (chosen and scored on the same data)."""
    estimable = table[table["estimable"].astype(bool)]
    best = estimable.loc[estimable["accuracy"].idxmax()] if len(estimable) else None
    selected = held_out_layer(features, meta[target], meta["prompt_id"], options.get("n_splits", 5), options.get("seed", 0))
    return {"task": task, "subset": subset, **selected,
            "max_over_layers": None if best is None else best["accuracy"],
            "max_layer": None if best is None else best["hidden_state_index"]}


def run_subsets(task: str, subsets: Sequence[tuple[str, ArrayLike]], features: Mapping[int, np.ndarray],
                meta: pd.DataFrame, target: str, no_subset_reason: str | None,
                **probe_options: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """probe_all_layers and the held-out layer selection per (subset name, row mask):
    (table, selection), or one not-estimable row each when there is no subset."""
    if not subsets:
        return not_estimable(task, no_subset_reason)
    tables, selections = [], []
    for name, mask in subsets:
        x, rows = _subset(features, meta, mask)
        tables.append(probe_all_layers(x, rows, target, **probe_options).assign(task=task, subset=name))
        selections.append(_selection(task, name, x, rows, target, tables[-1], probe_options))
    return pd.concat(tables, ignore_index=True), pd.DataFrame(selections)


def _pair_subsets(meta):
    """Per condition (native frame; shared frame, when present): each base/instruct pair."""
    subsets = []
    for name, rows in condition_tables(meta).items():
        prefix = "" if name == "native" else f"{name}: "
        models = rows.drop_duplicates("model").set_index("model")[["family", "size_b", "variant"]].to_dict("index")
        in_condition = meta.index.isin(rows.index)
        subsets += [(f"{prefix}pair={base}/{instruct}", in_condition & meta["model"].isin([base, instruct]).to_numpy())
                    for base, instruct in base_instruct_pairs(models)]
    return subsets


def _labelled(meta, extra_labels):
    """Per label column of `extra_labels`: the code of each meta row (NaN where unlabelled)."""
    merged = meta[LABEL_KEYS].merge(extra_labels, on=LABEL_KEYS, how="left", validate="many_to_one")
    return {c: merged[c].to_numpy(dtype=float) for c in extra_labels.columns if c not in LABEL_KEYS}


def _self_reference(task, features, meta, extra_labels, **probe_options):
    """A probe of code >= 1 per label column of `extra_labels`, within each model."""
    if extra_labels is None:
        return not_estimable(task, "no per-completion self-reference labels given (extra_labels)")
    parts = []
    for column, code in _labelled(meta, extra_labels).items():
        subsets = [(f"model={m}, label={column}", mask) for m in meta["model"].unique()
                   if (mask := (meta["model"] == m).to_numpy() & ~np.isnan(code)).any()]
        parts.append(run_subsets(task, subsets, features, meta.assign(self_referential=code >= 1), "self_referential",
                                 f"no completion has a {column} label", **probe_options))
    if not parts:
        return not_estimable(task, "extra_labels has no label column")
    return tuple(pd.concat(p, ignore_index=True) for p in zip(*parts))


def _text_only(tokens, meta, extra_labels, **probe_options):
    """The text-only baseline of self_reference_content: `make_text_probe` on the completion's token
    ids, same labels and grouped folds; one row per model and label (no layer)."""
    task = "self_reference_text_only"
    if extra_labels is None or tokens is None:
        return not_estimable(task, "no self-reference labels or no completion tokens given")[0]
    rows = []
    for column, code in _labelled(meta, extra_labels).items():
        for m in meta["model"].unique():
            mask = (meta["model"] == m).to_numpy() & ~np.isnan(code)
            result = probe(np.asarray(tokens)[mask], code[mask] >= 1, meta["prompt_id"].to_numpy()[mask],
                           estimator=make_text_probe(), **probe_options)
            rows.append({"task": task, "subset": f"model={m}, label={column}", **result, "p_holm": result.get("p_value")})
    return pd.DataFrame(rows) if rows else not_estimable(task, "extra_labels has no label column")[0]


def probe_tasks(features: Mapping[int, np.ndarray], meta: pd.DataFrame, extra_labels: pd.DataFrame | None = None,
                tokens: ArrayLike | None = None, pre_generation: Mapping[int, np.ndarray] | None = None,
                **probe_options: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's probes over every hidden-state index: (table with TABLE_COLUMNS, the held-out
    layer selection of each task and subset with SELECTION_COLUMNS).

    - base_vs_instruct: variant, within each base/instruct pair (same family and size: a shared
      residual basis); in the native frame and, when the meta has shared-frame rows, on identical
      prompt text (subsets 'shared_frame: ...'). Models of different families are never pooled;
    - prompt_type: the 4 prompt types, within each model;
    - self_reference_content: code >= 1 for each label column of `extra_labels` (a table keyed by
      model, prompt_id, rep, e.g. keyword_self_reference 0-3), within each model; completions
      without a label are left out;
    - self_reference_text_only: the same labels from the completion's token ids alone (`tokens`,
      row-aligned strings of ids; no layer);
    - self_reference_pre_generation: the same labels from `pre_generation` (features of the
      prompt's last position, row-aligned), before any generated token.
    Folds are grouped by prompt. A task without data is one row with estimable False and a reason.
    """
    missing = [k for k in LABEL_KEYS if extra_labels is not None and k not in extra_labels]
    if missing:
        raise InputError(f"self-reference labels lack key columns {missing}")
    per_model = [(f"model={m}", meta["model"] == m) for m in meta["model"].unique()]
    parts = [
        run_subsets("base_vs_instruct", _pair_subsets(meta), features, meta, "variant", NO_PAIR, **probe_options),
        run_subsets("prompt_type", per_model, features, meta, "prompt_type", "no completions", **probe_options),
        _self_reference("self_reference_content", features, meta, extra_labels, **probe_options),
    ]
    if pre_generation is not None:
        parts.append(_self_reference("self_reference_pre_generation", pre_generation, meta, extra_labels, **probe_options))
    tables, selections = zip(*parts)
    table = pd.concat([*tables, _text_only(tokens, meta, extra_labels, **probe_options)], ignore_index=True)
    return table.reindex(columns=TABLE_COLUMNS), pd.concat(selections, ignore_index=True).reindex(columns=SELECTION_COLUMNS)
