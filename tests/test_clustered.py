"""Inference at the study's independent units, and the statistics' small-sample edge cases."""

import itertools

import numpy as np
import pingouin
import pytest
import scipy.stats

from llm_introspection.study.clustered import (
    cell_sums,
    clustered_statistics,
    crossed_mixed_effects,
    crossed_t_test,
    two_way_bootstrap,
)
from llm_introspection.study.statistics import compare_groups, content_statistics, scaling
from llm_introspection.study.synthetic import population_means, study_table


# --- undefined statistics and exact small-sample p-values ----------------------------------------

def test_sparse_cell_resamples_where_d_or_ratio_is_0_over_0_count_as_no_difference():
    a, b = np.r_[np.zeros(18), 1.0, 1.0], np.zeros(20)  # 12% of the resamples of a are all 0, like b
    row = compare_groups(a, b, n_resamples=4000, seed=0)
    assert row["cohens_d_low"] == 0.0 < row["cohens_d"] < row["cohens_d_high"] < np.inf
    assert row["ratio_low"] == 1.0 and row["ratio"] == row["ratio_high"] == np.inf
    constant = compare_groups(np.zeros(5), np.zeros(4), n_resamples=100)
    assert [constant[k] for k in ("ratio", "ratio_low", "ratio_high", "cohens_d", "cohens_d_low")] == [1, 1, 1, 0, 0]


def exact_spearman_p(x, y):
    """Two-sided exact permutation p of Spearman's rho: the share of the n! orderings of y at least as extreme."""
    observed = abs(scipy.stats.spearmanr(x, y).statistic)
    rhos = [abs(scipy.stats.spearmanr(x, p).statistic) for p in itertools.permutations(y)]
    return np.mean(np.array(rhos) >= observed - 1e-12)


@pytest.mark.parametrize("gaps", [(0.0, 1.0, 2.0), (0.0, 1.0, 3.0, 2.0, 5.0), (2.0, 0.0)])
def test_scaling_trend_p_is_the_exact_permutation_p(gaps):
    sizes = (1.0, 3.0, 8.0, 14.0, 30.0)[:len(gaps)]
    table = study_table(3, families=1, sizes=sizes, prompts_per_type=2, reps=2, noise_sd=0.0, family_sd=0.0)
    instruct = table["variant"] == "instruct"
    table.loc[instruct, "self_reference"] += table.loc[instruct, "size_b"].map(dict(zip(sizes, gaps)))
    trend = scaling(table, "self_reference", n_resamples=100)["trends"].iloc[0]
    assert trend["spearman_p"] == pytest.approx(exact_spearman_p(sizes, gaps))
    if len(gaps) == 3:
        assert trend["spearman_rho"] == 1.0 and trend["spearman_p"] == pytest.approx(1 / 3)
    assert trend["spearman_p_min"] == pytest.approx(2 / np.prod(range(1, len(gaps) + 1)))


# --- the clustered statistics against references ------------------------------------------------

# The seed study's shape: 4 families x 2 sizes (8 model pairs), 10 prompts of the compared type,
# with family, model, prompt and prompt x instruct random effects on 0-3 integer scores.
DESIGN = dict(families=4, sizes=(1.0, 3.0), prompts_per_type=10, reps=5, baseline=1.0, family_sd=0.5, model_sd=0.3,
              prompt_sd=0.5, prompt_effect_sd=0.3, noise_sd=1.0, integer_scores=True)
EFFECT = 0.8
RESAMPLES = 2000


def headline(table, statistics):
    """The instruct-vs-base row of self_reference on self_reference prompts."""
    rows = table[table["prompt_type"] == "self_reference"]
    return statistics(rows, ["self_reference"], n_resamples=RESAMPLES, seed=0, base_contrast=False).iloc[0]


def naive_two_way_bootstrap(table, n_resamples, seed):
    """Resample pairs and prompts with np.random indices, gather their completions, compute the statistics."""
    rng = np.random.default_rng(seed)
    pairs, prompts = table["pair"].unique(), table["prompt_id"].unique()
    cells = {key: group["self_reference"].to_numpy() for key, group in table.groupby(["pair", "prompt_id", "variant"])}
    out = []
    for _ in range(n_resamples):
        chosen = [(p, q) for p in rng.choice(pairs, pairs.size) for q in rng.choice(prompts, prompts.size)]
        a, b = (np.concatenate([cells[p, q, v] for p, q in chosen]) for v in ("instruct", "base"))
        out.append([a.mean() - b.mean(), a.mean() / b.mean(), pingouin.compute_effsize(a, b, eftype="cohen")])
    return np.array(out).T


def test_two_way_bootstrap_matches_a_loop_over_resampled_completions():
    table = study_table(0, **DESIGN | {"instruct_effect": EFFECT, "families": 3, "prompts_per_type": 4})
    table = table[table["prompt_type"] == "self_reference"].assign(pair=lambda t: t["family"] + t["size_b"].astype(str))
    pairs, prompts = sorted(table["pair"].unique()), sorted(table["prompt_id"].unique())
    shift = table["self_reference"].mean()
    a, b = (cell_sums(table[table["variant"] == v], "self_reference", "pair", pairs, prompts, shift)
            for v in ("instruct", "base"))
    ours = two_way_bootstrap(a, b, shift, True, n_resamples=4000, seed=1)
    reference = naive_two_way_bootstrap(table, n_resamples=1500, seed=2)
    for mine, theirs in zip(ours, reference):
        width = np.subtract(*np.quantile(theirs, [0.95, 0.05]))
        assert np.quantile(mine, [0.05, 0.5, 0.95]) == pytest.approx(np.quantile(theirs, [0.05, 0.5, 0.95]),
                                                                     abs=0.08 * width)


def test_crossed_t_is_clarks_min_f_prime_of_the_by_pair_and_by_prompt_t_tests():
    rng = np.random.default_rng(3)
    means_a = 0.3 + rng.normal(0, 0.4, (8, 1)) + rng.normal(0, 0.4, (1, 10)) + rng.normal(0, 0.5, (8, 10))
    means_b = rng.normal(0, 0.5, (8, 10))
    estimate, t, df, p = crossed_t_test(means_a, means_b, shared_prompts=True)
    by_pair = scipy.stats.ttest_1samp((means_a - means_b).mean(axis=1), 0)
    by_prompt = scipy.stats.ttest_1samp((means_a - means_b).mean(axis=0), 0)
    f1, f2 = by_pair.statistic**2, by_prompt.statistic**2
    min_f = f1 * f2 / (f1 + f2)  # Clark (1973)
    assert estimate == pytest.approx((means_a - means_b).mean())
    assert t**2 == pytest.approx(min_f) and np.sign(t) == np.sign(estimate)
    assert df == pytest.approx((f1 + f2) ** 2 / (f1**2 / 9 + f2**2 / 7))
    assert p == pytest.approx(scipy.stats.f.sf(min_f, 1, df)) and p > max(by_pair.pvalue, by_prompt.pvalue)
    _, t_nested, df_nested, _ = crossed_t_test(means_a, means_b, shared_prompts=False)
    welch = scipy.stats.ttest_ind(means_a.mean(axis=0), means_b.mean(axis=0), equal_var=False)
    assert 1 / t_nested**2 == pytest.approx(1 / by_pair.statistic**2 + 1 / welch.statistic**2)


# --- planted effects, null data and designs too small -------------------------------------------

TABLES = 200


def test_an_effect_of_one_pair_or_of_prompt_noise_is_significant_only_per_completion():
    """One pair's instruct model 5 points up, or a prompt x instruct SD of 2 with no mean effect:
    the completions call it significant, the model pairs and prompts do not."""
    design = DESIGN | {"integer_scores": False, "model_sd": 0.0, "prompt_effect_sd": 0.0, "reps": 10}
    one_pair, prompt_noise = [], []
    for seed in range(10):
        table = study_table(seed, **design)
        table.loc[table["model"] == "F0-1.0-instruct", "self_reference"] += 5.0
        one_pair.append([headline(table, f)["p_value"] for f in (content_statistics, clustered_statistics)])
        table = study_table(seed, **design | {"prompt_effect_sd": 2.0})
        prompt_noise.append([headline(table, f)["p_value"] for f in (content_statistics, clustered_statistics)])
    for pvalues in (np.array(one_pair), np.array(prompt_noise)):
        completion, clustered = np.mean(pvalues < 0.05, axis=0)
        assert completion >= 0.8 and clustered <= 0.1, (completion, clustered)


def rejection_limit(n):
    """Largest rejection rate over n independent tables that a test with a true 5% rate exceeds
    with probability under 1% (binomial): the Monte Carlo slack of a 5% level."""
    return scipy.stats.binom.ppf(0.99, n, 0.05) / n


def test_planted_effect_is_covered_and_the_null_rejected_at_most_5_percent_at_the_units():
    """Instruct effect on self-reference prompts only: their CIs should cover the population
    difference and ratio, topic-control prompts are the null (same tables, same random effects)."""
    design = DESIGN | {"instruct_effect": EFFECT, "effect_prompt_types": ("self_reference",)}
    population = population_means(**design)
    truth = {"diff": population["instruct"] - population["base"], "ratio": population["instruct"] / population["base"]}
    covered, rejected = {"completion": [], "clustered": []}, {"completion": [], "clustered": []}
    for seed in range(TABLES):
        table = study_table(seed, **design)
        table = table[table["prompt_type"].isin(["self_reference", "topic_control"])]
        for unit, statistics, resamples in (("completion", content_statistics, 200),
                                            ("clustered", clustered_statistics, RESAMPLES)):
            rows = statistics(table, ["self_reference"], n_resamples=resamples, seed=seed, base_contrast=False)
            effect, null = (rows[rows["prompt_type"] == t].iloc[0] for t in ("self_reference", "topic_control"))
            covered[unit].append([effect[f"{k}_low"] <= v <= effect[f"{k}_high"] for k, v in truth.items()])
            rejected[unit].append(null["p_value"] < 0.05)
    coverage = {unit: dict(zip(truth, np.mean(c, axis=0))) for unit, c in covered.items()}
    false_positives = {unit: np.mean(r) for unit, r in rejected.items()}
    assert min(coverage["clustered"].values()) >= 0.90 > max(coverage["completion"].values()), coverage
    assert false_positives["clustered"] <= rejection_limit(TABLES) < false_positives["completion"], false_positives


def test_designs_without_enough_pairs_or_prompts_are_not_estimable():
    table = study_table(0, **DESIGN | {"families": 3, "sizes": (1.0,)})  # 3 pairs
    default_study = table[((table["family"] == "F0") & (table["variant"] == "base"))
                          | ((table["family"] == "F1") & (table["variant"] == "instruct"))]
    few_prompts = study_table(0, **DESIGN | {"prompts_per_type": 3})
    for data, reason in ((table, "3 unit(s)"), (default_study, "no family has both"), (few_prompts, "3 prompt(s)")):
        rows = clustered_statistics(data, ["self_reference"], n_resamples=100, base_contrast=False)
        statistics = rows.filter(regex="^(diff|ratio|cohens_d|p_value|test_statistic)")
        assert rows["note"].str.contains(reason, regex=False).all() and statistics.isna().all().all(), reason
        assert len(rows) == 4 and (rows["unit"] == "model_pair x prompt").all()
    for data in (table, default_study):
        assert "need 6" in crossed_mixed_effects(data, "self_reference")["instruct_crossed"]["reason"]


def test_crossed_mixed_model_recovers_the_planted_effect():
    design = DESIGN | {"families": 3, "prompts_per_type": 3, "instruct_effect": EFFECT, "integer_scores": False,
                       "reps": 2}
    table = study_table(4, **design)
    fit = crossed_mixed_effects(table, "self_reference")["instruct_crossed"]
    instruct = fit["coefficients"]["instruct"]
    cells = table.groupby(["variant", "model", "prompt_id"])["self_reference"].mean().groupby("variant").mean()
    assert instruct["coef"] == pytest.approx(cells["instruct"] - cells["base"])  # balanced: GLS = the mean gap
    assert instruct["ci_low"] < EFFECT < instruct["ci_high"]
    assert set(fit["variance_components"]) == {"family", "model", "prompt", "prompt_x_instruct"}
    assert fit["n_pairs"] == 6 and fit["n_obs"] == 12 * 12
