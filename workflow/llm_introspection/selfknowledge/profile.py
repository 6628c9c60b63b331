"""The introspection profile: one row per model of the config joining every line of work, and
across models the Spearman rank correlation of every two measures with a bootstrap CI over
models (torch-free).

Each measure is one number per model, named for what it is (a sweep's measures are means over
the model's cells, so no cell is picked after the fact); a model a study does not cover has NaN.
A correlation needs MIN_MODELS models with both measures; below that its row says "not
estimable" and why.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr

from ..records import base_instruct_pairs
from ..storage import read_csv, versions, write_csv, write_json

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

MIN_MODELS = 4
EXACT_UP_TO = 7  # models: an exact permutation p up to here (all 7! orderings), scipy's t approximation beyond
CORRELATION_COLUMNS = ("measure_a", "measure_b", "n_models", "spearman_rho", "low", "high", "p_value",
                       "p_value_min", "undefined_resamples", "estimable", "reason")
# (input key, measure, selection, profile column) of the tables the profile reads, mean over rows.
INJECTION_MEASURES = (
    ("injection_detection_logits", "hit_minus_false_alarm", {}, "injection_detection_hit_minus_fa"),
    ("injection_detection_logits", "d_prime", {}, "injection_detection_d_prime"),
    ("injection_forced_identification", "top1_injected_minus_leak", {}, "injection_identification_minus_leak"),
    ("injection_localization", "accuracy", {"question": "locate", "kind": "injected"}, "localization_accuracy"),
)
SELFKNOWLEDGE_MEASURES = (
    ("selfknowledge_answer_shift", "p_a_suggestive_minus_control", "headline", "answer_suggestive_minus_control"),
    ("selfknowledge_answer_shift", "shift_p_a_suggestive_minus_control", "headline", "answer_shift_vs_base"),
    ("selfknowledge_self_prediction", "accuracy_minus_baseline", "all", "self_prediction_minus_baseline"),
    ("selfknowledge_calibration", "kl", "", "calibration_kl"),
    ("selfknowledge_calibration", "top1_match", "", "calibration_top1"),
    ("selfknowledge_length_prediction", "mae_minus_baseline", "", "length_mae_minus_baseline"),
    ("selfknowledge_length_prediction", "first_word_accuracy", "", "length_first_word_accuracy"),
)
# Detection: a model's accuracy on its own variant's held-out trials and its gain over its base on
# them. A base model read on several variants' data has no one accuracy (each variant's answer
# mapping reads its answers differently), so it is NaN there.
DETECTION_MEASURES = (
    ("selfknowledge_detection", "accuracy", "heldout", "detection_heldout_accuracy"),
    ("selfknowledge_detection", "accuracy_difference", "heldout", "detection_heldout_gain_vs_base"),
)


def core_measures(coding: pd.DataFrame, entropy: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """Per model: keyword self-reference on self-reference prompts, the instruct - base gap of it
    within the model's base/instruct pair (on the instruct model's row), first-token entropy at T=1
    (mean over prompt types) and the self-reference-content and prompt-type probes' balanced
    accuracy minus the shuffled-label control (mean over layers)."""
    native = coding[coding["condition"] == "native"]
    own_frame = coding[coding["condition"].isin(["native", "finetuned"])]  # each model in its own frame
    own = own_frame[own_frame["prompt_type"] == "self_reference"].groupby("model")["self_reference"].mean()
    table = pd.DataFrame({"self_reference_keyword": own})
    designs = native.drop_duplicates("model").set_index("model")[["family", "size_b", "variant"]]
    table["instruct_gap_self_reference"] = np.nan
    for base, instruct in base_instruct_pairs(designs.to_dict("index")):
        table.loc[instruct, "instruct_gap_self_reference"] = own.get(instruct, np.nan) - own.get(base, np.nan)
    first = entropy[(entropy["comparison"] == "descriptive") & (entropy["dimension"] == "first_token_entropy_t1")]
    table["first_token_entropy_t1"] = first.groupby("model")["mean_a"].mean()
    estimable = probes[probes["estimable"].astype(bool)] if "estimable" in probes else probes
    for task, column in (("self_reference_content", "probe_self_reference"), ("prompt_type", "probe_prompt_type")):
        rows = estimable[estimable["task"] == task]
        model = rows["subset"].str.extract(r"^model=([^,]+)")[0]
        table[column] = (rows["balanced_accuracy"] - rows["shuffled_control"]).groupby(model).mean()
    return table


def _mean_of(table: pd.DataFrame, measure: str, selection: dict) -> pd.Series:
    rows = table[table["measure"] == measure]
    for key, value in selection.items():
        rows = rows[rows[key] == value] if key in rows else rows.iloc[0:0]
    return rows.groupby("model")["estimate"].mean()


def profile_table(inputs: dict, models: dict) -> pd.DataFrame:
    """One row per model of the config (`models`: name -> entry), every measure a column."""
    coding = pd.concat([read_csv(p) for p in inputs["coding"]], ignore_index=True)
    table = core_measures(coding, read_csv(inputs["entropy"]), read_csv(inputs["probing"]))
    table = table.reindex(list(models))
    for key, measure, selection, column in INJECTION_MEASURES:
        if key in inputs:
            table[column] = _mean_of(read_csv(inputs[key]), measure, selection)
    for key, measure, subset, column in SELFKNOWLEDGE_MEASURES:
        if key in inputs:
            stats = read_csv(inputs[key]).fillna({"subset": "", "pair": ""})
            rows = stats[(stats["measure"] == measure) & (stats["subset"] == subset)]
            first_pair = rows["pair"].iloc[0] if len(rows) else ""
            table[column] = rows[rows["pair"] == first_pair].groupby("model")["estimate"].mean()
    for key, measure, subset, column in DETECTION_MEASURES:
        if key in inputs:
            stats = read_csv(inputs[key]).fillna({"subset": "", "pair": ""})
            rows = stats[(stats["measure"] == measure) & (stats["subset"] == subset)]
            single = rows.groupby("model")["pair"].nunique()
            rows = rows[rows["model"].isin(single[single == 1].index)]
            table[column] = rows.groupby("model")["estimate"].mean()
    design = pd.DataFrame({name: {"family": m["family"], "size_b": m["size_b"], "variant": m["variant"],
                                  "source_kind": m["source"]["kind"], "base": m["source"].get("base", "")}
                           for name, m in models.items()}).T
    return design.join(table).rename_axis("model").reset_index()


def rho_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of x and y (n_rows, n), ties ranked by their mean; NaN
    where a row is constant."""
    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))


def exact_p(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Two-sided permutation p of Spearman's rho over all n! orderings of y, and the smallest p
    this n allows (2/n!)."""
    orders = np.array(list(itertools.permutations(range(len(y)))))
    observed = rho_rows(x[None], y[None])[0]
    null = rho_rows(np.broadcast_to(x, orders.shape), y[orders])
    return float(np.mean(np.abs(null) >= abs(observed) - 1e-12)), 2 / math.factorial(len(y))


def spearman_row(x: ArrayLike, y: ArrayLike, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Spearman's rho of two measures over models, a percentile bootstrap CI over models
    (resamples where rho is undefined, a constant measure, are dropped and counted), and an exact
    permutation p up to EXACT_UP_TO models."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y, n = x[keep], y[keep], int(keep.sum())
    if n < MIN_MODELS:
        return {"n_models": n, "estimable": False,
                "reason": f"not estimable: {n} model(s) with both measures, need at least {MIN_MODELS}"}
    rho = float(rho_rows(x[None], y[None])[0])
    if np.isnan(rho):
        return {"n_models": n, "estimable": False, "reason": "not estimable: a measure is constant over models"}
    index = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    draws = rho_rows(x[index], y[index])
    defined = draws[~np.isnan(draws)]
    tail = (1 - confidence) / 2
    p, p_min = exact_p(x, y) if n <= EXACT_UP_TO else (float(spearmanr(x, y).pvalue), np.nan)
    return {"n_models": n, "spearman_rho": rho, "low": float(np.quantile(defined, tail)) if defined.size else np.nan,
            "high": float(np.quantile(defined, 1 - tail)) if defined.size else np.nan, "p_value": p,
            "p_value_min": p_min, "undefined_resamples": int(np.isnan(draws).sum()), "estimable": True, "reason": ""}


def correlations(profile: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Spearman correlation rows of every two measure columns of the profile."""
    measures = [c for c in profile.columns if c not in ("model", "family", "size_b", "variant", "source_kind", "base")]
    rows = []
    for i, a in enumerate(measures):
        for b in measures[i + 1 :]:
            row = spearman_row(profile[a], profile[b], n_resamples, seed)
            rows.append({"measure_a": a, "measure_b": b, **row})
    return pd.DataFrame(rows).reindex(columns=list(CORRELATION_COLUMNS))


def run_introspection_profile(inputs: dict, outputs: dict, models: dict, settings: dict) -> None:
    """introspection_profile: the profile table, the correlations and a JSON of what went in."""
    profile = profile_table(inputs, models)
    write_csv(outputs["profile"], profile)
    table = correlations(profile, settings["bootstrap_resamples"], settings["seed"])
    write_csv(outputs["correlations"], table)
    write_json(outputs["summary"], {
        "models": list(models), "inputs": sorted(inputs), "min_models": MIN_MODELS,
        "measures": [c for c in profile.columns if c not in ("model", "family", "size_b", "variant", "source_kind",
                                                             "base")],
        "estimable_correlations": int(table["estimable"].fillna(False).astype(bool).sum()) if len(table) else 0,
        "settings": settings, "versions": versions(),
    })
