"""A job's params are exactly the config keys it reads, in canonical form: a key reruns only the
jobs that read it, and the same config with its keys in another order plans nothing."""

import json
import re

import pandas as pd
import pytest
import yaml

from conftest import TINY_STUDY, copy_study, merged, planned, snakemake, write_study
from llm_introspection.prompts import TEMPLATE_DATE

pytestmark = pytest.mark.workflow

CELL = "results/injection/localization/tiny-instruct/layer0.5_strength2.json"
INJECTION = {"injection": {"models": ["tiny-instruct"], "experiments": ["localization"], "strengths": [2],
                           "localization_layer_fractions": [0.5], "n_concepts": 3, "n_trials": 2, "n_sentences": 3}}


def test_the_same_config_with_sorted_reflowed_keys_plans_nothing(tiny_study, tmp_path):
    study = copy_study(tiny_study, tmp_path)
    config = yaml.safe_load((study / "config.yaml").read_text())
    (study / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True, default_flow_style=True, width=60))
    assert planned(snakemake(study, "--dry-run")) == []


CONFIG = merged(TINY_STUDY, INJECTION)


@pytest.fixture(scope="module")
def localization_study(tiny_study, tmp_path_factory):
    """A copy of the tiny study with one localization cell of tiny-instruct computed (its vectors too)."""
    study = copy_study(tiny_study, tmp_path_factory.mktemp("localization"))
    write_study(study, CONFIG)
    snakemake(study, CELL)
    return study


def test_a_key_reruns_only_the_jobs_that_read_it(localization_study, tmp_path):
    study, config = copy_study(localization_study, tmp_path), CONFIG
    # n_trials is read by localization cells, not by concept vectors; n_permutations by probes only
    write_study(study, config, injection={"n_trials": 3}, probing={"n_permutations": 7})
    assert planned(snakemake(study, "--dry-run", CELL)) == [("inject_localization", "model=tiny-instruct")]
    everything = {rule for rule, _ in planned(snakemake(study, "--dry-run"))}
    assert "probes" in everything and not everything & {"prepare_model", "generate", "trace", "concept_vectors",
                                                       "judge", "code_keywords", "content_statistics"}


def test_a_new_strength_computes_only_its_cells_and_a_changed_key_all(localization_study, tmp_path):
    """The sweep job of (localization, tiny-instruct) loads the model once for all its cells; run
    again for a new strength it keeps the finished cell as it is and computes the new one; run again
    for a new n_trials it recomputes both."""
    study, config = copy_study(localization_study, tmp_path), CONFIG
    cell, log = study / CELL, study / "results/logs/inject/localization/tiny-instruct.log"
    first = cell.read_bytes()
    new = CELL.replace("strength2", "strength3")
    write_study(study, config, injection={"strengths": [2, 3]})
    assert planned(snakemake(study, "--dry-run", new)) == [("inject_localization", "model=tiny-instruct")]
    snakemake(study, new)
    assert cell.read_bytes() == first and "localization: 1 of 2 cells computed, 1 current" in log.read_text()
    assert log.read_text().count("loaded tiny-instruct") == 1
    assert json.loads((study / new).read_text())["records"][0]["strength_relative"] == 3
    assert not any((study / "results/injection/localization/tiny-instruct/.finished").iterdir())
    write_study(study, config, injection={"strengths": [2, 3], "n_trials": 3})
    assert planned(snakemake(study, "--dry-run", new)) == [("inject_localization", "model=tiny-instruct")]
    snakemake(study, new)
    assert "localization: 2 of 2 cells computed, 0 current" in log.read_text()
    assert json.loads(cell.read_text())["n_records"] == 3 * json.loads(first)["n_records"] // 2


def planned_reasons(result):
    """(rule, wildcards, reason) of every job a dry run plans, the target rule `all` aside."""
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", result.stdout, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        wildcards, reason = (re.search(rf"^    {key}: (.*)$", block, flags=re.M) for key in ("wildcards", "reason"))
        if rule != "all":
            jobs.append((rule, wildcards.group(1) if wildcards else "", reason.group(1) if reason else ""))
    return jobs


def test_the_template_date_reruns_exactly_the_jobs_that_render_a_chat_template(localization_study, tmp_path):
    """prompts.template_date is a param of the jobs that render a chat template: the instruct model's
    (in its native frame) generate, concept_vectors and inject jobs, and the judge of every model;
    not of the base model's or the base-frame twin's jobs, nor of prepare_model or trace (which read
    token ids). Their outputs record the date."""
    study = copy_study(localization_study, tmp_path)
    generation = json.loads(next((study / "results/generations/tiny-instruct").glob("*.json")).read_text())
    assert generation["model"]["template_date"] == generation["prompt"]["template_date"] == TEMPLATE_DATE
    base = json.loads(next((study / "results/generations/tiny-base").glob("*.json")).read_text())
    assert base["model"]["template_date"] is base["prompt"]["template_date"] is None  # no template rendered
    assert json.loads((study / CELL).read_text())["model"]["template_date"] == TEMPLATE_DATE
    assert set(pd.read_csv(study / "results/judge/tiny-base.csv")["judge_template_date"]) == {TEMPLATE_DATE}
    write_study(study, CONFIG, prompts={"template_date": "1 Mar 2031"})
    jobs = planned_reasons(snakemake(study, "--dry-run"))
    by_params = {(rule, wildcards) for rule, wildcards, reason in jobs if "Params have changed" in reason}
    assert by_params == {("generate", "model=tiny-instruct"), ("concept_vectors", "model=tiny-instruct"),
                         ("judge", "model=tiny-base"), ("judge", "model=tiny-instruct-base-frame")}
    planned_jobs = {(rule, wildcards) for rule, wildcards, _ in jobs}
    assert {("trace", "model=tiny-instruct"), ("judge", "model=tiny-instruct"),
            ("inject_localization", "model=tiny-instruct")} <= planned_jobs  # for their new inputs (the reason shown)
    assert "prepare_model" not in {rule for rule, _ in planned_jobs}
    assert not {("generate", "model=tiny-base"), ("generate", "model=tiny-instruct-base-frame")} & planned_jobs
    # with the jobs upstream held back, the judge and inject jobs rerun for their own params; trace does not
    activations = next((study / "results/activations/tiny-instruct").glob("*.h5")).relative_to(study)
    held = planned_reasons(snakemake(study, "--dry-run", "--allowed-rules", "judge", "inject_localization", "trace",
                                     "--", "results/judge/tiny-instruct.csv", CELL, str(activations)))
    assert {(rule, wildcards) for rule, wildcards, reason in held if "Params have changed" in reason} == {
        ("judge", "model=tiny-instruct"), ("inject_localization", "model=tiny-instruct")} == {
        (rule, wildcards) for rule, wildcards, _ in held}
    snakemake(study, "results/judge/tiny-base.csv")  # the judge reads no generation that changes
    assert set(pd.read_csv(study / "results/judge/tiny-base.csv")["judge_template_date"]) == {"1 Mar 2031"}
