"""Concept injection through the real snakemake CLI on tiny random models."""

import json
import re

import pandas as pd
import pytest

from conftest import REPO, snakemake, write_study
from test_workflow import planned, tiny_models

pytestmark = pytest.mark.workflow

EXPERIMENTS = ["detection_logits", "detection_responses", "forced_identification", "localization",
               "thought_vs_text", "prefill_intent", "intentional_control"]
RESOURCES = {
    "concepts": "concepts/concepts.yaml", "contrastive_pairs": "concepts/contrastive_pairs.yaml",
    "neutral_sentences": "concepts/neutral_sentences.yaml", "detection": "injection/detection.yaml",
    "localization": "injection/localization.yaml", "thought_and_intent": "injection/thought_and_intent.yaml",
    "grading_rubric": "injection/grading_rubric.yaml",
}


def injection_settings(**overrides):
    return {
        "models": ["tiny-base", "tiny-instruct"], "experiments": EXPERIMENTS, "layer_fractions": [0.5],
        "localization_layer_fractions": [0.5],
        "strengths": [1, 4], "n_concepts": 3, "n_trials": 2, "n_sentences": 3, "max_new_tokens": 4,
        "resources": {key: str(REPO / "resources" / path) for key, path in RESOURCES.items()}, **overrides,
    }


@pytest.fixture(scope="module")
def injection_study(tokenizer_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("injection")
    write_study(directory, tiny_models(tokenizer_dir), injection=injection_settings())
    snakemake(directory)
    return directory


def test_every_cell_and_table_is_written(injection_study):
    results = injection_study / "results"
    for experiment in EXPERIMENTS:
        folder = "detection_graded" if experiment == "detection_responses" else experiment
        strengths = ["0"] if experiment == "intentional_control" else ["1", "4"]
        for model in ("tiny-base", "tiny-instruct"):
            for strength in strengths:
                data = json.loads((results / f"injection/{folder}/{model}/layer0.5_strength{strength}.json").read_text())
                assert data["n_records"] == len(data["records"]) > 0
                assert {r["model"] for r in data["records"]} == {model}
                assert {r["layer"] for r in data["records"]} == {2}  # round(0.5 x 4 layers)
    graded = json.loads((results / "injection/detection_graded/tiny-instruct/layer0.5_strength4.json").read_text())
    assert graded["judge"]["name"] == "tiny-instruct"
    assert all(r["coherent"] in (True, False) for r in graded["records"])
    summary = json.loads((results / "statistics/injection_statistics.json").read_text())
    assert set(summary["sources"]) == set(EXPERIMENTS)
    localization = pd.read_csv(results / "statistics/injection_localization.csv")
    assert set(localization["kind"]) == {"injected", "random"} and set(localization["chance"]) == {1 / 3}
    answers = pd.read_csv(results / "statistics/injection_localization_answers.csv")
    assert set(answers["answer"]) == {1, 2, 3}
    forced = pd.read_csv(results / "statistics/injection_forced_identification.csv")
    assert {"top1_injected", "top1_control", "top1_leak", "top1_injected_minus_leak"} <= set(forced["measure"])
    logits = pd.read_csv(results / "statistics/injection_detection_logits.csv")
    alarms = logits[logits["measure"] == "false_alarm_rate"]
    assert set(alarms["n"]) == {10}  # one unsteered trial per wording (n_variants defaults to 10)
    report = (results / "report.md").read_text()
    assert "## Concept injection" in report
    assert re.search(r"\| detection_logits \| tiny-instruct \| 2 \| 4[.0]* \| control_question_yes_bias \|", report)
    for name in ("injection_sweep", "injection_heatmaps", "localization_answers"):
        assert (results / f"figures/{name}.png").read_bytes().startswith(b"\x89PNG")
        assert f"(figures/{name}.png)" in report


def test_extending_the_sweep_adds_cells_and_reruns_none(injection_study, tokenizer_dir):
    write_study(injection_study, tiny_models(tokenizer_dir),
                injection=injection_settings(strengths=[1, 4, 8], layer_fractions=[0.5, 1.0],
                                             localization_layer_fractions=[0.5, 1.0]))
    jobs = [(rule, w) for rule, w in planned(snakemake(injection_study, "--dry-run"))
            if rule in ("concept_vectors", "inject", "grade_injection")]
    existing = [w for _, w in jobs if "layer=0.5," in w and ("strength=1" in w or "strength=4" in w)]
    assert existing == [] and ("concept_vectors", "model=tiny-base, layer=0.5") not in jobs
    assert ("inject", "experiment=localization, model=tiny-instruct, layer=0.5, strength=8") in jobs
    # per model: the new layer's vectors; 6 strength-dependent experiments x (1 new strength at layer 0.5
    # + 3 at layer 1) and intentional control once at layer 1; grading of each new detection_responses cell
    per_model = {"concept_vectors": 1, "inject": 6 * 4 + 1, "grade_injection": 4}
    assert {rule: len([1 for r, _ in jobs if r == rule]) for rule in per_model} == {
        rule: 2 * count for rule, count in per_model.items()}


def test_contrastive_vectors_with_word_experiments_fail_naming_the_key(tokenizer_dir, tmp_path):
    write_study(tmp_path, tiny_models(tokenizer_dir),
                injection=injection_settings(vector_method="contrastive", experiments=["detection_logits"]))
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0 and "config key 'injection.vector_method'" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_localization_runs_its_own_layer_sweep(tokenizer_dir, tmp_path):
    write_study(tmp_path, tiny_models(tokenizer_dir), injection=injection_settings(
        models=["tiny-instruct"], experiments=["detection_logits", "localization"], strengths=[1],
        localization_layer_fractions=[0.25, 0.5]))
    jobs = planned(snakemake(tmp_path, "--dry-run"))
    cells = sorted(w for rule, w in jobs if rule == "inject")
    assert cells == [f"experiment={e}, model=tiny-instruct, layer={layer}, strength=1" for e, layer in
                     (("detection_logits", "0.5"), ("localization", "0.25"), ("localization", "0.5"))]
    assert sorted(w for rule, w in jobs if rule == "concept_vectors") == [
        "model=tiny-instruct, layer=0.25", "model=tiny-instruct, layer=0.5"]
