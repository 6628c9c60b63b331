"""Concept injection through the real snakemake CLI, added to a copy of the tiny study: the rules wire
every experiment, grading, statistics, figures and report (the experiments: tests/test_injection.py)."""

import json
import re

import pandas as pd
import pytest

from conftest import TINY_STUDY, copy_study, merged, planned, read_config, snakemake, write_study

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


def planned_outputs(result):
    """rule -> the output files of its planned jobs, from a dry run's job blocks."""
    outputs = {}
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", result.stdout, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        found = re.search(r"^    output: (.*)$", block, flags=re.M)
        files = found.group(1).split(", ") if found else []
        outputs.setdefault(rule, []).extend(f.removesuffix(" (update)") for f in files)  # the update() flag
    return outputs


def test_extending_the_sweep_plans_one_model_load_per_experiment_and_model(injection_study, tmp_path):
    """A second model, strength and layer, planned in a copy (a dry run): one concept_vectors job per
    model, one inject_<experiment> job per (experiment, model), one grade_injection job per model;
    the finished cells stay (their job computes only the new ones: tests/test_params.py)."""
    study = copy_study(injection_study, tmp_path)
    write_study(study, merged(TINY_STUDY, INJECTION), injection={
        "models": ["tiny-instruct", "tiny-base"], "strengths": [4, 8], "layer_fractions": [0.5, 1.0],
        "localization_layer_fractions": [0.5, 1.0]})
    result = snakemake(study, "--dry-run")
    jobs = [(rule, w) for rule, w in planned(result)
            if rule in ("concept_vectors", "grade_injection") or rule.startswith("inject_")]
    models = ["model=tiny-base", "model=tiny-instruct"]
    assert sorted(jobs) == sorted([("concept_vectors", m) for m in models] + [("grade_injection", m) for m in models]
                                  + [(f"inject_{e}", m) for e in EXPERIMENTS for m in models])
    outputs = planned_outputs(result)
    assert "results/injection/localization/tiny-instruct/layer1_strength8.json" in outputs["inject_localization"]
    assert "results/injection/vectors/tiny-instruct/layer1.h5" in outputs["concept_vectors"]
    # 2 layers x 2 strengths per model; intentional control at strength 0 only
    assert len(outputs["inject_localization"]) == 2 * 4 and len(outputs["inject_intentional_control"]) == 2 * 2


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
    result = snakemake(tmp_path, "--dry-run")
    outputs = planned_outputs(result)
    assert sorted(outputs["inject_detection_logits"]) == [
        "results/injection/detection_logits/tiny-instruct/layer0.5_strength1.json"]
    assert sorted(outputs["inject_localization"]) == [
        f"results/injection/localization/tiny-instruct/layer{layer}_strength1.json" for layer in ("0.25", "0.5")]
    assert sorted(outputs["concept_vectors"]) == [
        f"results/injection/vectors/tiny-instruct/layer{layer}.h5" for layer in ("0.25", "0.5")]
    assert [rule for rule, _ in planned(result) if rule == "concept_vectors"] == ["concept_vectors"]


def test_the_seed_study_sweep_plans_one_model_load_per_experiment_and_model(tmp_path):
    """The seed study with its commented injection sweep (4 instruct models, 7 experiments, 3 + 5
    layer fractions, 4 strengths): a dry run plans one concept_vectors and one grade_injection job
    per model and one inject_<experiment> job per (experiment, model); 408 model loads before."""
    import subprocess
    import sys

    import yaml

    from conftest import REPO

    seed = yaml.safe_load((REPO / "config/seed_study.yaml").read_text())
    schema = yaml.safe_load((REPO / "config/schema/config.schema.yaml").read_text())
    defaults = {key: spec["default"] for key, spec in
                         schema["properties"]["injection"]["properties"]["resources"]["properties"].items()}
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"injection": {
        "models": [m for m in seed["models"] if seed["models"][m]["variant"] == "instruct"
                   and seed["models"][m]["size_b"] >= 7],
        "experiments": EXPERIMENTS, "layer_fractions": [0.33, 0.5, 0.67],
        "localization_layer_fractions": [0.1, 0.2, 0.3, 0.4, 0.5], "strengths": [1, 2, 4, 8],
        "n_concepts": 50, "n_trials": 50, "samples": 2,
        "resources": {key: str(REPO / path) for key, path in defaults.items()}}}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--configfile", "config/seed_study.yaml", str(sweep),
         "--directory", str(tmp_path / "study"), "--snakefile", str(REPO / "Snakefile"),
         "--config", f"prompts={{dir: {REPO / 'resources/prompts'}}}",
         f"coding={{lexicon: {REPO / 'resources/lexicons/coding.yaml'}, labelled_examples: "
         f"{REPO / 'resources/lexicons/labelled_examples.yaml'}}}", f"judge={{rubric: {REPO / 'resources/judge/rubric.yaml'}}}",
         f"selfknowledge={{resources: {{questions: {REPO / 'resources/selfknowledge/questions.yaml'}, "
         f"tasks: {REPO / 'resources/selfknowledge/tasks.yaml'}}}}}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs = planned(result)
    counts = {}
    for rule, _ in jobs:
        counts[rule] = counts.get(rule, 0) + 1
    models = 4
    assert counts["concept_vectors"] == models and counts["grade_injection"] == models
    assert {rule: n for rule, n in counts.items() if rule.startswith("inject_")} == {
        f"inject_{e}": models for e in EXPERIMENTS}
