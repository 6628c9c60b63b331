"""Concept injection through the real snakemake CLI, added to a copy of the tiny study: the rules wire
every experiment, grading, statistics, figures and report (the experiments: tests/test_injection.py)."""

import json
import re

import pandas as pd
import pytest

from conftest import TINY_STUDY, copy_study, merged, read_config, snakemake, write_study
from test_workflow import planned

pytestmark = pytest.mark.workflow

INJECTION = read_config("tiny_injection.yaml")
EXPERIMENTS = INJECTION["injection"]["experiments"]


@pytest.fixture(scope="module")
def injection_study(tiny_study, tmp_path_factory):
    """tests/configs/tiny_injection.yaml over a copy of the tiny study: only injection jobs and the report run."""
    directory = copy_study(tiny_study, tmp_path_factory.mktemp("injection"))
    write_study(directory, merged(TINY_STUDY, INJECTION))
    snakemake(directory)
    return directory


def test_every_cell_and_table_is_written(injection_study):
    results = injection_study / "results"
    for experiment in EXPERIMENTS:
        folder = "detection_graded" if experiment == "detection_responses" else experiment
        strength = "0" if experiment == "intentional_control" else "4"
        data = json.loads((results / f"injection/{folder}/tiny-instruct/layer0.5_strength{strength}.json").read_text())
        assert data["n_records"] == len(data["records"]) > 0
        assert {r["model"] for r in data["records"]} == {"tiny-instruct"}
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


def test_extending_the_sweep_adds_cells_and_reruns_none(injection_study, tmp_path):
    """A second model, strength and layer, planned in a copy (a dry run)."""
    study = copy_study(injection_study, tmp_path)
    write_study(study, merged(TINY_STUDY, INJECTION), injection={
        "models": ["tiny-instruct", "tiny-base"], "strengths": [4, 8], "layer_fractions": [0.5, 1.0],
        "localization_layer_fractions": [0.5, 1.0]})
    jobs = [(rule, w) for rule, w in planned(snakemake(study, "--dry-run"))
            if rule in ("concept_vectors", "inject", "grade_injection")]
    assert [w for _, w in jobs if "model=tiny-instruct, layer=0.5, strength=4" in w] == []
    assert ("concept_vectors", "model=tiny-instruct, layer=0.5") not in jobs
    assert ("inject", "experiment=localization, model=tiny-instruct, layer=0.5, strength=8") in jobs
    # tiny-instruct: the new layer's vectors; 6 strength-dependent experiments x (1 new strength at layer 0.5
    # + 2 at layer 1) and intentional control once at layer 1; grading of each new detection_responses cell.
    # tiny-base: vectors at both layers, 6 x 4 cells and intentional control at both layers, 4 gradings
    counts = {"concept_vectors": 1 + 2, "inject": 6 * 3 + 1 + 6 * 4 + 2, "grade_injection": 3 + 4}
    assert {rule: len([1 for r, _ in jobs if r == rule]) for rule in counts} == counts


def test_contrastive_vectors_with_word_experiments_fail_naming_the_key(tmp_path):
    write_study(tmp_path, merged(TINY_STUDY, INJECTION),
                injection={"vector_method": "contrastive", "experiments": ["detection_logits"]})
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0 and "config key 'injection.vector_method'" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_localization_runs_its_own_layer_sweep(tokenizer_dir, tmp_path):
    write_study(tmp_path, merged(TINY_STUDY, INJECTION), tokenizer_dir, injection={
        "experiments": ["detection_logits", "localization"], "strengths": [1],
        "localization_layer_fractions": [0.25, 0.5]})
    jobs = planned(snakemake(tmp_path, "--dry-run"))
    cells = sorted(w for rule, w in jobs if rule == "inject")
    assert cells == [f"experiment={e}, model=tiny-instruct, layer={layer}, strength=1" for e, layer in
                     (("detection_logits", "0.5"), ("localization", "0.25"), ("localization", "0.5"))]
    assert sorted(w for rule, w in jobs if rule == "concept_vectors") == [
        "model=tiny-instruct, layer=0.25", "model=tiny-instruct, layer=0.5"]
