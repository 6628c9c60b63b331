"""Injection statistics: intervals against published values and their formulas, exact tests,
and the experiment tables on planted records (through the record files)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from scipy.stats import binomtest, norm
from scipy.stats import t as student_t
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep

from llm_introspection.injection.cell import write_records
from llm_introspection.injection.statistics import read_records
from llm_introspection.injection.statistics import (
    MEASURE_COLUMNS, binomial_p, crossed_difference_row, d_prime, difference_row, detection_logit_statistics, detection_response_statistics, forced_identification_statistics, intentional_control_statistics, json_ready, localization_statistics, newcombe_difference, prefill_intent_statistics, thought_vs_text_statistics, wilson_interval,
)

CELL = {"model": "m", "layer": 3, "vector_method": "mean_subtraction", "strength_relative": 1.0}
Z = norm.ppf(0.975)


def wilson_formula(successes, n):
    """Wilson (1927) score interval, written out."""
    p = successes / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


def newcombe_formula(s1, n1, s2, n2):
    """Newcombe (1998) method 10: the difference's bounds from each proportion's Wilson bounds."""
    (p1, (l1, u1)), (p2, (l2, u2)) = (s1 / n1, wilson_formula(s1, n1)), (s2 / n2, wilson_formula(s2, n2))
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def by_measure(table, **selection):
    rows = table
    for key, value in selection.items():
        rows = rows[rows[key] == value]
    return rows.set_index("measure")


# --- intervals and tests ------------------------------------------------------------------------

@pytest.mark.parametrize("successes,n,low,high", [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_1998_single_proportion_table(successes, n, low, high):
    """Newcombe (1998), Stat Med 17:857, Table I, method 3 (score, no continuity correction)."""
    interval = wilson_interval(successes, n)
    assert interval == pytest.approx((low, high), abs=5e-5)
    assert interval == pytest.approx(wilson_formula(successes, n), abs=1e-12)


@pytest.mark.parametrize("s1,n1,s2,n2,low,high", [
    (56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090), (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926), (0, 10, 0, 20, -0.1611, 0.2775), (0, 10, 0, 10, -0.2775, 0.2775),
])
def test_newcombe_difference_matches_the_published_table(s1, n1, s2, n2, low, high):
    """Newcombe (1998), Stat Med 17:873, Table II, method 10 (hybrid score, no continuity correction)."""
    estimate, lower, upper = newcombe_difference(s1, n1, s2, n2)
    assert estimate == pytest.approx(s1 / n1 - s2 / n2)
    assert (lower, upper) == pytest.approx((low, high), abs=5e-5)
    assert (lower, upper) == pytest.approx(newcombe_formula(s1, n1, s2, n2), abs=1e-12)


def test_empty_samples_give_nan_not_errors():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    assert all(math.isnan(x) for x in newcombe_difference(3, 10, 0, 0))
    assert math.isnan(binomial_p(0, 0, 0.5))


def test_binomial_p_is_the_exact_two_sided_test():
    assert binomial_p(20, 20, 0.2) == pytest.approx(0.2**20, rel=1e-9)  # no outcome is rarer than 20/20
    assert binomial_p(0, 10, 0.5) == pytest.approx(2 * 0.5**10, rel=1e-9)
    assert binomial_p(2, 10, 0.2) == pytest.approx(1.0)


# --- experiments, from record files -------------------------------------------------------------

def through_files(tmp_path, records, name):
    path = tmp_path / f"{name}.json"
    write_records(path, records, experiment=name)
    return read_records([path])


def detection_records():
    """Planted logit-metric records: yes counts per arm, and low-mass flags on 4 injected trials."""
    arms = {("detect", "injected"): (40, 30), ("detect", "random"): (40, 12), ("detect", "control"): (10, 2),
            ("control_question", "injected"): (40, 10), ("control_question", "control"): (10, 0)}
    records = []
    for (question, kind), (n, yes) in arms.items():
        records += [CELL | {"question": question, "kind": kind, "variant": i % 10,
                            "concept": None if kind == "control" else f"c{i // 10}",
                            "p_yes": 0.9 if i < yes else 0.2, "prediction": "yes" if i < yes else "no",
                            "low_mass": (question, kind) == ("detect", "injected") and i >= n - 4}
                    for i in range(n)]
    return records


def d_prime_formula(hits, n_signal, alarms, n_noise):
    """d' with the log-linear correction and the Gourevitch-Galanter variance, written out with scipy."""
    h, f = (hits + 0.5) / (n_signal + 1), (alarms + 0.5) / (n_noise + 1)
    d = norm.ppf(h) - norm.ppf(f)
    se = math.sqrt(h * (1 - h) / ((n_signal + 1) * norm.pdf(norm.ppf(h)) ** 2)
                   + f * (1 - f) / ((n_noise + 1) * norm.pdf(norm.ppf(f)) ** 2))
    return d, d - Z * se, d + Z * se


def test_d_prime_is_finite_at_rates_of_zero_and_one():
    assert d_prime(30, 40, 2, 10) == pytest.approx(d_prime_formula(30, 40, 2, 10), abs=1e-12)
    estimate, low, high = d_prime(10, 10, 0, 10)
    assert estimate == pytest.approx(2 * norm.ppf(10.5 / 11)) and low < estimate < high and math.isfinite(high)
    assert d_prime(5, 10, 5, 10)[0] == 0 and all(math.isnan(x) for x in d_prime(3, 10, 0, 0))


def test_detection_logit_rates_controls_and_yes_bias(tmp_path):
    table = detection_logit_statistics(through_files(tmp_path, detection_records(), "detection_logits"))
    assert list(table.columns) == list(MEASURE_COLUMNS)
    rows = by_measure(table)
    expected = {"hit_rate": (30, 40), "false_alarm_rate": (2, 10), "random_yes_rate": (12, 40),
                "control_question_yes_injected": (10, 40), "control_question_yes_unsteered": (0, 10),
                "low_mass_injected": (4, 40), "low_mass_random": (0, 40), "low_mass_control": (0, 10),
                "low_mass_control_question_injected": (0, 40), "low_mass_control_question_unsteered": (0, 10)}
    for measure, (successes, n) in expected.items():
        assert (rows.loc[measure, "successes"], rows.loc[measure, "n"]) == (successes, n), measure
        assert (rows.loc[measure, "low"], rows.loc[measure, "high"]) == pytest.approx(wilson_formula(successes, n))
    differences = {"hit_minus_false_alarm": (30, 40, 2, 10), "hit_minus_random": (30, 40, 12, 40),
                   "control_question_yes_bias": (10, 40, 0, 10)}
    for measure, (s1, n1, s2, n2) in differences.items():
        row = rows.loc[measure]
        assert row["estimate"] == pytest.approx(s1 / n1 - s2 / n2)
        assert (row["low"], row["high"]) == pytest.approx(newcombe_formula(s1, n1, s2, n2), abs=1e-12)
        low, high = confint_proportions_2indep(s1, n1, s2, n2, method="newcomb", compare="diff")
        assert (row["low"], row["high"]) == pytest.approx((low, high))
        assert (row["reference_successes"], row["reference_n"]) == (s2, n2)
    d = rows.loc["d_prime"]
    assert (d["estimate"], d["low"], d["high"]) == pytest.approx(d_prime_formula(30, 40, 2, 10))
    assert (d["successes"], d["n"], d["reference_successes"], d["reference_n"]) == (30, 40, 2, 10)
    assert rows.loc["mean_p_yes_control", "estimate"] == pytest.approx(0.34)
    assert rows.loc["mean_p_yes_injected", "low"] <= 0.725 <= rows.loc["mean_p_yes_injected", "high"]
    crossed = rows.loc["hit_minus_false_alarm_crossed"]
    assert (crossed["estimate"], crossed["low"], crossed["high"], crossed["p_value"]) == pytest.approx(
        crossed_formula(yes_grid(detection_records(), "injected"), yes_grid(detection_records(), "control")))
    tested = table[table["p_value"].notna()]
    assert list(tested["measure"]) == ["hit_minus_false_alarm_crossed"]  # the rest are intervals only
    assert tested["p_holm"].tolist() == tested["p_value"].tolist()  # a family of one in its cell


def yes_grid(records, kind):
    """Concept x variant yes flags of the detect question's `kind` trials; controls (no concept) as one row."""
    trials = [r for r in records if (r["question"], r["kind"]) == ("detect", kind)]
    concepts = sorted({r["concept"] for r in trials}, key=str)
    grid = np.full((len(concepts), 10), np.nan)
    for r in trials:
        grid[concepts.index(r["concept"]), r["variant"]] = r["prediction"] == "yes"
    return grid


def crossed_formula(hits, alarms, confidence=0.95):
    """Clark's min F' written out for a concept x variant grid of hits against per-variant false
    alarms (one row): estimate, t interval (Satterthwaite df) within [-1, 1], two-sided p."""
    by_concept = hits.mean(axis=1) - alarms.mean()
    by_variant = hits.mean(axis=0) - alarms[0]
    parts = [by_concept.var(ddof=1) / by_concept.size, by_variant.var(ddof=1) / by_variant.size]
    df = sum(parts) ** 2 / (parts[0] ** 2 / (by_concept.size - 1) + parts[1] ** 2 / (by_variant.size - 1))
    estimate, se = by_concept.mean(), math.sqrt(sum(parts))
    half = student_t.ppf(0.5 + confidence / 2, df) * se
    return estimate, max(estimate - half, -1), min(estimate + half, 1), 2 * student_t.sf(abs(estimate / se), df)


def simulated_detection(rng, concepts, variants, concept_sd, variant_sd):
    """Logit-metric records with concept and wording random effects on the logit scale (hits at a
    mean logit of 0, false alarms at -1)."""
    concept_effect, variant_effect = rng.normal(0, concept_sd, concepts), rng.normal(0, variant_sd, variants)
    hit = rng.random((concepts, variants)) < expit(concept_effect[:, None] + variant_effect[None, :])
    alarm = rng.random(variants) < expit(-1 + rng.normal(0, variant_sd, variants))
    injected = pd.DataFrame({"concept": np.repeat(np.arange(concepts), variants),
                             "variant": np.tile(np.arange(variants), concepts), "yes": hit.ravel()})
    return injected, pd.DataFrame({"concept": [None] * variants, "variant": np.arange(variants), "yes": alarm})


def test_crossed_interval_covers_where_trials_cluster_by_concept():
    """300 simulated cells of 10 concepts x 10 wordings with a concept SD of 2 on the logit scale:
    the crossed interval of hit minus false-alarm rate covers the population difference (over new
    concepts and wordings) at least 90% of the time; Newcombe's, counting trials as independent,
    less often."""
    draws = np.random.default_rng(1)
    truth = expit(draws.normal(0, math.hypot(2.0, 0.5), 2_000_000)).mean() - expit(-1 + draws.normal(0, 0.5, 2_000_000)).mean()
    rng, covered = np.random.default_rng(0), {"crossed": [], "independent": []}
    for _ in range(300):
        injected, control = simulated_detection(rng, 10, 10, 2.0, 0.5)
        for name, row in (("crossed", crossed_difference_row("m", injected, control, "yes", shared_variants=True)),
                          ("independent", difference_row("m", injected["yes"], control["yes"]))):
            covered[name].append(row["low"] <= truth <= row["high"])
    coverage = {name: np.mean(flags) for name, flags in covered.items()}
    assert coverage["crossed"] >= 0.90 > coverage["independent"], coverage


def graded_records():
    flags = [(1, 1, 1, 1)] * 10 + [(1, 1, 1, 0)] * 2 + [(1, 1, 0, 0)] * 2 + [(0, 1, 1, 1)] + [(1, 0, 0, 0)] * 5
    injected = [CELL | {"kind": "injected", "concept": "Snow", **dict(zip(
        ("coherent", "affirmative", "identifies", "detection_before_word"), map(bool, f))),
        "detected_and_identified": all(f)} for f in flags]
    controls = [CELL | {"kind": "control", "concept": None, "coherent": c, "affirmative": a, "identifies": None,
                        "detection_before_word": None, "detected_and_identified": None}
                for c, a in [(True, False)] * 8 + [(True, True), (False, True)]]
    return injected + controls


def test_detection_response_rates_need_a_coherent_claim(tmp_path):
    rows = by_measure(detection_response_statistics(through_files(tmp_path, graded_records(), "graded")))
    expected = {"hit_rate": (14, 20), "false_alarm_rate": (1, 10), "identification_given_claim": (12, 14),
                "detected_and_identified": (10, 20), "coherent_injected": (19, 20), "coherent_control": (9, 10)}
    for measure, (successes, n) in expected.items():
        assert (rows.loc[measure, "successes"], rows.loc[measure, "n"]) == (successes, n), measure
        assert (rows.loc[measure, "low"], rows.loc[measure, "high"]) == pytest.approx(wilson_formula(successes, n))
    combined = rows.loc["detected_and_identified_minus_false_alarm"]
    assert combined["estimate"] == pytest.approx(0.4)
    assert (combined["low"], combined["high"]) == pytest.approx(newcombe_formula(10, 20, 1, 10))


def test_forced_identification_against_control_and_leak(tmp_path):
    """10 concepts x 3 variants per injected arm, one unsteered trial per variant (10) per question."""
    arms = {("forced_identification", "injected"): (30, 18), ("forced_identification", "control"): (10, 1),
            ("leak", "injected"): (30, 9), ("leak", "control"): (10, 1)}
    records = [CELL | {"question": question, "kind": kind, "concept": f"c{i % 10}", "variant": i // 10 if n == 30 else i,
                       "rank": 1 if i < top else 2 + i % 9, "top1": i < top, "n_candidates": 10}
               for (question, kind), (n, top) in arms.items() for i in range(n)]
    rows = by_measure(forced_identification_statistics(through_files(tmp_path, records, "forced")))
    tests = {"top1_injected": ("forced_identification", "injected"), "top1_control": ("forced_identification", "control"),
             "top1_leak": ("leak", "injected"), "top1_leak_control": ("leak", "control")}
    counts = {}
    for measure, arm in tests.items():
        flags = [r["top1"] for r in records if (r["question"], r["kind"]) == arm]
        counts[measure] = (sum(flags), len(flags))
        row = rows.loc[measure]
        assert (row["successes"], row["n"], row["chance"]) == (*counts[measure], 0.1), measure
        assert row["p_value"] == pytest.approx(binomtest(*counts[measure], 0.1).pvalue)
    tested = [*tests, "top1_injected_minus_leak_crossed"]  # the cell's family
    holm = multipletests([rows.loc[m, "p_value"] for m in tested], method="holm")[1]
    assert [rows.loc[m, "p_holm"] for m in tested] == pytest.approx(list(holm))
    crossed = rows.loc["top1_injected_minus_leak_crossed"]
    assert crossed["estimate"] == pytest.approx(rows.loc["top1_injected_minus_leak", "estimate"])  # a balanced grid
    assert crossed["low"] < crossed["estimate"] < crossed["high"] and 0 < crossed["p_value"] < 1
    for measure, (a, b) in {"top1_injected_minus_control": ("top1_injected", "top1_control"),
                            "top1_injected_minus_leak": ("top1_injected", "top1_leak")}.items():
        row = rows.loc[measure]
        assert row["estimate"] == pytest.approx(counts[a][0] / counts[a][1] - counts[b][0] / counts[b][1])
        assert (row["low"], row["high"]) == pytest.approx(newcombe_formula(*counts[a], *counts[b]), abs=1e-12)
    leak_ranks = [r["rank"] for r in records if (r["question"], r["kind"]) == ("leak", "injected")]
    assert rows.loc["mean_rank_leak", "estimate"] == pytest.approx(np.mean(leak_ranks)) and rows.loc["mean_rank_leak", "n"] == 30
    assert rows.loc["mean_rank_control", "n"] == 10


def test_thought_vs_text_rates_and_paired_change(tmp_path):
    records = []
    for t in range(10):
        trial = CELL | {"trial": t}
        records += [trial | {"question": "thought", "kind": "injected", "top1": t < 7, "n_candidates": 50},
                    trial | {"question": "thought", "kind": "control", "top1": t == 0, "n_candidates": 50},
                    trial | {"question": "text", "kind": "injected", "exact": t < 8, "mean_logprob": -1 - t / 10},
                    trial | {"question": "text", "kind": "control", "exact": True, "mean_logprob": -0.5}]
    rows = by_measure(thought_vs_text_statistics(through_files(tmp_path, records, "thought_vs_text")))
    assert (rows.loc["thought_top1_injected", "successes"], rows.loc["thought_top1_injected", "chance"]) == (7, 0.02)
    assert rows.loc["thought_top1_injected", "p_value"] == pytest.approx(binomial_p(7, 10, 0.02))
    assert rows.loc["thought_top1_injected_minus_control", "estimate"] == pytest.approx(0.6)
    assert rows.loc["text_exact_injected_minus_control", "estimate"] == pytest.approx(-0.2)
    exact = rows.loc["text_exact_injected_minus_control"]
    assert (exact["low"], exact["high"]) == pytest.approx(newcombe_formula(8, 10, 10, 10))
    change = rows.loc["text_logprob_change"]
    assert change["estimate"] == pytest.approx(-0.95) and change["low"] < -0.95 < change["high"] and change["n"] == 10


def test_prefill_intent_rates_by_kind(tmp_path):
    counts = {"injected": 6, "mismatched": 3, "control": 1}
    records = [CELL | {"trial": t, "kind": kind, "prediction": "yes" if t < k else "no", "p_yes": 0.8 if t < k else 0.3}
               for kind, k in counts.items() for t in range(10)]
    rows = by_measure(prefill_intent_statistics(through_files(tmp_path, records, "prefill_intent")))
    for kind, k in counts.items():
        assert (rows.loc[f"intent_{kind}", "successes"], rows.loc[f"intent_{kind}", "n"]) == (k, 10)
    assert rows.loc["intent_injected_minus_control", "estimate"] == pytest.approx(0.5)
    assert (rows.loc["intent_injected_minus_mismatched", "low"], rows.loc["intent_injected_minus_mismatched", "high"]) \
        == pytest.approx(newcombe_formula(6, 10, 3, 10))
    assert rows.loc["p_intended_change_injected", "estimate"] == pytest.approx(0.25)  # 5 trials of 10 move by 0.5


def test_intentional_control_paired_differences(tmp_path):
    noise = np.random.default_rng(0).normal(0, 0.01, size=(10, 3))
    bases = [("think", 0.3), ("dont_think", 0.2), ("neutral", 0.1)]
    records = [CELL | {"trial": t, "question": name, "concept": "Dust", "cosine": base + noise[t, i]}
               for t in range(10) for i, (name, base) in enumerate(bases)]
    rows = by_measure(intentional_control_statistics(through_files(tmp_path, records, "intentional_control")))
    assert rows.loc["cosine_think", "estimate"] == pytest.approx(0.3 + noise[:, 0].mean())
    for measure, (a, b) in {"think_minus_dont_think": (0, 1), "dont_think_minus_neutral": (1, 2),
                            "think_minus_neutral": (0, 2)}.items():
        expected = 0.1 * (b - a) + (noise[:, a] - noise[:, b]).mean()
        assert rows.loc[measure, "estimate"] == pytest.approx(expected)
        assert rows.loc[measure, "low"] < expected < rows.loc[measure, "high"] and rows.loc[measure, "low"] > 0


def localization_records(strength, n_trials=20, n=5):
    """locate + concept: always right; prefer + concept: always the last sentence; random vectors:
    always the first; no injection: always the third."""
    records = []
    for trial in range(n_trials):
        for question in ("locate", "prefer"):
            for kind in ("injected", "random"):
                for position in range(1, n + 1):
                    answer = 1 if kind == "random" else (position if question == "locate" else n)
                    records.append(CELL | {"strength_relative": strength, "trial": trial, "question": question,
                                           "introspection": question == "locate", "kind": kind, "n_sentences": n,
                                           "injected_position": position, "prediction": answer,
                                           "correct": answer == position, "answer_probs": list(np.eye(n)[answer - 1])})
            records.append(CELL | {"strength_relative": strength, "trial": trial, "question": question,
                                   "introspection": question == "locate", "kind": "control", "n_sentences": n,
                                   "injected_position": None, "prediction": 3, "correct": None,
                                   "answer_probs": list(np.eye(n)[2])})
    return records


def test_localization_accuracy_margins_and_position_bias(tmp_path):
    records = through_files(tmp_path, localization_records(1.0) + localization_records(2.0), "localization")
    tables = localization_statistics(records)
    accuracy = tables["accuracy"]
    assert len(accuracy) == 2 * 4 and set(accuracy["measure"]) == {"accuracy"}
    locate = accuracy[(accuracy["question"] == "locate") & (accuracy["kind"] == "injected")].iloc[0]
    assert (locate["successes"], locate["n"], locate["chance"]) == (100, 100, 0.2)
    assert locate["p_value"] == pytest.approx(0.2**100, rel=1e-9)
    one_cell = accuracy[accuracy["strength_relative"] == 1.0]
    for _, row in one_cell[one_cell["question"] + one_cell["kind"] != "locateinjected"].iterrows():
        assert (row["successes"], row["n"], row["p_value"]) == (20, 100, pytest.approx(1.0))
    assert one_cell["p_holm"].min() == pytest.approx(4 * 0.2**100, rel=1e-9)  # Holm over the cell's 4 tests
    # Holm over the sweep: the measure's 8 tests in both cells (statsmodels as the reference)
    assert accuracy["p_holm_sweep"].to_numpy() == pytest.approx(multipletests(accuracy["p_value"], method="holm")[1], rel=1e-9)
    assert accuracy["p_holm_sweep"].min() == pytest.approx(8 * 0.2**100, rel=1e-9)

    margins = tables["margins"]
    assert len(margins) == 2 * 3
    for _, row in margins.iterrows():
        assert row["estimate"] == pytest.approx(0.8) and (row["successes"], row["reference_successes"]) == (100, 20)
        assert (row["low"], row["high"]) == pytest.approx(newcombe_formula(100, 100, 20, 100))

    answers = tables["answers"].query("strength_relative == 1.0")
    random = answers[answers["kind"] == "random"]
    assert set(random.loc[random["answer"] == 1, "count"]) == {20}
    assert random.loc[random["answer"] > 1, "count"].eq(0).all()
    assert len(random) == 2 * 5 * 5  # 2 questions x 5 injected positions x 5 answers
    control = answers[answers["kind"] == "control"]
    assert control["injected_position"].isna().all() and len(control) == 2 * 5
    assert control.set_index(["question", "answer"]).loc[("locate", 3), "share"] == 1.0
    prefer = answers[(answers["kind"] == "injected") & (answers["question"] == "prefer")]
    assert prefer.loc[prefer["answer"] == 5, "mean_prob"].eq(1.0).all()


def test_json_ready_turns_nan_into_null():
    table = pd.DataFrame({"measure": ["a"], "estimate": [np.nan], "n": [3]})
    assert json_ready({"t": table}) == {"t": [{"measure": "a", "estimate": None, "n": 3}]}


def test_report_section_reads_the_new_controls(tmp_path):
    """The report's injection section shows the logit metric's headline against its controls and
    says how many control trials there are and which tests each Holm family covers."""
    from llm_introspection.report.markdown import _injection

    tables = {"detection_logits": detection_logit_statistics(
        through_files(tmp_path, detection_records(), "detection_logits"))}
    settings = {"models": ["m"], "experiments": ["detection_logits", "forced_identification"],
                "vector_method": "mean_subtraction", "n_concepts": 4, "layer_fractions": [0.5],
                "strengths": [1.0], "n_variants": 10, "min_option_mass": 0.1}
    text = "\n\n".join(_injection({"tables": json_ready(tables)}, settings, []))
    shown = {line.split(" | ")[4] for line in text.splitlines() if line.startswith("| detection_logits")}
    assert shown == {"hit_rate", "false_alarm_rate", "hit_minus_false_alarm", "hit_minus_false_alarm_crossed", "d_prime", "random_yes_rate",
                     "control_question_yes_bias"}
    assert "one control trial" not in text and "over 10 wordings" in text and "less than 0.1" in text
    assert "Holm corrections: 'cell' is per cell and table" in text and "'sweep' is per measure over every model" in text
