"""The self-knowledge rules in the workflow: planned by a dry run of the default study, every GPU
rule in the SLURM profiles, the job's output and provenance, and the introspection profile."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY_LLAMA, planned, snakemake, tiny_spec, write_study

from llm_introspection.config import read_yaml
from llm_introspection.errors import InputError
from llm_introspection.prompts import TEMPLATE_DATE
from llm_introspection.selfknowledge.profile import MIN_MODELS, correlations, spearman_row
from llm_introspection.study.statistics import spearman_exact


def test_default_study_plans_every_evaluation_per_model_detection_where_there_is_data_and_the_profile(tmp_path):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    write_study(tmp_path, config)
    result = snakemake(tmp_path, "-n", timeout=300)
    jobs = [w for rule, w in planned(result) if rule == "selfknowledge"]
    # five evaluations x (SmolLM2 + its three finetuned variants); gemma3-270m is not evaluated
    assert len(jobs) == 5 * 4 and not any("gemma3" in w for w in jobs)
    assert sorted(w for w in jobs if "evaluation=detection" in w) == [
        f"evaluation=detection, model=smollm2-135m-instruct{suffix}"
        for suffix in ("", "-ft-flipped-labels", "-ft-neutral-red-blue", "-ft-original")]
    base_job = re.search(r"^rule selfknowledge:\n    input: (.*)\n    output: results/selfknowledge/detection/"
                         r"smollm2-135m-instruct\.json", result.stdout, flags=re.M)
    assert all(f"results/finetune/smollm2-135m-instruct/{v}/data/heldout.json" in base_job.group(1)
               for v in ("original", "flipped_labels", "neutral_red_blue"))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.M))
    for rule in ("selfknowledge_statistics", "selfknowledge_figures", "introspection_profile", "report"):
        assert counts[rule] == "1", rule
    # off when no model is listed: no self-knowledge job, the profile still joins the core study
    write_study(tmp_path, config, selfknowledge={"models": []})
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", snakemake(tmp_path, "-n", "--quiet", "rules").stdout, flags=re.M))
    assert "selfknowledge" not in counts and counts["introspection_profile"] == "1"


def test_every_gpu_rule_is_in_both_slurm_profiles():
    gpu_rules = [name for smk in (REPO / "rules").glob("*.smk")
                 for name, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", smk.read_text(), flags=re.M)
                 if "gpu=" in body]
    assert "selfknowledge" in gpu_rules
    profile = read_yaml(REPO / "profiles/slurm/config.yaml")
    test_profile = read_yaml(REPO / "tests/data/slurm-test-profile.yaml")
    for rule in gpu_rules:
        assert profile["set-resources"][rule]["slurm_partition"] == "SET-ME-gpu-partition", rule
        assert rule in profile["set-threads"], rule
        assert test_profile["set-resources"][rule]["slurm_partition"] == "gpu", rule
    for rule in ("selfknowledge_statistics", "selfknowledge_figures", "introspection_profile"):
        assert profile["groups"][rule] == "analysis"


def test_job_writes_records_with_provenance(tokenizer_dir, tmp_path):
    from llm_introspection.models import prepare_model
    from llm_introspection.selfknowledge.jobs import run_selfknowledge

    manifest = prepare_model("tiny", tiny_spec(tokenizer_dir, TINY_LLAMA, variant="instruct"), tmp_path / "m")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out.json"
    settings = {"answer_pairs": [["Up", "Down"]], "questions_per_category": 1, "batch_size": 8}
    run_selfknowledge(tmp_path / "manifest.json", "answer_shift", out, settings,
                      {"questions": str(REPO / "resources/selfknowledge/questions.yaml")},
                      {"device": "cpu", "dtype": "float32"}, 1, template_date=TEMPLATE_DATE)
    data = json.loads(out.read_text())
    assert data["model"]["source"]["kind"] == "tiny_random" and data["model"]["dtype"] == "float32"
    assert data["texts"]["version"] == 1 and len(data["texts"]["sha256"]) == 64
    assert data["versions"]["torch"] and data["settings"] == settings
    assert len(data["records"]) == 13 and {r["pair"] for r in data["records"]} == {"Up/Down"}
    assert data["timing"]["records_per_s"] > 0
    # an option that is not one token after the prefill is refused, naming it (" Foo" is two tokens here)
    with pytest.raises(InputError, match="' Foo'"):
        run_selfknowledge(tmp_path / "manifest.json", "answer_shift", out, settings | {"answer_pairs": [["Foo", "Bar"]]},
                          {"questions": str(REPO / "resources/selfknowledge/questions.yaml")},
                          {"device": "cpu", "dtype": "float32"}, 1, template_date=TEMPLATE_DATE)


def test_correlations_are_not_estimable_below_the_minimum_and_find_a_planted_rank_order():
    two = pd.DataFrame({"model": ["a", "b"], "x": [1.0, 2.0], "y": [2.0, 3.0]})
    (row,) = correlations(two).to_dict("records")
    assert not row["estimable"] and "need at least" in row["reason"] and row["n_models"] == 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=7)
    row = spearman_row(x, x + rng.normal(0, 0.1, size=7), n_resamples=500)
    assert row["n_models"] == 7 >= MIN_MODELS and row["spearman_rho"] > 0.8 and row["low"] > 0 and row["p_value"] < 0.01
    assert row["p_value_min"] == pytest.approx(2 / 5040)
    # the exact p agrees with scipy's permutation test of spearmanr (all orderings)
    y = rng.normal(size=5)
    assert spearman_row(x[:5], y)["p_value"] == pytest.approx(spearman_exact(x[:5], y)[1])
    null = [spearman_row(rng.normal(size=6), rng.normal(size=6), n_resamples=50)["p_value"] < 0.05 for _ in range(200)]
    assert np.mean(null) <= 0.08
    assert spearman_row([1, 1, 1, 1], [1, 2, 3, 4])["reason"].endswith("constant over models")


def test_parse_time_and_analysis_modules_of_the_study_do_not_import_torch():
    import os
    import subprocess
    import sys

    modules = ["selfknowledge.design", "selfknowledge.texts", "selfknowledge.scoring", "selfknowledge.statistics",
               "selfknowledge.profile", "report.selfknowledge"]
    code = "import sys\n" + "".join(f"import llm_introspection.{m}\n" for m in modules) + "print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
    assert result.stdout.strip() == "False", result.stderr
