"""The study statistics against independent references, planted effects and null data."""

import warnings

import numpy as np
import pandas as pd
import pingouin
import pytest
import scipy.stats
import statsmodels.formula.api as smf
from sklearn.metrics import cohen_kappa_score
from statsmodels.tools.sm_exceptions import ConvergenceWarning
from statsmodels.stats.multitest import multipletests

from llm_introspection.study import statistics
from llm_introspection.prompts import PROMPT_TYPES
from llm_introspection.study.statistics import (
    agreement, bootstrap_ci, bootstrap_two_sample_ci, cohens_d, compare_groups, content_statistics, holm, mean_difference, mean_ratio, mixed_effects, scaling,
)
from llm_introspection.study.synthetic import study_table

INSTRUCT_EFFECT = 0.8


def single_variant_table():
    """The default study's shape: family A has only a base model, family B only an instruct model."""
    table = study_table(0, families=2, sizes=(1.0,), prompts_per_type=2)
    keep = ((table["family"] == "F0") & (table["variant"] == "base")) | (
        (table["family"] == "F1") & (table["variant"] == "instruct"))
    return table[keep].replace({"family": {"F0": "A", "F1": "B"}})


# --- statistics against references --------------------------------------------------------------

@pytest.fixture
def two_groups():
    rng = np.random.default_rng(7)
    return rng.gamma(4.0, 1.0, 80), rng.gamma(2.0, 1.0, 55)


def test_cohens_d_matches_pingouin_and_vectorizes(two_groups):
    a, b = two_groups
    assert cohens_d(a, b) == pytest.approx(pingouin.compute_effsize(a, b, eftype="cohen"), rel=1e-12)
    assert cohens_d(b, a) == pytest.approx(-cohens_d(a, b))
    stacked = cohens_d(np.stack([a, a[::-1] * 2]), np.stack([b, b]))
    assert stacked[1] == pytest.approx(pingouin.compute_effsize(a[::-1] * 2, b, eftype="cohen"), rel=1e-12)


def test_compare_groups_matches_scipy_and_numpy(two_groups):
    a, b = two_groups
    row = compare_groups(a, b, "a vs b", n_resamples=2000, seed=1)
    reference = scipy.stats.mannwhitneyu(a, b, alternative="two-sided")
    assert (row["mannwhitney_u"], row["p_value"]) == pytest.approx((reference.statistic, reference.pvalue))
    assert (row["n_a"], row["n_b"], row["label"]) == (80, 55, "a vs b")
    assert row["diff"] == pytest.approx(a.mean() - b.mean())
    assert row["ratio"] == pytest.approx(a.mean() / b.mean())
    for name in statistics.COMPARISON_STATISTICS:
        assert row[f"{name}_low"] < row[name] < row[f"{name}_high"]


def test_holm_matches_statsmodels_and_passes_nan_through():
    pvalues = np.array([0.001, np.nan, 0.04, 0.012, 0.3, np.nan, 0.02])
    adjusted, reject = holm(pvalues, alpha=0.05)
    finite = ~np.isnan(pvalues)
    expected_reject, expected, _, _ = multipletests(pvalues[finite], alpha=0.05, method="holm")
    np.testing.assert_allclose(adjusted[finite], expected)
    np.testing.assert_array_equal(reject[finite], expected_reject)
    assert np.isnan(adjusted[~finite]).all() and not reject[~finite].any()


def assert_same_interval(ours, reference):
    """Two independent 10,000-resample runs: a 2.5% bound's Monte Carlo SE is ~1% of the CI width."""
    width = reference.high - reference.low
    assert ours == pytest.approx((reference.low, reference.high), abs=0.05 * width)


def test_bootstrap_ci_matches_scipy_percentile(two_groups):
    a, _ = two_groups
    estimate, low, high = bootstrap_ci(a, np.mean, n_resamples=10000, seed=3)
    reference = scipy.stats.bootstrap((a,), np.mean, n_resamples=10000, method="percentile",
                                      rng=np.random.default_rng(3)).confidence_interval
    assert estimate == pytest.approx(a.mean())
    assert_same_interval((low, high), reference)


@pytest.mark.parametrize("statistic", [mean_difference, mean_ratio, cohens_d])
def test_two_sample_bootstrap_matches_scipy_percentile(two_groups, statistic):
    a, b = two_groups
    estimate, low, high = bootstrap_two_sample_ci(a, b, statistic, n_resamples=10000, seed=4)
    reference = scipy.stats.bootstrap((a, b), statistic, n_resamples=10000, method="percentile",
                                      rng=np.random.default_rng(4)).confidence_interval
    assert estimate == pytest.approx(statistic(a, b))
    assert_same_interval((low, high), reference)


def test_bootstrap_is_reproducible_and_independent_of_chunking(two_groups, monkeypatch):
    a, b = two_groups
    first = bootstrap_two_sample_ci(a, b, cohens_d, n_resamples=3000, seed=11)
    assert bootstrap_two_sample_ci(a, b, cohens_d, n_resamples=3000, seed=11) == first
    assert bootstrap_two_sample_ci(a, b, cohens_d, n_resamples=3000, seed=12) != first
    monkeypatch.setattr(statistics, "MAX_RESAMPLED_VALUES", 1000)
    assert bootstrap_two_sample_ci(a, b, cohens_d, n_resamples=3000, seed=11) == first


def test_ratio_bootstrap_with_zero_denominator_resamples():
    a, b = np.ones(20), np.r_[np.zeros(19), 1.0]  # about a third of the resamples of b are all 0
    estimate, low, high = bootstrap_two_sample_ci(a, b, mean_ratio, n_resamples=2000, seed=0)
    assert estimate == pytest.approx(20.0) and np.isfinite(low) and high == np.inf
    assert bootstrap_two_sample_ci(np.zeros(5), np.zeros(5), mean_ratio, n_resamples=100) == (1.0, 1.0, 1.0)


def test_agreement_matches_references():
    rng = np.random.default_rng(5)
    keyword = rng.choice([0, 1, 3], size=120)  # level 2 never used: kappa must still weight on 0-3
    judge = np.where(rng.random(120) < 0.3, rng.choice([0, 1, 3], size=120), keyword)
    result = agreement(keyword, judge)
    pearson, spearman = scipy.stats.pearsonr(keyword, judge), scipy.stats.spearmanr(keyword, judge)
    assert (result["pearson_r"], result["pearson_p"]) == pytest.approx((pearson.statistic, pearson.pvalue))
    assert (result["spearman_rho"], result["spearman_p"]) == pytest.approx((spearman.statistic, spearman.pvalue))
    kappa = cohen_kappa_score(keyword, judge, labels=[0, 1, 2, 3], weights="quadratic")
    assert result["kappa_quadratic"] == pytest.approx(kappa)
    assert kappa != pytest.approx(cohen_kappa_score(keyword, judge, weights="quadratic"))
    assert result["icc2_1"] == pytest.approx(icc2_1_shrout_fleiss(np.column_stack([keyword, judge])))
    assert result["icc2_1_low"] <= result["icc2_1"] <= result["icc2_1_high"]
    assert result["exact_agreement"] == pytest.approx(sum(k == j for k, j in zip(keyword, judge)) / 120)
    assert result["within_one_agreement"] == pytest.approx(sum(abs(k - j) <= 1 for k, j in zip(keyword, judge)) / 120)
    assert result["n"] == 120


def icc2_1_shrout_fleiss(ratings):
    """ICC(2,1) from the two-way ANOVA mean squares (Shrout & Fleiss 1979), targets x raters."""
    n, k = ratings.shape
    grand = ratings.mean()
    ms_rows = k * ((ratings.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    ms_cols = n * ((ratings.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    residual = ratings - ratings.mean(axis=1, keepdims=True) - ratings.mean(axis=0) + grand
    ms_error = (residual**2).sum() / ((n - 1) * (k - 1))
    return (ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n)


MIXED_REFERENCES = {  # our model: a direct formula, the term that matches our `instruct` or `log2_size_b`
    "instruct": ("score ~ instruct", "instruct"),
    "instruct_by_prompt_type": ("score ~ instruct * C(prompt_type, Treatment('topic_control'))", "instruct"),
    "instruct_plus_log2_size": ("score ~ instruct + np.log2(size_b)", "np.log2(size_b)"),
}


def assert_matches_direct_fit(fit, table, model, method):
    formula, term = MIXED_REFERENCES[model]
    data = table.assign(score=table["self_reference"], instruct=(table["variant"] == "instruct").astype(int))
    reference = smf.mixedlm(formula, data, groups=data["family"]).fit(method=method)
    assert reference.converged
    assert fit["estimable"] and fit["converged"], fit
    assert (fit["n_groups"], fit["n_obs"]) == (table["family"].nunique(), len(table))
    ours = fit["coefficients"]["instruct" if term == "instruct" else "log2_size_b"]
    assert ours["coef"] == pytest.approx(reference.fe_params[term], abs=1e-6)
    assert ours["se"] == pytest.approx(reference.bse[term], rel=1e-3)
    assert ours["z"] == pytest.approx(reference.tvalues[term], rel=1e-3)
    assert ours["p"] == pytest.approx(reference.pvalues[term], rel=1e-2, abs=1e-12)
    assert [ours["ci_low"], ours["ci_high"]] == pytest.approx(list(reference.conf_int().loc[term]), abs=1e-3)
    assert fit["family_variance"] == pytest.approx(reference.cov_re.iloc[0, 0], rel=1e-2)


@pytest.mark.parametrize("model", MIXED_REFERENCES)
def test_mixed_effects_matches_direct_statsmodels_fits(model):
    table = study_table(0, families=4, prompts_per_type=4, instruct_effect=INSTRUCT_EFFECT)
    fit = mixed_effects(table, "self_reference")[model]
    assert fit["optimizers"] == ["bfgs", "lbfgs", "cg"]
    assert_matches_direct_fit(fit, table, model, method=None)


def test_mixed_effects_falls_back_to_derivative_free_optimizers():
    table = study_table(8, families=4, prompts_per_type=4, instruct_effect=INSTRUCT_EFFECT)
    data = table.assign(score=table["self_reference"], instruct=(table["variant"] == "instruct").astype(int))
    with pytest.warns(ConvergenceWarning):  # statsmodels' default optimizers fail on this table
        default = smf.mixedlm(MIXED_REFERENCES["instruct_by_prompt_type"][0], data, groups=data["family"]).fit()
    assert not default.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ours records the warnings instead of emitting them
        fit = mixed_effects(table, "self_reference")["instruct_by_prompt_type"]
    assert fit["optimizers"] == ["powell", "nm"] and any("ConvergenceWarning" in w for w in fit["warnings"])
    assert_matches_direct_fit(fit, table, "instruct_by_prompt_type", method=["powell", "nm"])


# --- planted effects and null data --------------------------------------------------------------

def test_planted_instruct_effect_is_recovered():
    table = study_table(1, families=6, sizes=(1.0, 3.0), prompts_per_type=10, reps=3,
                        instruct_effect=INSTRUCT_EFFECT)
    fits = mixed_effects(table, "self_reference")
    for model in ("instruct", "instruct_plus_log2_size"):
        instruct = fits[model]["coefficients"]["instruct"]
        assert 0 < instruct["ci_low"] < INSTRUCT_EFFECT < instruct["ci_high"], (model, instruct)
    assert fits["instruct"]["family_variance"] > 0
    stats = content_statistics(table, ["self_reference"], n_resamples=2000, seed=0)
    headline = stats[stats["headline"] == "instruct_over_base"].iloc[0]
    assert headline["reject_holm"] and headline["cohens_d_low"] > 0
    assert headline["diff_low"] < INSTRUCT_EFFECT < headline["diff_high"]
    assert headline["families_with_pairs"] == ", ".join(f"F{i}" for i in range(6))


def test_planted_base_self_reference_vs_topic_control_ratio():
    table = study_table(2, families=3, instruct_effect=INSTRUCT_EFFECT, family_sd=0.0)
    base_self_reference = (table["variant"] == "base") & (table["prompt_type"] == "self_reference")
    table.loc[base_self_reference, "self_reference"] += 3.0  # base means: 4 vs 1, ratio 4
    stats = content_statistics(table, ["self_reference"], n_resamples=2000, seed=0)
    row = stats[stats["headline"] == "self_reference_over_topic_control"].iloc[0]
    assert row["ratio_low"] < 4.0 < row["ratio_high"] and row["reject_holm"]
    assert row["families"] == "F0, F1, F2" and pd.isna(row["families_with_pairs"])


def test_false_positive_rate_under_the_null():
    pvalues = []
    for seed in range(100):
        table = study_table(seed, families=2, sizes=(1.0,), prompts_per_type=4, reps=3, integer_scores=True)
        stats = content_statistics(table, ["self_reference"], n_resamples=10, seed=seed)
        pvalues += list(stats.loc[stats["comparison"] == "instruct_vs_base", "p_value"])
    assert len(pvalues) == 400
    assert np.mean(np.array(pvalues) < 0.05) <= 0.12


def test_scaling_recovers_a_gap_that_grows_with_size():
    table = study_table(3, families=3, sizes=(1.0, 3.0, 8.0), prompts_per_type=5, family_sd=0.0)
    planted = {1.0: 0.0, 3.0: 1.0, 8.0: 2.0}
    instruct = table["variant"] == "instruct"
    table.loc[instruct, "self_reference"] += table.loc[instruct, "size_b"].map(planted)
    table = table[~((table["family"] == "F2") & (table["size_b"] > 1))]
    result = scaling(table, "self_reference", n_resamples=2000, seed=0)
    gaps = result["gaps"]
    assert set(gaps["family"]) == {"F0", "F1"}
    standard_error = (gaps["gap_high"] - gaps["gap_low"]) / 3.92
    assert ((gaps["gap"] - gaps["size_b"].map(planted)).abs() < 4 * standard_error).all()
    assert result["trends"]["spearman_rho"].tolist() == pytest.approx([1.0, 1.0])
    assert (result["trends"]["n_sizes"] == 3).all()
    assert result["skipped"]["family"].tolist() == ["F2"] and "1 size" in result["skipped"]["reason"][0]


# --- families with one variant ------------------------------------------------------------------

def test_single_variant_families_are_reported_not_raised():
    table = single_variant_table()
    stats = content_statistics(table, ["self_reference"], n_resamples=100)
    pairs = stats[stats["comparison"] == "instruct_vs_base"]
    assert len(pairs) == len(PROMPT_TYPES) and pairs["p_value"].isna().all() and pairs["diff"].isna().all()
    assert (pairs["note"] != "").all() and (pairs["families_with_pairs"] == "").all()
    assert pairs["p_holm"].isna().all()
    base_row = stats[stats["headline"] == "self_reference_over_topic_control"].iloc[0]
    assert base_row["families"] == "A" and np.isfinite(base_row["ratio"])
    for fit in mixed_effects(table, "self_reference").values():
        assert fit["estimable"] is False and "family" in fit["reason"]
    result = scaling(table, "self_reference", n_resamples=100)
    assert result["gaps"].empty and result["skipped"]["family"].tolist() == ["A", "B"]


def test_only_families_with_both_variants_are_pooled():
    table = pd.concat([study_table(4, families=2, prompts_per_type=2),
                       single_variant_table().replace({"family": {"A": "X", "B": "Y"}})])
    stats = content_statistics(table, ["self_reference"], n_resamples=100)
    pairs = stats[stats["comparison"] == "instruct_vs_base"]
    assert (pairs["families_with_pairs"] == "F0, F1").all() and (pairs["note"] == "").all()
    expected_n = 2 * 2 * 2 * 3  # families x sizes x prompts x reps, per variant
    assert (pairs["n_a"] == expected_n).all() and (pairs["n_b"] == expected_n).all()
    assert mixed_effects(table, "self_reference")["instruct"]["n_groups"] == 4


def test_mixed_effects_reports_what_cannot_be_estimated():
    table = study_table(6, families=3, sizes=(2.0,), prompts_per_type=2)
    fits = mixed_effects(table, "self_reference")
    assert fits["instruct"]["estimable"] and not fits["instruct_plus_log2_size"]["estimable"]
    assert "size_b" in fits["instruct_plus_log2_size"]["reason"]
    one_family = mixed_effects(table[table["family"] == "F0"], "self_reference")
    assert all("2 families" in fit["reason"] for fit in one_family.values())


def test_content_statistics_and_scaling_are_reproducible():
    table = study_table(9, families=2, prompts_per_type=2, instruct_effect=INSTRUCT_EFFECT)
    first = content_statistics(table, ["self_reference"], n_resamples=500, seed=5)
    pd.testing.assert_frame_equal(first, content_statistics(table, ["self_reference"], n_resamples=500, seed=5))
    assert not first["diff_low"].equals(content_statistics(table, ["self_reference"], n_resamples=500, seed=6)["diff_low"])
    pd.testing.assert_frame_equal(scaling(table, "self_reference", 500, seed=5)["gaps"],
                                  scaling(table, "self_reference", 500, seed=5)["gaps"])
