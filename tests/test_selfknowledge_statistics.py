"""Self-knowledge statistics: scoring by hand, the KL of self-calibration on a hand-computed case,
and planted effects through each evaluation's table (the CI covers the truth; the null rejects
rarely), with the comparisons each model gets."""


import numpy as np
import pandas as pd
import pytest

from llm_introspection.errors import InputError
from llm_introspection.selfknowledge import design, scoring
from llm_introspection.selfknowledge.statistics import detection_statistics, evaluation_table
from llm_introspection.selfknowledge.texts import load_questions
from conftest import REPO

N_SIMULATIONS, RESAMPLES = 60, 400
MODELS = {
    "base": {"family": "f", "size_b": 1, "variant": "base", "source": {"kind": "hf", "id": "b"}},
    "tuned": {"family": "f", "size_b": 1, "variant": "instruct", "source": {"kind": "lora", "base": "base",
                                                                             "adapter": "a"}},
}


def test_restricted_kl_matches_a_hand_computed_case():
    # P: a 0.5, b 0.3, other 0.2; Q: a 0.6, b 0.4, other 0, mixed with 0.1 of the uniform on {a, b, other}:
    # 0.5 ln(0.5/0.57333) + 0.3 ln(0.3/0.39333) + 0.2 ln(0.2/0.03333) = 0.2086598
    assert scoring.restricted_kl({"a": 0.5, "b": 0.3}, {"a": 0.6, "b": 0.4}, epsilon=0.1) == pytest.approx(0.2086598, abs=1e-6)
    assert scoring.restricted_kl({"a": 0.6, "b": 0.4}, {"a": 0.6, "b": 0.4}, epsilon=0.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        scoring.restricted_kl({"a": 1.0}, {"z": 1.0})


def test_reports_and_properties_are_read_as_written():
    assert scoring.parse_report("1. Dog: 40%\n2. Cat: 30%\n- bird 20\nfish") == [
        ("Dog", 40.0), ("Cat", 30.0), ("bird", 20.0), ("fish", None)]
    assert scoring.report_distribution([("x", 40.0), ("y", None)]) == {"x": 0.5, "y": 0.5}  # a missing percent: uniform
    assert scoring.report_distribution([("x", 30.0), ("y", 10.0)]) == {"x": 0.75, "y": 0.25}
    assert scoring.answer_property("Elephant.", "second_character") == "l"
    assert scoring.answer_property("Elephant", "starts_with_vowel") == "yes"
    assert scoring.answer_property("The keeper sat down.", "third_word") == "sat"
    assert scoring.answer_property("Ox", "third_character") is None
    assert scoring.answer_property("I pick B.", "option") == "B"
    assert scoring.predicted_property("No, it would not.", "starts_with_vowel") == "no"
    assert scoring.parse_number("About 12 words") == 12 and scoring.parse_number("many") is None


def test_questions_file_has_eight_per_category_and_both_groups(tmp_path):
    questions = load_questions(REPO / "resources/selfknowledge/questions.yaml")
    counts = pd.Series([q.category for q in questions.questions]).value_counts()
    assert len(counts) == 13 and counts.min() >= 8
    assert len(load_questions(REPO / "resources/selfknowledge/questions.yaml", 2).questions) == 26
    broken = tmp_path / "q.yaml"
    broken.write_text("version: 1\ndescription: d\ninstruction: '{a} {b}'\nprefill: p\nseparator: ' '\n"
                      "categories: {x: {group: control, questions: [q1]}, y: {group: control, questions: [q2]}}\n")
    with pytest.raises(InputError, match="suggestive and control"):
        load_questions(broken)


def test_comparisons_are_lora_against_base_else_instruct_against_its_pair():
    assert design.comparisons(MODELS, ["base", "tuned"]) == [("tuned", "base", "lora_vs_base")]
    assert design.evaluated_models(MODELS, ["tuned"]) == ["tuned", "base"]
    plain = {"b": {"family": "f", "size_b": 1, "variant": "base", "source": {"kind": "hf"}},
             "i": {"family": "f", "size_b": 1, "variant": "instruct", "source": {"kind": "hf"}},
             "other": {"family": "g", "size_b": 2, "variant": "instruct", "source": {"kind": "hf"}}}
    assert design.comparisons(plain, ["b", "i", "other"]) == [("i", "b", "instruct_vs_base")]
    assert design.comparisons(plain, ["other"]) == []


def _answer_records(rng, shift_suggestive, shift_control):
    rows = []
    for group, shift in (("suggestive", shift_suggestive), ("control", shift_control)):
        for c in range(3):
            for q in range(10):
                p = rng.uniform(0.2, 0.6)
                item = f"{group}{c}_{q}"
                common = {"item": item, "category": f"{group}{c}", "group": group, "pair": "Red/Blue"}
                rows.append(common | {"model": "base", "p_a": p})
                rows.append(common | {"model": "tuned", "p_a": p + shift + rng.normal(0, 0.1)})
    return pd.DataFrame(rows)


def _rates(evaluation, make, measure, subset, truth, null_make):
    rng = np.random.default_rng(7)
    covered, rejected = 0, 0
    for _ in range(N_SIMULATIONS):
        table = evaluation_table(evaluation, make(rng), MODELS, seed=int(rng.integers(1 << 30)), n_resamples=RESAMPLES)
        row = table[(table["comparison"] == "lora_vs_base") & (table["measure"] == measure)
                    & (table["subset"] == subset)].iloc[0]
        covered += row["low"] <= truth <= row["high"]
        table = evaluation_table(evaluation, null_make(rng), MODELS, seed=int(rng.integers(1 << 30)), n_resamples=RESAMPLES)
        row = table[(table["comparison"] == "lora_vs_base") & (table["measure"] == measure)
                    & (table["subset"] == subset)].iloc[0]
        rejected += row["p_value"] < 0.05
        assert row["family"].startswith(f"{evaluation}: tuned vs base")
    return covered / N_SIMULATIONS, rejected / N_SIMULATIONS


def test_answer_shift_headline_covers_a_planted_framing_effect_and_holds_the_null():
    coverage, false_rejections = _rates(
        "answer_shift", lambda rng: _answer_records(rng, 0.3, 0.1), "shift_p_a_suggestive_minus_control", "headline",
        0.2, lambda rng: _answer_records(rng, 0.2, 0.2))
    assert coverage >= 0.85 and false_rejections <= 0.12


def test_answer_shift_reads_per_model_rows_and_detects_a_planted_shift():
    table = evaluation_table("answer_shift", _answer_records(np.random.default_rng(1), 0.3, 0.0), MODELS, n_resamples=500)
    headline = table[(table["measure"] == "shift_p_a_suggestive_minus_control")].iloc[0]
    assert headline["low"] > 0 and headline["p_holm"] < 0.05 and headline["unit"] == "question"
    per_model = table[table["comparison"] == "per_model"]
    assert set(per_model["model"]) == {"base", "tuned"} and (per_model["pair"] == "Red/Blue").all()


def _prediction_records(rng, accuracy_tuned, accuracy_base=0.5, n_tasks=40):
    rows = []
    for t in range(n_tasks):
        for prop in ("first_character", "starts_with_vowel"):
            actual = rng.choice(["a", "b", "c"])
            for model, accuracy in (("base", accuracy_base), ("tuned", accuracy_tuned)):
                rows.append({"model": model, "item": f"t{t}", "property": prop, "actual": actual,
                             "correct": bool(rng.random() < accuracy)})
    return pd.DataFrame(rows)


def test_self_prediction_covers_a_planted_accuracy_gain_and_holds_the_null():
    coverage, false_rejections = _rates("self_prediction", lambda rng: _prediction_records(rng, 0.8),
                                        "accuracy_difference", "all", 0.3, lambda rng: _prediction_records(rng, 0.5))
    assert coverage >= 0.85 and false_rejections <= 0.12
    table = evaluation_table("self_prediction", _prediction_records(np.random.default_rng(2), 0.9), MODELS,
                             n_resamples=RESAMPLES)
    baseline = table[(table["model"] == "tuned") & (table["measure"] == "baseline_accuracy") & (table["subset"] == "all")]
    assert 0.3 <= baseline["estimate"].iloc[0] <= 0.6  # the most common of three properties


def _calibration_records(rng, effect):
    rows = []
    for i in range(30):
        kl, overlap, top1 = rng.gamma(2, 1), rng.integers(0, 6) / 5, rng.random() < 0.3
        rows.append({"model": "base", "item": f"p{i}", "kl": kl, "top5_overlap": overlap, "top1_match": top1})
        rows.append({"model": "tuned", "item": f"p{i}", "kl": kl - effect + rng.normal(0, 0.5),
                     "top5_overlap": overlap, "top1_match": top1})
    return pd.DataFrame(rows)


def test_calibration_covers_a_planted_kl_drop_and_holds_the_null():
    coverage, false_rejections = _rates("calibration", lambda rng: _calibration_records(rng, 0.5), "kl_difference", "",
                                        -0.5, lambda rng: _calibration_records(rng, 0.0))
    assert coverage >= 0.85 and false_rejections <= 0.12


def _length_records(rng, effect):
    rows = []
    for i in range(30):
        words = int(rng.integers(5, 40))
        error = abs(rng.normal(10, 4))
        for model, e in (("base", error), ("tuned", max(0.0, error - effect + rng.normal(0, 2)))):
            rows.append({"model": model, "item": f"p{i}", "actual_words": words, "abs_error": e,
                         "first_word_correct": bool(rng.random() < 0.5)})
    return pd.DataFrame(rows)


def test_length_prediction_covers_a_planted_error_drop_and_holds_the_null():
    coverage, false_rejections = _rates("length_prediction", lambda rng: _length_records(rng, 3.0), "abs_error_difference",
                                        "", -3.0, lambda rng: _length_records(rng, 0.0))
    assert coverage >= 0.85 and false_rejections <= 0.12


def _detection_trials(rng, hit, false_alarm, n=200):
    rows = []
    for split in ("train", "held_out"):
        for k in range(n):
            steered = k % 2 == 0
            rate = hit if steered else false_alarm
            rows.append({"split": split, "magnitude": 10.0, "layer_range": "0-10", "steered": steered,
                         "said_yes": bool(rng.random() < rate)})
    return pd.DataFrame(rows)


def test_detection_d_prime_covers_a_planted_sensitivity_and_accuracy_holds_the_null():
    rng = np.random.default_rng(3)
    truth = 2 * 0.8416212335729143  # z(0.8) - z(0.2)
    covered, rejected = 0, 0
    for _ in range(N_SIMULATIONS):
        table = detection_statistics(_detection_trials(rng, 0.8, 0.2))
        row = table[(table["measure"] == "d_prime") & table["subset"].str.startswith("held_out")].iloc[0]
        covered += row["low"] <= truth <= row["high"]
        null = detection_statistics(_detection_trials(rng, 0.3, 0.3))
        rejected += null.loc[null["measure"] == "accuracy", "p_value"].iloc[0] < 0.05
    assert covered / N_SIMULATIONS >= 0.85 and rejected / N_SIMULATIONS <= 0.12
    fpr = table[(table["measure"] == "false_positive_rate") & (table["subset"] == "train")].iloc[0]
    assert fpr["n_items"] == 100 and fpr["low"] <= 0.2 <= fpr["high"]
    assert table["p_holm"].notna().sum() == 2  # the two splits' accuracy tests, one family
