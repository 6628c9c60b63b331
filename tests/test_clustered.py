"""Inference at the study's independent units, and the statistics' small-sample edge cases."""

import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from llm_introspection.statistics import compare_groups, scaling
from llm_introspection.synthetic import study_table


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
