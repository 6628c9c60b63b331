"""Statistics of the self-knowledge evaluations, at the unit of their items (questions, tasks,
prompts): a mean over items with a percentile bootstrap CI over items, never over samples of one
item. Per model, and per comparison of a model with its base (design.comparisons): the
difference paired by item, a bootstrap CI and a t-test over items. p-values are Holm-adjusted
within each evaluation's family, named in the `family` column: one (model or comparison, answer
pair) for answer_shift, one (model or comparison, detection data variant) for detection (its
`pair` column names the variant whose data the trials are: a base model is read on each of its
variants' data), one model or comparison for the others.

Every table has the columns of COLUMNS, one row per (model or comparison, measure, subset).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import ttest_1samp, ttest_ind

from ..injection.statistics import d_prime_row, rate_row
from ..storage import read_json, versions, write_csv, write_json
from ..study.statistics import bootstrap_ci, bootstrap_two_sample_ci, holm, mean_difference
from .design import comparisons

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

COLUMNS = ("evaluation", "model", "base", "comparison", "pair", "subset", "measure", "estimate", "low", "high",
           "n_items", "unit", "p_value", "p_holm", "family")
UNITS = {"answer_shift": "question", "self_prediction": "task", "calibration": "prompt",
         "length_prediction": "prompt", "detection": "trial"}
NAN = float("nan")
MIN_ITEMS = 3  # fewer items: the estimate only, no CI and no test (a bootstrap of 2 items is not an interval)


def mean_ci(values: ArrayLike, seed: int = 0, n_resamples: int = 2000) -> tuple[float, float, float, int]:
    """Mean of per-item values and its bootstrap CI over items (NaN values dropped); the bounds
    are NaN with fewer than MIN_ITEMS items."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return NAN, NAN, NAN, 0
    if values.size < MIN_ITEMS:
        return float(values.mean()), NAN, NAN, int(values.size)
    estimate, low, high = bootstrap_ci(values, np.mean, n_resamples=n_resamples, seed=seed)
    return float(estimate), float(low), float(high), int(values.size)


def one_sample_p(values: ArrayLike) -> float:
    """Two-sided one-sample t-test of the per-item values against 0 (NaN: fewer than MIN_ITEMS
    items, or every value 0; 0 when every value is the same other number)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size < MIN_ITEMS or np.ptp(values) == 0:
        return NAN if values.size < MIN_ITEMS or values[0] == 0 else 0.0
    return float(ttest_1samp(values, 0.0).pvalue)


def group_difference(a: ArrayLike, b: ArrayLike, seed: int = 0, n_resamples: int = 2000) -> dict:
    """mean(a) - mean(b) over two independent sets of items: bootstrap CI resampling each set,
    Welch's t-test (the estimate only with fewer than MIN_ITEMS items in a set)."""
    a, b = (np.asarray(x, dtype=float) for x in (a, b))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size < MIN_ITEMS or b.size < MIN_ITEMS:
        estimate = float(a.mean() - b.mean()) if a.size and b.size else NAN
        return {"estimate": estimate, "low": NAN, "high": NAN, "n_items": int(a.size + b.size), "p_value": NAN}
    estimate, low, high = bootstrap_two_sample_ci(a, b, mean_difference, n_resamples=n_resamples, seed=seed)
    p = float(ttest_ind(a, b, equal_var=False).pvalue) if np.ptp(np.r_[a, b]) > 0 else NAN
    return {"estimate": float(estimate), "low": float(low), "high": float(high), "n_items": int(a.size + b.size),
            "p_value": p}


def _row(measure, values, subset="", seed=0, n_resamples=2000, test=False):
    estimate, low, high, n = mean_ci(values, seed, n_resamples)
    return {"measure": measure, "subset": subset, "estimate": estimate, "low": low, "high": high, "n_items": n,
            "p_value": one_sample_p(values) if test else NAN}


def _paired(variant: pd.DataFrame, base: pd.DataFrame, keys, value):
    """Per item: variant's value minus base's, on the items both have."""
    joined = variant.merge(base, on=list(keys), suffixes=("", "_base"))
    return (joined[value].astype(float) - joined[f"{value}_base"].astype(float)).to_numpy(), joined


# --- per evaluation: rows of one model, and of one comparison -----------------------------------

def answer_shift_rows(records: pd.DataFrame, base: pd.DataFrame | None, seed: int, n_resamples: int) -> list[dict]:
    """Per answer pair. One model: mean P(A) per category and group, suggestive - control with a
    Welch test. A comparison: the shift (variant - base) of P(A) per category, paired by question,
    and the headline suggestive shift - control shift over questions."""
    rows = []
    for pair, own in records.groupby("pair", sort=False):
        if base is None:
            data, value = own, "p_a"
        else:
            diffs, data = _paired(own, base[base["pair"] == pair], ("item", "pair"), "p_a")
            data = data.assign(shift=diffs)
            value = "shift"
        name = "p_a" if base is None else "shift_p_a"
        for category, group in data.groupby("category", sort=False):
            rows.append({"pair": pair, **_row(name, group[value], category, seed, n_resamples, test=base is not None)})
        for group_name, group in data.groupby("group"):
            rows.append({"pair": pair, **_row(name, group[value], group_name, seed, n_resamples)})
        rows.append({"pair": pair, "measure": f"{name}_suggestive_minus_control", "subset": "headline",
                     **group_difference(data.loc[data["group"] == "suggestive", value],
                                        data.loc[data["group"] == "control", value], seed, n_resamples)})
    return rows


def _mode_hits(actual: pd.Series) -> np.ndarray:
    """Per item: 1 when the actual property equals the most common one (the baseline's guess)."""
    mode = actual.mode().sort_values().iloc[0]
    return (actual == mode).astype(float).to_numpy()


def self_prediction_rows(records: pd.DataFrame, base: pd.DataFrame | None, seed: int, n_resamples: int) -> list[dict]:
    """Per property and over all properties (per task: mean over its properties): accuracy against
    the actual answer's property, the most-common-property baseline and accuracy - baseline,
    paired by task; a comparison: the accuracy difference paired by (task, property)."""
    scored = records[records["correct"].notna()].assign(correct=lambda f: f["correct"].astype(float))
    rows = []
    if base is not None:
        other = base[base["correct"].notna()].assign(correct=lambda f: f["correct"].astype(float))
        diffs, joined = _paired(scored, other, ("item", "property"), "correct")
        joined = joined.assign(diff=diffs)
        for prop, group in joined.groupby("property", sort=False):
            rows.append(_row("accuracy_difference", group["diff"], prop, seed, n_resamples, test=True))
        per_task = joined.groupby("item")["diff"].mean()
        return rows + [_row("accuracy_difference", per_task, "all", seed, n_resamples, test=True)]
    if scored.empty:  # no answer had any of the properties asked (a model that writes nothing readable)
        return [_row(m, [], "all") for m in ("accuracy", "baseline_accuracy", "accuracy_minus_baseline")]
    pooled = []
    for prop, group in scored.groupby("property", sort=False):
        baseline = _mode_hits(group["actual"])
        pooled.append(group.assign(baseline=baseline))
        rows += [_row("accuracy", group["correct"], prop, seed, n_resamples),
                 _row("baseline_accuracy", baseline, prop, seed, n_resamples),
                 _row("accuracy_minus_baseline", group["correct"].to_numpy() - baseline, prop, seed, n_resamples,
                      test=True)]
    if pooled:
        per_task = pd.concat(pooled).groupby("item")[["correct", "baseline"]].mean()
        rows += [_row("accuracy", per_task["correct"], "all", seed, n_resamples),
                 _row("baseline_accuracy", per_task["baseline"], "all", seed, n_resamples),
                 _row("accuracy_minus_baseline", per_task["correct"] - per_task["baseline"], "all", seed, n_resamples,
                      test=True)]
    return rows


CALIBRATION_MEASURES = ("kl", "top5_overlap", "top1_match")


def calibration_rows(records: pd.DataFrame, base: pd.DataFrame | None, seed: int, n_resamples: int) -> list[dict]:
    """KL(model || verbal report) in nats, top-5 overlap, top-1 match: means over prompts; a
    comparison: their differences paired by prompt."""
    if base is None:
        return [_row(m, records[m].astype(float), "", seed, n_resamples) for m in CALIBRATION_MEASURES]
    rows = []
    for m in CALIBRATION_MEASURES:
        diffs, _ = _paired(records, base, ("item",), m)
        rows.append(_row(f"{m}_difference", diffs, "", seed, n_resamples, test=True))
    return rows


def length_prediction_rows(records: pd.DataFrame, base: pd.DataFrame | None, seed: int, n_resamples: int) -> list[dict]:
    """Mean absolute error of the predicted length (words; prompts without a number left out), the
    error of predicting every prompt's median length, MAE - baseline paired by prompt, first-word
    accuracy; a comparison: the differences of MAE and first-word accuracy paired by prompt."""
    records = records.assign(first_word_correct=records["first_word_correct"].astype(float))
    if base is not None:
        base = base.assign(first_word_correct=base["first_word_correct"].astype(float))
        return [_row(f"{m}_difference", _paired(records, base, ("item",), m)[0], "", seed, n_resamples, test=True)
                for m in ("abs_error", "first_word_correct")]
    baseline = (records["actual_words"] - records["actual_words"].median()).abs().astype(float)
    answered = records["abs_error"].notna()
    return [_row("mae", records["abs_error"], "", seed, n_resamples),
            _row("baseline_mae", baseline[answered], "", seed, n_resamples),
            _row("mae_minus_baseline", (records["abs_error"] - baseline)[answered], "", seed, n_resamples, test=True),
            _row("first_word_accuracy", records["first_word_correct"], "", seed, n_resamples),
            {"measure": "unanswered_share", "subset": "", "estimate": float((~answered).mean()), "low": NAN,
             "high": NAN, "n_items": int(len(records)), "p_value": NAN}]


def detection_statistics(records: pd.DataFrame) -> pd.DataFrame:
    """Steering detection of one model from per-trial records (columns split, magnitude,
    layer_range, steered, said_yes): per split, accuracy (chance 0.5, binomial test) and the
    false-positive rate on unsteered trials; per (split, magnitude, layer range) cell the hit rate
    (Wilson) and d' against the split's unsteered trials. Holm over the accuracy tests (family:
    the model's detection)."""
    rows = []
    for split, trials in records.groupby("split", sort=False):
        steered, unsteered = trials[trials["steered"]], trials[~trials["steered"]]
        correct = trials["said_yes"] == trials["steered"]
        rows.append({"subset": split, **rate_row("accuracy", correct, chance=0.5)})
        rows.append({"subset": split, **rate_row("false_positive_rate", unsteered["said_yes"])})
        for (magnitude, layers), cell in steered.groupby(["magnitude", "layer_range"], sort=True):
            subset = f"{split} magnitude={magnitude:g} layers={layers}"
            rows.append({"subset": subset, **rate_row("hit_rate", cell["said_yes"])})
            rows.append({"subset": subset, **d_prime_row("d_prime", cell["said_yes"], unsteered["said_yes"])})
    table = pd.DataFrame(rows).rename(columns={"n": "n_items"})
    tested = table["p_value"].notna()
    table["p_holm"] = NAN
    if tested.any():
        table.loc[tested, "p_holm"] = holm(table.loc[tested, "p_value"].to_numpy())[0]
    return table


DETECTION_KEYS = ("pair", "split", "index")


def detection_rows(records: pd.DataFrame, base: pd.DataFrame | None, seed: int, n_resamples: int) -> list[dict]:
    """Per detection data variant (`pair`: a base model is read on the data of each of its
    variants). One model: detection_statistics. A comparison: per split, the differences (variant
    - base) of correct (said_yes == steered) over all trials, of said_yes on steered trials (hit
    rate) and on unsteered ones (false-positive rate), paired by trial (pair, split, index), with
    a bootstrap CI and a t-test over trials; only the base's trials on the variant's data pair."""
    records = records.assign(steered=records["steered"].astype(bool), said_yes=records["said_yes"].astype(bool))
    rows = []
    if base is None:
        for pair, own in records.groupby("pair", sort=False):
            table = detection_statistics(own)
            rows += [{"pair": pair, **r} for r in table.drop(columns=["p_holm"]).to_dict("records")]
        return rows
    base = base.assign(steered=base["steered"].astype(bool), said_yes=base["said_yes"].astype(bool))
    joined = records.merge(base, on=list(DETECTION_KEYS), suffixes=("", "_base"))
    for (pair, split), trials in joined.groupby(["pair", "split"], sort=False):
        correct = (trials["said_yes"] == trials["steered"]).astype(float).to_numpy()
        correct_base = (trials["said_yes_base"] == trials["steered_base"]).astype(float).to_numpy()
        said, said_base = trials["said_yes"].astype(float).to_numpy(), trials["said_yes_base"].astype(float).to_numpy()
        steered = trials["steered"].to_numpy()
        for measure, diffs in (("accuracy_difference", correct - correct_base),
                               ("hit_rate_difference", (said - said_base)[steered]),
                               ("false_positive_rate_difference", (said - said_base)[~steered])):
            rows.append({"pair": pair, **_row(measure, diffs, split, seed, n_resamples, test=True)})
    return rows


ROWS = {"answer_shift": answer_shift_rows, "self_prediction": self_prediction_rows,
        "calibration": calibration_rows, "length_prediction": length_prediction_rows, "detection": detection_rows}
# Evaluations whose comparisons are LoRA model vs base only: a base/instruct pair read each its own
# detection data, so their trials do not pair.
LORA_COMPARISONS_ONLY = ("detection",)


def _with_holm(rows: list[dict], family: str) -> list[dict]:
    p = np.array([r.get("p_value", NAN) for r in rows], dtype=float)
    tested = ~np.isnan(p)
    adjusted = np.full(p.shape, NAN)
    if tested.any():
        adjusted[tested] = holm(p[tested])[0]
    return [r | {"p_value": pv, "p_holm": a, "family": family if t else ""}
            for r, pv, a, t in zip(rows, p, adjusted, tested)]


def evaluation_table(evaluation: str, records: pd.DataFrame, models: dict, seed: int = 0,
                     n_resamples: int = 2000) -> pd.DataFrame:
    """The statistics table of one evaluation: per model, then per comparison with its base."""
    rows_of, unit = ROWS[evaluation], UNITS[evaluation]
    by_model = {name: group for name, group in records.groupby("model", sort=False)}
    blocks = [(name, "", "per_model", frame, None) for name, frame in by_model.items()]
    blocks += [(variant, base, kind, by_model[variant], by_model[base])
               for variant, base, kind in comparisons(models, by_model)
               if kind == "lora_vs_base" or evaluation not in LORA_COMPARISONS_ONLY]
    out = []
    for name, base, kind, frame, base_frame in blocks:
        rows = rows_of(frame, base_frame, seed, n_resamples)
        for pair in dict.fromkeys(r.get("pair", "") for r in rows):
            family = f"{evaluation}: {name}" + (f" vs {base}" if base else "") + (f", pair {pair}" if pair else "")
            members = [r for r in rows if r.get("pair", "") == pair]
            out += [r | {"evaluation": evaluation, "model": name, "base": base, "comparison": kind, "pair": pair,
                         "unit": unit} for r in _with_holm(members, family)]
    return pd.DataFrame(out, columns=list(COLUMNS))


def read_records(paths: Iterable[Path | str]) -> pd.DataFrame:
    """The per-item records of evaluation files, with the model's name."""
    frames = [pd.DataFrame(data["records"]).assign(model=data["model"]["name"])
              for data in map(read_json, paths)]
    return pd.concat(frames, ignore_index=True)


def run_selfknowledge_statistics(inputs: dict, outputs: dict, models: dict, settings: dict) -> None:
    """selfknowledge_statistics: one table per evaluation (selfknowledge_<evaluation>.csv) and a
    summary JSON: which comparisons were made (or that the config has none, so per model only),
    each evaluation's unit and Holm family, and the versions."""
    seed, n_resamples = settings["seed"], settings["bootstrap_resamples"]
    evaluated = sorted({read_json(p)["model"]["name"] for paths in inputs.values() for p in paths})
    found = comparisons(models, evaluated)
    summary = {"comparisons": [{"variant": v, "base": b, "kind": k} for v, b, k in found],
               "comparison_note": ("each model against its base" if found else
                                   "no LoRA model with an evaluated base and no base/instruct pair among the "
                                   "evaluated models: every evaluation is reported per model only"),
               "evaluations": {}, "versions": versions(), "settings": settings}
    for evaluation, paths in inputs.items():
        table = evaluation_table(evaluation, read_records(paths), models, seed, n_resamples)
        write_csv(outputs[evaluation], table)
        summary["evaluations"][evaluation] = {
            "unit": UNITS[evaluation], "rows": len(table),
            "holm_families": sorted(f for f in table["family"].unique() if f),
        }
    write_json(outputs["summary"], summary)
