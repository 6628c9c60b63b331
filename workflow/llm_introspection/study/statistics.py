"""Statistics of the core study: bootstrap CIs, effect sizes, Holm, mixed models, agreement, scaling.

The input is a long table, one row per completion, with columns `model`, `family`, `size_b`,
`variant` ('base' | 'instruct'), `prompt_id`, `prompt_type`, `rep` and one numeric column per
score dimension. Missing scores (NaN) are left out. Completions are pooled as independent
observations in the group comparisons here (the original study's numbers, kept for comparison);
clustered.py infers the same comparisons at model pairs and prompts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pingouin
import statsmodels.formula.api as smf
from scipy.stats import mannwhitneyu, pearsonr, permutation_test, spearmanr
from sklearn.metrics import cohen_kappa_score

from ..prompts import PROMPT_TYPES

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMResults

    # Called as statistic(*samples, axis=-1): a value, or values stacked on axis 0.
    Statistic = Callable[..., np.ndarray | float]

VARIANTS = ("base", "instruct")
# Resampled values per sample and bootstrap chunk: bounds memory at ~32 MiB per array.
MAX_RESAMPLED_VALUES = 2**22
COMPARISON_STATISTICS = ("diff", "ratio", "cohens_d")
COMPLETION_UNIT = "completion"
COMPARISON_COLUMNS = (
    "comparison", "dimension", "prompt_type", "headline", "families", "families_with_pairs", "unit", "label",
    "n_a", "n_b", "n_units", "n_prompts", "mean_a", "mean_b",
    *(f"{name}{suffix}" for name in COMPARISON_STATISTICS for suffix in ("", "_low", "_high")),
    "test", "test_statistic", "test_df", "mannwhitney_u", "p_value", "p_holm", "reject_holm", "note",
)
MIXED_MODELS = {
    "instruct": "score ~ instruct",
    "instruct_by_prompt_type": "score ~ instruct * C(prompt_type)",
    "instruct_plus_log2_size": "score ~ instruct + log2_size_b",
}


# --- effect statistics, vectorized over the last axis -------------------------------------------

def mean_difference(a: ArrayLike, b: ArrayLike, axis: int = -1) -> np.ndarray | float:
    """mean(a) - mean(b)."""
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def ratio_of_means(mean_a: ArrayLike, mean_b: ArrayLike) -> np.ndarray:
    """mean_a / mean_b; 1 (no difference) where both are 0, +-inf where only mean_b is."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((mean_a == 0) & (mean_b == 0), 1.0, np.divide(mean_a, mean_b))


def standardized_difference(difference: ArrayLike, pooled_variance: ArrayLike) -> np.ndarray:
    """difference / sqrt(pooled_variance); 0 where both are 0 (two constant, equal groups), +-inf where
    only the variance is 0, NaN where the variance is undefined (fewer than 3 values)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((difference == 0) & (pooled_variance == 0), 0.0,
                        np.divide(difference, np.sqrt(pooled_variance)))


def mean_ratio(a: ArrayLike, b: ArrayLike, axis: int = -1) -> np.ndarray:
    """mean(a) / mean(b), with ratio_of_means' values where mean(b) is 0."""
    return ratio_of_means(np.mean(a, axis=axis), np.mean(b, axis=axis))


def cohens_d(a: ArrayLike, b: ArrayLike, axis: int = -1) -> np.ndarray:
    """Cohen's d with the pooled SD (ddof=1); positive when mean(a) > mean(b); 0 for two constant,
    equal groups (see standardized_difference)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n_a, n_b = a.shape[axis], b.shape[axis]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ddof=1 of one value: NaN, and so is d
        pooled_var = ((n_a - 1) * np.var(a, axis=axis, ddof=1) + (n_b - 1) * np.var(b, axis=axis, ddof=1)) / (
            n_a + n_b - 2)
    return standardized_difference(mean_difference(a, b, axis), pooled_var)


def _difference_ratio_d(a, b, axis=-1):
    return np.stack([mean_difference(a, b, axis), mean_ratio(a, b, axis), cohens_d(a, b, axis)])


# --- bootstrap ----------------------------------------------------------------------------------

def _bootstrap_distribution(samples, statistic, n_resamples, seed):
    """`statistic` of `n_resamples` resamples, each sample resampled by its own generator.

    Index arrays are drawn (chunk, n) at a time; the values do not depend on the chunk size.
    """
    generators = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(samples))]
    chunk = max(1, MAX_RESAMPLED_VALUES // max(len(s) for s in samples))
    parts = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        resampled = [s[g.integers(0, len(s), size=(size, len(s)))] for s, g in zip(samples, generators)]
        parts.append(statistic(*resampled, axis=-1))
    return np.concatenate(parts, axis=-1)


def percentile_interval(distribution: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Outward order statistics (no interpolation, so infinite resamples give an infinite bound).

    A statistic undefined (NaN) in any resample has a NaN interval: not estimable, since leaving
    those resamples out would narrow it.
    """
    tail = (1 - confidence) / 2  # np.quantile is NaN where any resample is
    low = np.quantile(distribution, tail, axis=-1, method="lower")
    high = np.quantile(distribution, 1 - tail, axis=-1, method="higher")
    return low, high


def _as_sample(x):
    x = np.asarray(x, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("empty sample")
    return x


def bootstrap_ci(x: ArrayLike, statistic: Statistic, n_resamples: int = 10000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray | float, np.ndarray, np.ndarray]:
    """Percentile bootstrap of a one-sample statistic, called as statistic(x, axis=-1) (e.g. np.mean).

    Returns (estimate, low, high).
    """
    x = _as_sample(x)
    distribution = _bootstrap_distribution([x], statistic, n_resamples, seed)
    return (statistic(x, axis=-1), *percentile_interval(distribution, confidence))


def bootstrap_two_sample_ci(a: ArrayLike, b: ArrayLike, statistic: Statistic, n_resamples: int = 10000,
                            confidence: float = 0.95,
                            seed: int = 0) -> tuple[np.ndarray | float, np.ndarray, np.ndarray]:
    """Percentile bootstrap of statistic(a, b), resampling each group independently.

    `statistic` is called as statistic(a, b, axis=-1), e.g. mean_difference, mean_ratio, cohens_d;
    when it stacks several values on axis 0, estimate, low and high are arrays. Infinite resamples
    (a ratio whose denominator resampled to 0) count, so a bound can be inf; a statistic undefined
    in some resample has a NaN interval.
    Returns (estimate, low, high).
    """
    a, b = _as_sample(a), _as_sample(b)
    distribution = _bootstrap_distribution([a, b], statistic, n_resamples, seed)
    return (statistic(a, b, axis=-1), *percentile_interval(distribution, confidence))


# --- group comparisons --------------------------------------------------------------------------

def compare_groups(a: ArrayLike, b: ArrayLike, label: str = "", n_resamples: int = 10000, seed: int = 0,
                   confidence: float = 0.95) -> dict[str, Any]:
    """Group a vs group b: means, difference, ratio a/b and Cohen's d with bootstrap CIs, Mann-Whitney U."""
    a, b = _as_sample(a), _as_sample(b)
    estimate, low, high = bootstrap_two_sample_ci(a, b, _difference_ratio_d, n_resamples, confidence, seed)
    test = mannwhitneyu(a, b, alternative="two-sided")
    row = {"label": label, "n_a": a.size, "n_b": b.size, "mean_a": float(a.mean()), "mean_b": float(b.mean())}
    for i, name in enumerate(COMPARISON_STATISTICS):
        row |= {name: float(estimate[i]), f"{name}_low": float(low[i]), f"{name}_high": float(high[i])}
    return row | {"test": "Mann-Whitney U", "test_statistic": float(test.statistic),
                  "mannwhitney_u": float(test.statistic), "p_value": float(test.pvalue)}


def holm(pvalues: ArrayLike, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm-Bonferroni adjusted p-values and reject flags; NaN p-values stay NaN and are not counted."""
    reject, adjusted = pingouin.multicomp(np.asarray(pvalues, dtype=float), alpha=alpha, method="holm")
    return adjusted, reject


def families_with_both_variants(table: pd.DataFrame) -> list[str]:
    """Sorted families that have base and instruct completions in `table`."""
    variants = table.groupby("family")["variant"].agg(frozenset)
    return sorted(family for family, present in variants.items() if present >= set(VARIANTS))


def _scores(table, dimension, **selection):
    mask = np.logical_and.reduce([table[column] == value for column, value in selection.items()])
    return table.loc[mask, dimension].dropna().to_numpy(dtype=float)


def _comparison_row(a, b, meta, n_resamples, seed):
    """compare_groups of a and b, or the meta row with a note when a group is empty."""
    if a.size == 0 or b.size == 0:
        return meta | {"n_a": a.size, "n_b": b.size, "note": meta["note"] or "a group has no scores"}
    return meta | compare_groups(a, b, meta["label"], n_resamples, seed)


def _instruct_vs_base_row(table, dimension, prompt_type, n_resamples, seed):
    rows = table[table["prompt_type"] == prompt_type]
    paired = families_with_both_variants(rows)
    rows = rows[rows["family"].isin(paired)]
    headline = "instruct_over_base" if dimension == prompt_type == "self_reference" else ""
    meta = {
        "comparison": "instruct_vs_base", "dimension": dimension, "prompt_type": prompt_type,
        "headline": headline, "families": ", ".join(paired), "families_with_pairs": ", ".join(paired),
        "unit": COMPLETION_UNIT, "label": f"{dimension} on {prompt_type} prompts: instruct vs base (completions)",
        "note": "" if paired else "no family has both base and instruct completions",
    }
    a = _scores(rows, dimension, variant="instruct")
    b = _scores(rows, dimension, variant="base")
    return _comparison_row(a, b, meta, n_resamples, seed)


def _base_self_reference_vs_topic_control_row(table, n_resamples, seed):
    base = table[table["variant"] == "base"]
    meta = {
        "comparison": "self_reference_vs_topic_control_prompts", "dimension": "self_reference",
        "prompt_type": "self_reference vs topic_control", "headline": "self_reference_over_topic_control",
        "families": ", ".join(sorted(base["family"].unique())), "families_with_pairs": np.nan,
        "unit": COMPLETION_UNIT, "label": "base self_reference: self_reference vs topic_control prompts (completions)",
        "note": "" if len(base) else "no base completions",
    }
    a = _scores(base, "self_reference", prompt_type="self_reference")
    b = _scores(base, "self_reference", prompt_type="topic_control")
    return _comparison_row(a, b, meta, n_resamples, seed)


def content_statistics(table: pd.DataFrame, dimensions: Sequence[str], n_resamples: int = 10000, seed: int = 0,
                       base_contrast: bool = True) -> pd.DataFrame:
    """Instruct vs base per (dimension, prompt type), plus (`base_contrast`) the base
    self-reference vs topic-control headline.

    Completions count as independent (`unit` 'completion'), as in the original study; clustered.py
    has the same comparisons at the independent units. Instruct vs base pools the completions of
    the families that have both variants for that prompt type (`families_with_pairs`); without
    any, the row carries NaN statistics and a `note`. The
    `headline` column marks the original study's two ratios (instruct/base self-reference on
    self-reference prompts; base self-reference on self-reference vs topic-control prompts). Holm
    runs over all Mann-Whitney p-values of the table (`p_holm`, `reject_holm` at 0.05).
    """
    present = set(table["prompt_type"].unique())
    prompt_types = [t for t in PROMPT_TYPES if t in present]
    specs = [(d, t) for d in dimensions for t in prompt_types]
    rows = [_instruct_vs_base_row(table, d, t, n_resamples, seed + i) for i, (d, t) in enumerate(specs)]
    if base_contrast and "self_reference" in dimensions:
        rows.append(_base_self_reference_vs_topic_control_row(table, n_resamples, seed + len(specs)))
    result = pd.DataFrame(rows).reindex(columns=list(COMPARISON_COLUMNS))
    adjusted, reject = holm(result["p_value"].to_numpy(dtype=float))
    return result.assign(p_holm=adjusted, reject_holm=reject)


# --- mixed-effects models -----------------------------------------------------------------------

def _model_frame(table, dimension):
    """score, instruct (0/1), prompt_type (topic_control, the control, as reference), log2_size_b, family."""
    data = table[["family", "variant", "prompt_type", "size_b", dimension]].dropna()
    levels = sorted(set(data["prompt_type"]), key=lambda t: (t != "topic_control", t))
    return pd.DataFrame({
        "score": data[dimension].astype(float),
        "instruct": (data["variant"] == "instruct").astype(int),
        "prompt_type": pd.Categorical(data["prompt_type"], categories=levels),
        "log2_size_b": np.log2(data["size_b"].where(data["size_b"] > 0)),
        "family": data["family"],
    })


def _unestimable_reason(data, model):
    """Why `model` cannot be fitted to `data`, or None."""
    families = data["family"].nunique()
    within_family = data.groupby("family")["instruct"].nunique().max() if len(data) else 0
    if families < 2:
        return f"needs at least 2 families, got {families}"
    if data["instruct"].nunique() < 2:
        return "instruct does not vary: only one variant in the data"
    if within_family < 2:
        return "no family has both variants: instruct vs base is confounded with family"
    if model == "instruct_by_prompt_type" and data["prompt_type"].nunique() < 2:
        return "needs at least 2 prompt types"
    if model == "instruct_plus_log2_size":
        if data["log2_size_b"].isna().any():
            return "size_b must be positive"
        if data["log2_size_b"].nunique() < 2:
            return "size_b does not vary"
    return None


def fit_coefficients(result: MixedLMResults) -> dict[str, dict[str, float]]:
    """Per fixed-effect term: coef, se, z, p and the 95% Wald CI (ci_low, ci_high)."""
    terms = result.fe_params.index
    ci = result.conf_int().loc[terms]
    return {
        term: {
            "coef": float(result.fe_params[term]), "se": float(result.bse[term]),
            "z": float(result.tvalues[term]), "p": float(result.pvalues[term]),
            "ci_low": float(ci.loc[term, 0]), "ci_high": float(ci.loc[term, 1]),
        }
        for term in terms
    }


def converged_fit(model: MixedLM) -> tuple[list[str], MixedLMResults] | tuple[None, None]:
    """(optimizers, result) of the first fit that converges to a finite likelihood, else (None, None).

    statsmodels' default gradient optimizers first; Powell and Nelder-Mead next, which converge
    where the gradient ones fail (a family variance near 0) or stop at an infinite likelihood.
    """
    for method in (["bfgs", "lbfgs", "cg"], ["powell", "nm"]):
        result = model.fit(method=method)
        if result.converged and np.isfinite(result.llf):
            return method, result
    return None, None


def _fit_mixed_model(formula, data):
    """Random-intercept (family) MixedLM fit as a dict; warnings are silenced and recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            optimizers, result = converged_fit(smf.mixedlm(formula, data, groups="family"))
        except (np.linalg.LinAlgError, ValueError) as error:
            return {"estimable": False, "reason": f"fit failed: {error}"}
    recorded = [f"{w.category.__name__}: {w.message}" for w in caught]
    if result is None:
        return {"estimable": False, "reason": "did not converge with any optimizer", "warnings": recorded}
    coefficients = fit_coefficients(result)
    if not all(np.isfinite(c["se"]) for c in coefficients.values()):
        return {"estimable": False, "reason": "singular fit: standard errors are not finite", "warnings": recorded}
    return {
        "estimable": True, "formula": formula, "coefficients": coefficients, "converged": True,
        "optimizers": optimizers, "family_variance": float(result.cov_re.iloc[0, 0]),
        "residual_variance": float(result.scale), "n_groups": len(result.model.group_labels),
        "n_obs": int(result.nobs), "warnings": recorded,
    }


def mixed_effects(table: pd.DataFrame, dimension: str) -> dict[str, dict[str, Any]]:
    """MixedLM fits of one score dimension with a random intercept per family.

    Models: `instruct` (score ~ instruct), `instruct_by_prompt_type` (score ~ instruct *
    C(prompt_type), topic_control the reference level) and `instruct_plus_log2_size` (score ~
    instruct + log2(size_b)); instruct is 1 for instruct models. Each entry holds per-term coef,
    se, z, p and 95% CI, or `{"estimable": False, "reason": ...}` when the model cannot be fitted.
    """
    data = _model_frame(table, dimension)
    fits = {}
    for model, formula in MIXED_MODELS.items():
        reason = _unestimable_reason(data, model)
        fits[model] = {"estimable": False, "reason": reason} if reason else _fit_mixed_model(formula, data)
    return fits


# --- coder/judge agreement ----------------------------------------------------------------------

def agreement(keyword_scores: ArrayLike, judge_scores: ArrayLike,
              levels: Sequence[int] = (0, 1, 2, 3)) -> dict[str, float]:
    """Agreement of two raters' integer scores on the same completions (0-3 scale by default).

    Pearson and Spearman correlations, quadratic-weighted Cohen's kappa over `levels`, ICC(2,1)
    (two-way random effects, absolute agreement, single rater: pingouin's ICC(A,1)) with its 95% CI,
    exact and within-one agreement rates.
    """
    keyword, judge = np.asarray(keyword_scores), np.asarray(judge_scores)
    if keyword.shape != judge.shape or keyword.ndim != 1:
        raise ValueError(f"need two 1-d arrays of equal length, got shapes {keyword.shape} and {judge.shape}")
    n = keyword.size
    long = pd.DataFrame({
        "completion": np.tile(np.arange(n), 2), "rater": np.repeat(["keyword", "judge"], n),
        "score": np.concatenate([keyword, judge]).astype(float),
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pearson, spearman = pearsonr(keyword, judge), spearmanr(keyword, judge)
        kappa = cohen_kappa_score(keyword, judge, labels=list(levels), weights="quadratic")
        icc = pingouin.intraclass_corr(long, targets="completion", raters="rater", ratings="score")
    icc2 = icc.set_index("Type").loc["ICC(A,1)"]
    return {
        "n": n,
        "pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
        "spearman_rho": float(spearman.statistic), "spearman_p": float(spearman.pvalue),
        "kappa_quadratic": float(kappa),
        "icc2_1": float(icc2["ICC"]), "icc2_1_low": float(icc2["CI95"][0]), "icc2_1_high": float(icc2["CI95"][1]),
        "exact_agreement": float(np.mean(keyword == judge)),
        "within_one_agreement": float(np.mean(np.abs(keyword - judge) <= 1)),
    }


# --- within-family scaling ----------------------------------------------------------------------

def _sizes_with_both_variants(rows):
    variants = rows.groupby("size_b")["variant"].agg(frozenset)
    return sorted(size for size, present in variants.items() if present >= set(VARIANTS))


def _gap_row(rows, family, size, dimension, n_resamples, seed):
    instruct = _scores(rows, dimension, size_b=size, variant="instruct")
    base = _scores(rows, dimension, size_b=size, variant="base")
    gap, low, high = bootstrap_two_sample_ci(instruct, base, mean_difference, n_resamples, seed=seed)
    return {
        "family": family, "size_b": size, "n_instruct": instruct.size, "n_base": base.size,
        "mean_instruct": float(instruct.mean()), "mean_base": float(base.mean()),
        "gap": float(gap), "gap_low": float(low), "gap_high": float(high),
    }


def spearman_exact(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Spearman's rho, its two-sided exact permutation p over all n! orderings of y (scipy's
    permutation_test; at n = 3 a perfect rho has p = 1/3, where spearmanr's t approximation says 0)
    and the smallest p attainable at this n, 2/n!. rho and p are NaN when x or y is constant."""
    def rho(y_order):
        return spearmanr(x, y_order).statistic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: rho is NaN
        observed = rho(y)
        if np.isnan(observed):
            return np.nan, np.nan, 2 / math.factorial(len(x))
        test = permutation_test((np.asarray(y, dtype=float),), rho, permutation_type="pairings",
                                n_resamples=np.inf, alternative="two-sided")
    return float(observed), float(test.pvalue), 2 / math.factorial(len(x))


def scaling(table: pd.DataFrame, dimension: str, n_resamples: int = 10000,
            seed: int = 0) -> dict[str, pd.DataFrame]:
    """Instruct - base gap per size within each family, and its Spearman correlation with size.

    Uses the sizes of a family that have both variants; a family with fewer than 2 such sizes is
    skipped with a reason. The trend's p is exact (spearman_exact), so it can never fall below
    `spearman_p_min` = 2/n! (1 with 2 sizes, 1/3 with 3, 1/12 with 4): a trend over few sizes is a
    direction, not a test. Returns {"gaps": DataFrame, "trends": DataFrame, "skipped": DataFrame
    (family, reason)}.
    """
    gaps, trends, skipped = [], [], []
    for family, rows in table.dropna(subset=[dimension]).groupby("family", sort=True):
        sizes = _sizes_with_both_variants(rows)
        if len(sizes) < 2:
            skipped.append({"family": family, "reason": f"{len(sizes)} size(s) with both base and instruct, need 2"})
            continue
        family_gaps = [
            _gap_row(rows, family, size, dimension, n_resamples, seed + len(gaps) + i) for i, size in enumerate(sizes)]
        gaps += family_gaps
        rho, p, p_min = spearman_exact(sizes, [g["gap"] for g in family_gaps])
        trends.append({"family": family, "n_sizes": len(sizes), "spearman_rho": rho, "spearman_p": p,
                       "spearman_p_min": p_min})
    return {
        "gaps": pd.DataFrame(gaps, columns=["family", "size_b", "n_instruct", "n_base", "mean_instruct",
                                            "mean_base", "gap", "gap_low", "gap_high"]),
        "trends": pd.DataFrame(trends, columns=["family", "n_sizes", "spearman_rho", "spearman_p", "spearman_p_min"]),
        "skipped": pd.DataFrame(skipped, columns=["family", "reason"]),
    }
