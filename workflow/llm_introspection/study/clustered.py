"""Inference at the study's independent units: model pairs (or models) crossed with prompts.

The reps of one (model, prompt) share the prompt and the two models of a pair (base and instruct of
one family and size) share family and size, so completions are not independent observations. The
comparisons here keep the completion-level estimates (pooled means, their difference and ratio,
Cohen's d with the pooled completion SD) and put their uncertainty at the units:

- `two_way_bootstrap`: units and prompts are resampled independently with replacement, every unit x
  prompt cell weighted by (draws of its unit) x (draws of its prompt) (Owen's 2007 pigeonhole
  bootstrap), computed from per-cell sums so that B resamples cost a few (B x units) @ (units x
  prompts) products. Its percentile interval is expanded for n, the fewer of units and prompts
  (Hesterberg 2015: tails at Phi(-sqrt(n/(n-1)) t_{n-1, 1-alpha/2})), which undoes the percentile
  bootstrap's narrowness with few clusters.
- `crossed_t_test`: Clark's (1973) min F' written as a t: the mean unit x prompt difference over the
  root of the sum of its by-unit and by-prompt variances, with Satterthwaite's df. The sum counts the
  cell-level noise twice, so the test errs on the conservative side in the crossed design.
- `crossed_mixed_effects`: statsmodels MixedLM with crossed variance components (family, model,
  prompt, prompt x instruct) in one group, the way statsmodels fits crossed random effects.

With fewer than MIN_UNITS units or prompts the rows say why they are not estimable: the percentile
bootstrap cannot reach beyond the most extreme unit, and a t over 2-4 units says little. Pairs of
one family are resampled as independent units: a family's shift of both variants cancels in the
difference, not in the ratio's denominator (checked on simulated tables with two pairs per family).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy.stats import norm
from scipy.stats import t as student_t

from ..prompts import PROMPT_TYPES
from .statistics import (
    COMPARISON_COLUMNS,
    COMPARISON_STATISTICS,
    converged_fit,
    fit_coefficients,
    holm,
    percentile_interval,
    ratio_of_means,
    standardized_difference,
)

MIN_UNITS = 6
PAIR_UNIT = "model_pair x prompt"
MODEL_UNIT = "model x prompt"
TEST = "crossed t (min F'): units and prompts"
VARIANCE_COMPONENTS = {
    "family": "0 + C(family)", "model": "0 + C(model)", "prompt": "0 + C(prompt_id)",
    "prompt_x_instruct": "0 + C(prompt_id):instruct",
}


# --- per-cell sums, resampled -------------------------------------------------------------------

def cell_sums(rows: pd.DataFrame, value: str, unit: str, units: Sequence[Any], prompts: Sequence[str],
              shift: float) -> np.ndarray:
    """(3, units, prompts): count, sum of `value`, and sum of squares of value - shift per unit x prompt
    cell (0 where a cell is empty; rows of other units or prompts are left out). Centring at `shift`
    keeps the variances exact."""
    data = rows[rows[value].notna()]
    unit_code = pd.Index(units).get_indexer(data[unit])
    prompt_code = pd.Index(prompts).get_indexer(data["prompt_id"])
    keep = (unit_code >= 0) & (prompt_code >= 0)
    cell = unit_code[keep].astype(np.int64) * len(prompts) + prompt_code[keep]
    values = data[value].to_numpy(dtype=float)[keep]
    size = len(units) * len(prompts)
    sums = [np.bincount(cell, weights=w, minlength=size) for w in (None, values, (values - shift) ** 2)]
    return np.stack(sums).astype(float).reshape(3, len(units), len(prompts))


def _effects(sums_a: np.ndarray, sums_b: np.ndarray, shift: float) -> np.ndarray:
    """Difference, ratio and Cohen's d (pooled completion SD) of the pooled means, from summed
    (count, sum, centred squares) over leading axes; 0/0 as in statistics.ratio_of_means and
    standardized_difference."""
    (n_a, total_a, squares_a), (n_b, total_b, squares_b) = sums_a, sums_b
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_a, mean_b = total_a / n_a, total_b / n_b
        within = squares_a - n_a * (mean_a - shift) ** 2 + squares_b - n_b * (mean_b - shift) ** 2
        within = np.where(within <= 1e-12 * (squares_a + squares_b), 0.0, within)  # constant groups: exactly 0
        pooled_variance = within / (n_a + n_b - 2)
    difference = mean_a - mean_b
    return np.stack([difference, ratio_of_means(mean_a, mean_b), standardized_difference(difference, pooled_variance)])


def two_way_bootstrap(a: np.ndarray, b: np.ndarray, shift: float, shared_prompts: bool, n_resamples: int,
                      seed: int) -> np.ndarray:
    """(3, n_resamples) difference, ratio and d of a vs b when units and prompts are resampled.

    a, b: cell_sums of the two groups over the same units; `shared_prompts` when both groups have the
    same prompts (one draw of prompts for both), else each group's prompts are drawn on their own.
    """
    rng = np.random.default_rng(seed)

    def draws(k):  # (n_resamples, k): how often each of k clusters is drawn in k draws with replacement
        index = rng.integers(0, k, size=(n_resamples, k)) + k * np.arange(n_resamples)[:, None]
        return np.bincount(index.ravel(), minlength=n_resamples * k).reshape(n_resamples, k).astype(float)

    units = draws(a.shape[1])
    prompts_a = draws(a.shape[2])
    prompts_b = prompts_a if shared_prompts else draws(b.shape[2])
    sums_a = ((units @ a) * prompts_a).sum(axis=-1)  # (3, B, prompts) -> (3, B)
    sums_b = ((units @ b) * prompts_b).sum(axis=-1)
    return _effects(sums_a, sums_b, shift)


def expanded_confidence(confidence: float, n: int) -> float:
    """Nominal level of the expanded percentile interval for n clusters (Hesterberg 2015)."""
    z = np.sqrt(n / (n - 1)) * student_t.ppf(0.5 + confidence / 2, n - 1)
    return float(1 - 2 * norm.sf(z))


# --- the test at the units ----------------------------------------------------------------------

def crossed_t_test(means_a: np.ndarray, means_b: np.ndarray, shared_prompts: bool) -> tuple[float, float, float, float]:
    """(estimate, t, df, two-sided p) for mean(a) - mean(b) from unit x prompt cell means (NaN: empty).

    The estimate is the mean over units of each unit's mean over prompts of a minus that of b. Its
    variance is estimated by the by-unit part (variance of the units' differences / units) plus the
    by-prompt part (paired prompts: variance of the prompts' differences / prompts; else each group's
    variance of prompt means / its prompts), df by Satterthwaite: min F' (Clark 1973) as a t.
    """
    unit_differences = np.nanmean(means_a, axis=1) - np.nanmean(means_b, axis=1)
    prompt_parts = [np.nanmean(means_a - means_b, axis=0)] if shared_prompts else [
        np.nanmean(means_a, axis=0), np.nanmean(means_b, axis=0)]
    parts = [unit_differences, *prompt_parts]
    variances = np.array([np.var(x, ddof=1) / x.size for x in parts])
    dfs = np.array([x.size - 1 for x in parts])
    estimate, total = float(unit_differences.mean()), float(variances.sum())
    if total == 0:
        return estimate, np.copysign(np.inf, estimate) if estimate else 0.0, np.nan, float(estimate == 0)
    t, df = estimate / np.sqrt(total), total**2 / np.sum(variances**2 / dfs)
    return estimate, float(t), float(df), float(2 * student_t.sf(abs(t), df))


# --- comparison rows ----------------------------------------------------------------------------

def _row(a_rows, b_rows, unit, dimension, shared_prompts, n_resamples, seed, confidence):
    """The statistics of one comparison, a_rows vs b_rows clustered by `unit` and prompt, or a note."""
    units = sorted(set(a_rows[unit].unique()) & set(b_rows[unit].unique()))
    a_prompts, b_prompts = (set(rows["prompt_id"].unique()) for rows in (a_rows, b_rows))
    prompts = [sorted(a_prompts & b_prompts)] * 2 if shared_prompts else [sorted(a_prompts), sorted(b_prompts)]
    n_prompts = min(len(p) for p in prompts)
    counts = {"n_a": int(a_rows[dimension].notna().sum()), "n_b": int(b_rows[dimension].notna().sum()),
              "n_units": len(units), "n_prompts": len(set().union(*prompts))}
    if len(units) < MIN_UNITS or n_prompts < MIN_UNITS:
        return counts | {"note": f"not estimable at the unit level: {len(units)} unit(s) and {n_prompts} prompt(s) "
                                 f"per group, the cluster bootstrap and test need at least {MIN_UNITS} of each"}
    shift = float(pd.concat([a_rows[dimension], b_rows[dimension]]).mean())
    a, b = (cell_sums(rows, dimension, unit, units, p, shift) for rows, p in zip((a_rows, b_rows), prompts))
    estimate = _effects(a.sum(axis=(1, 2)), b.sum(axis=(1, 2)), shift)
    distribution = two_way_bootstrap(a, b, shift, shared_prompts, n_resamples, seed)
    low, high = percentile_interval(distribution, expanded_confidence(confidence, min(len(units), n_prompts)))
    with np.errstate(divide="ignore", invalid="ignore"):
        _, t, df, p = crossed_t_test(a[1] / a[0], b[1] / b[0], shared_prompts)
    row = counts | {"n_a": int(a[0].sum()), "n_b": int(b[0].sum()),
                    "mean_a": float(a[1].sum() / a[0].sum()), "mean_b": float(b[1].sum() / b[0].sum()),
                    "test": TEST, "test_statistic": t, "test_df": df, "p_value": p, "note": ""}
    for i, name in enumerate(COMPARISON_STATISTICS):
        row |= {name: float(estimate[i]), f"{name}_low": float(low[i]), f"{name}_high": float(high[i])}
    return row


def _pairs(rows):
    """The rows of the family x size cells that have both variants, with a `pair` number per cell."""
    cells = rows.groupby(["family", "size_b"])
    rows = rows[cells["variant"].transform("nunique").to_numpy() == 2]
    return rows.assign(pair=rows.groupby(["family", "size_b"]).ngroup())


def _instruct_vs_base_row(table, dimension, prompt_type, n_resamples, seed, confidence):
    rows = _pairs(table[(table["prompt_type"] == prompt_type) & table[dimension].notna()])
    families = ", ".join(sorted(rows["family"].unique()))
    meta = {
        "comparison": "instruct_vs_base", "dimension": dimension, "prompt_type": prompt_type,
        "headline": "instruct_over_base" if dimension == prompt_type == "self_reference" else "",
        "families": families, "families_with_pairs": families, "unit": PAIR_UNIT,
        "label": f"{dimension} on {prompt_type} prompts: instruct vs base ({PAIR_UNIT})",
    }
    if rows.empty:
        return meta | {"n_a": 0, "n_b": 0, "n_units": 0,
                       "note": "not estimable at the model-pair level: no family has both base and "
                                             "instruct completions at one size"}
    return meta | _row(rows[rows["variant"] == "instruct"], rows[rows["variant"] == "base"], "pair", dimension,
                       True, n_resamples, seed, confidence)


def _base_self_reference_vs_topic_control_row(table, n_resamples, seed, confidence):
    base = table[(table["variant"] == "base") & table["self_reference"].notna()]
    meta = {
        "comparison": "self_reference_vs_topic_control_prompts", "dimension": "self_reference",
        "prompt_type": "self_reference vs topic_control", "headline": "self_reference_over_topic_control",
        "families": ", ".join(sorted(base["family"].unique())), "families_with_pairs": np.nan, "unit": MODEL_UNIT,
        "label": f"base self_reference: self_reference vs topic_control prompts ({MODEL_UNIT})",
    }
    a, b = (base[base["prompt_type"] == t] for t in ("self_reference", "topic_control"))
    return meta | _row(a, b, "model", "self_reference", False, n_resamples, seed, confidence)


def clustered_statistics(table: pd.DataFrame, dimensions: Sequence[str], n_resamples: int = 10000, seed: int = 0,
                         base_contrast: bool = True, confidence: float = 0.95) -> pd.DataFrame:
    """content_statistics' comparisons at the units, in its columns (`unit` names the units).

    Instruct vs base per (dimension, prompt type) over model pairs x prompts; the base self-reference
    vs topic-control headline over base models x prompts (prompts nested in their type). Each row
    has the pooled estimates with two-way bootstrap CIs and the crossed t-test's p; Holm runs over
    this table's p-values.
    """
    present = set(table["prompt_type"].unique())
    prompt_types = [t for t in PROMPT_TYPES if t in present]
    specs = [(d, t) for d in dimensions for t in prompt_types]
    rows = [_instruct_vs_base_row(table, d, t, n_resamples, seed + i, confidence) for i, (d, t) in enumerate(specs)]
    if base_contrast and "self_reference" in dimensions:
        rows.append(_base_self_reference_vs_topic_control_row(table, n_resamples, seed + len(specs), confidence))
    result = pd.DataFrame(rows).reindex(columns=list(COMPARISON_COLUMNS))
    adjusted, reject = holm(result["p_value"].to_numpy(dtype=float))
    return result.assign(p_holm=adjusted, reject_holm=reject)


# --- mixed model with crossed random effects ----------------------------------------------------

def crossed_mixed_effects(table: pd.DataFrame, dimension: str) -> dict[str, dict[str, Any]]:
    """{"instruct_crossed": fit} of score ~ instruct over the model pairs' (model, prompt) cell means.

    Random effects are crossed variance components: family, model (so each pair's instruct - base
    gap varies), prompt, and prompt x instruct (each prompt's own gap); statsmodels fits crossed
    effects as variance components of one group. The Wald CI of `instruct` then rests on the models
    and prompts, not on completions. Fitted to cell means: with equal reps per cell they carry all
    the information on `instruct` and the variance components above the completion (the residual
    is then the cell mean's), and statsmodels' one-group fit takes minutes on the completions of
    the seed study, seconds on its 640 cells. Same keys as mixed_effects' fits.
    """
    rows = _pairs(table.dropna(subset=[dimension]))
    n_pairs = rows["pair"].nunique()
    if n_pairs < MIN_UNITS:
        return {"instruct_crossed": {"estimable": False,
                                     "reason": f"{n_pairs} model pair(s) with both variants, need {MIN_UNITS}"}}
    cells = rows.groupby(["family", "model", "variant", "prompt_id"], as_index=False, observed=True)[dimension].mean()
    data = cells.assign(score=cells[dimension].astype(float), instruct=(cells["variant"] == "instruct").astype(int),
                        one=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = smf.mixedlm("score ~ instruct", data, groups="one", re_formula="0", vc_formula=VARIANCE_COMPONENTS)
        optimizers, result = converged_fit(model)
    recorded = [f"{w.category.__name__}: {w.message}" for w in caught]
    if result is None:
        return {"instruct_crossed": {"estimable": False, "reason": "did not converge with any optimizer",
                                     "warnings": recorded}}
    return {"instruct_crossed": {
        "estimable": True, "formula": "score ~ instruct", "data": "(model, prompt) cell means of the model pairs",
        "random_effects": list(VARIANCE_COMPONENTS), "coefficients": fit_coefficients(result), "converged": True,
        "optimizers": optimizers, "variance_components": dict(zip(model.exog_vc.names, map(float, result.vcomp))),
        "residual_variance": float(result.scale), "n_pairs": n_pairs, "n_obs": int(result.nobs), "warnings": recorded,
    }}
