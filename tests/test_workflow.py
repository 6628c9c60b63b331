"""The real snakemake CLI on tiny random models: what the tiny study (tests/configs/tiny.yaml) writes, and
what a study with a base/instruct pair adds (reruns and edits: tests/test_reruns.py)."""

import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, TINY_STUDY, copy_study, snakemake, write_study

pytestmark = pytest.mark.workflow


TWIN = "tiny-instruct-base-frame"  # the shared-frame condition's twin of tiny-instruct


def test_full_run_writes_valid_outputs(tiny_study):
    prompts = ["unconstrained_01", "self_reference_01", "structured_novelty_01", "topic_control_01"]
    for model in ("tiny-base", "tiny-instruct"):
        for prompt in prompts:
            generation = json.loads((tiny_study / f"results/generations/{model}/{prompt}.json").read_text())
            assert generation["model"]["name"] == model and generation["prompt"]["id"] == prompt
            assert generation["prompt"]["chat_template"] == (model == "tiny-instruct")
            assert [r["seed"] for r in generation["reps"]] == [42, 43]
            assert all(1 <= r["n_tokens"] <= 6 for r in generation["reps"])
            assert set(generation["versions"]) >= {"torch", "transformers", "python"}
            with h5py.File(tiny_study / f"results/entropy/{model}/{prompt}.h5") as h5:
                assert list(h5["n_tokens"][:]) == [r["n_tokens"] for r in generation["reps"]]
                assert np.isfinite(h5["first_token_entropy_t1"][:]).all()
            with h5py.File(tiny_study / f"results/activations/{model}/{prompt}.h5") as h5:
                assert json.loads(h5.attrs["hidden_state_indices"]) == [0, 2, 4]
                assert h5["prompt/hidden_states"].shape == (3, len(generation["prompt"]["token_ids"]), 32)
                for rep in generation["reps"]:
                    group = h5[f"rep_{rep['rep']:02d}"]
                    assert group["hidden_states"].shape == (3, rep["n_tokens"], 32)
                    assert list(group["token_ids"][:]) == rep["token_ids"]


def test_shared_frame_twin_reuses_the_weights_and_reads_the_base_text(tiny_study):
    manifests = {m: json.loads((tiny_study / f"results/models/{m}/manifest.json").read_text())
                 for m in ("tiny-instruct", TWIN)}
    assert manifests[TWIN]["load_path"] == manifests["tiny-instruct"]["load_path"]
    assert (manifests[TWIN]["frame"], manifests[TWIN]["twin_of"]) == ("base", "tiny-instruct")
    assert not (tiny_study / f"results/models/{TWIN}/weights").exists()
    generations = {m: json.loads((tiny_study / f"results/generations/{m}/self_reference_01.json").read_text())
                   for m in ("tiny-base", "tiny-instruct", TWIN)}
    assert generations[TWIN]["prompt"]["chat_template"] is False
    assert generations[TWIN]["prompt"]["text"] == generations["tiny-base"]["prompt"]["text"]
    assert generations[TWIN]["prompt"]["text"] != generations["tiny-instruct"]["prompt"]["text"]
    coded = pd.read_csv(tiny_study / f"results/coding/keyword/{TWIN}.csv")
    assert set(coded["condition"]) == {"shared_frame"} and set(coded["variant"]) == {"instruct"}


def test_statistics_run_on_the_coded_and_judged_completions(tiny_study):
    coded = pd.read_csv(tiny_study / "results/coding/keyword/tiny-instruct.csv")
    assert len(coded) == 4 * 2 and set(coded["self_reference"]) <= {0, 1, 2, 3}
    content = pd.read_csv(tiny_study / "results/statistics/content_statistics.csv")
    paired = content[content["comparison"] == "instruct_vs_base"]
    assert paired["note"].str.contains("no family has both").all()  # one variant per family here
    assert set(paired["condition"]) == {"native", "shared_frame"}
    assert (content.loc[content["condition"] == "shared_frame", "comparison"] == "instruct_vs_base").all()
    mixed = json.loads((tiny_study / "results/statistics/mixed_effects.json").read_text())
    assert mixed["dimensions"]["self_reference"]["instruct"]["estimable"] is False
    entropy = pd.read_csv(tiny_study / "results/statistics/entropy_statistics_enhanced.csv")
    described = entropy[(entropy["comparison"] == "descriptive") & (entropy["dimension"] == "first_token_entropy_t1")]
    assert len(described) == 3 * 4 and set(described["n_a"]) == {1}  # 3 models x 4 prompt types, 1 prompt each
    judged = pd.read_csv(tiny_study / "results/judge/tiny-base.csv")
    assert len(judged) == 8 and judged["judge_self_reference"].between(0, 3).all()
    assert set(judged["judge_model"]) == {"tiny-instruct"}
    agreement = json.loads((tiny_study / "results/statistics/agreement_statistics.json").read_text())
    assert agreement["dimensions"]["hedging"]["all_models"]["n"] == 24
    probes = pd.read_csv(tiny_study / "results/probing/probes.csv")
    assert set(probes["task"]) == {
        "base_vs_instruct", "prompt_type", "self_reference_content", "self_reference_pre_generation",
        "self_reference_text_only", "identical_text_reader", "identical_text_generator", "weight_noise_calibration"}
    # no family has both variants: no pair, and models of different families are never pooled
    variant = probes[probes["task"] == "base_vs_instruct"]
    assert len(variant) >= 1 and not variant["estimable"].any()
    assert all("no base/instruct pair" in reason for reason in variant["reason"])
    summary = json.loads((tiny_study / "results/statistics/probing_statistics.json").read_text())
    assert "grouped by prompt_id" in summary["folds"]
    assert summary["identity"]["identical_text"].startswith("not estimable: no base/instruct pair")
    assert summary["identity"]["weight_difference_calibration"].startswith("not estimable")
    assert len(summary["self_reference_text"]["residual_over_text"]) > 0
    assert not list((tiny_study / "results").glob("activations_cross")) + list(
        (tiny_study / "results").glob("activations_noise"))


def test_a_base_instruct_pair_gets_identity_probes_and_their_calibration(study_copy):
    """A base model of tiny-instruct's family and size makes a pair: the identical-text traces (each
    model on its partner's completions) and the weight-noise trace run, and the probing summary
    estimates what the tiny study, without a pair, calls not estimable."""
    base = "tiny-llama-base"
    instruct = TINY_STUDY["models"]["tiny-instruct"]
    models = {**TINY_STUDY["models"], base: {**instruct, "variant": "base", "source": {**instruct["source"], "seed": 2}}}
    write_study(study_copy, TINY_STUDY, models=models)
    snakemake(study_copy, "results/statistics/probing_statistics.json")
    for model, partner in ((base, "tiny-instruct"), ("tiny-instruct", base)):
        generation = json.loads((study_copy / f"results/generations/{partner}/self_reference_01.json").read_text())
        with h5py.File(study_copy / f"results/activations_cross/{model}/self_reference_01.h5") as cross:
            assert list(cross["prompt/token_ids"]) == generation["prompt"]["token_ids"]  # the partner's ids
            for rep in generation["reps"]:
                assert list(cross[f"rep_{rep['rep']:02d}/token_ids"]) == rep["token_ids"]
    assert (study_copy / f"results/activations_noise/{base}/self_reference_01.h5").exists()
    assert not list((study_copy / "results/activations_noise").glob("tiny-instruct"))  # noise only on the base
    summary = json.loads((study_copy / "results/statistics/probing_statistics.json").read_text())["identity"]
    assert summary["pairs"] == [[base, "tiny-instruct"]]
    for probe in ("reader", "generator"):
        assert summary["identical_text"][probe]["estimable"], summary["identical_text"][probe]
    calibration = summary["weight_difference_calibration"]
    assert calibration["selection"]["estimable"] and len(calibration["by_layer"]) >= 1
    for row in calibration["by_layer"]:
        assert row["margin"] == pytest.approx(row["accuracy_pair"] - row["accuracy_noise"])
    assert {row["model"] for row in summary["direction_content"]["rows"]} <= {base, "tiny-instruct"}
    probes = pd.read_csv(study_copy / "results/probing/probes.csv")
    variant = probes[probes["task"] == "base_vs_instruct"]
    assert set(variant.loc[variant["estimable"], "subset"]) == {  # the pair in each condition
        f"pair={base}/tiny-instruct", f"shared_frame: pair={base}/{TWIN}"}


FIGURES = ("keyword_scores", "judge_scores", "agreement", "first_token_entropy", "entropy_profiles",
           "probe_accuracy", "activation_embeddings")


def test_report_has_its_sections_figures_and_an_html_twin(tiny_study, tmp_path):
    report = (tiny_study / "results/report.md").read_text()
    for heading in ("## Design", "## Headline results", "## Caveats", "## Keyword content coding", "## LLM judge",
                    "### Keyword coder vs judge", "## Token entropy", "## Activation geometry and linear probes",
                    "## Mixed-effects models", "### Not estimable in this design", "## Provenance"):
        assert f"\n{heading}" in report, heading
    for name in FIGURES:
        assert (tiny_study / f"results/figures/{name}.png").read_bytes().startswith(b"\x89PNG")
        assert f"(figures/{name}.png)" in report
    assert "confounded with family" in report and f"| {TWIN} |" in report and "Shared-frame condition: on" in report
    embeddings = pd.read_csv(tiny_study / "results/probing/embeddings.csv")
    assert set(embeddings["method"]) == {"pca", "umap"} and set(embeddings["hidden_state_index"]) == {2}
    assert len(embeddings) == 2 * 3 * 4 * 2  # methods x models x prompts x reps
    snakemake(copy_study(tiny_study, tmp_path / "study"), "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    assert all(f"{name}.png" in html for name in FIGURES) and "report.md" in html


def test_embeddings_figures_and_report_are_reproduced_byte_for_byte(study_copy):
    paths = [study_copy / f"results/figures/{name}.png" for name in FIGURES] + [
        study_copy / "results/report.md", study_copy / "results/probing/embeddings.csv"]
    before = {path: path.read_bytes() for path in paths}
    snakemake(study_copy, "--forcerun", "embeddings")
    assert [path for path in paths if path.read_bytes() != before[path]] == []


@pytest.mark.parametrize("granularity, jobs", [("model", 24), ("prompt", 960)])
def test_seed_study_dry_run_plans_every_output_without_loading_models(granularity, jobs, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(REPO / "config/seed_study.yaml"), "--dry-run",
         "--config", f"jobs={{granularity: {granularity}}}", f"prompts={{dir: {REPO / 'resources/prompts'}}}", f"coding={{lexicon: {REPO / 'resources/lexicons/coding.yaml'}, labelled_examples: {REPO / 'resources/lexicons/labelled_examples.yaml'}}}",
         f"judge={{rubric: {REPO / 'resources/judge/rubric.yaml'}}}",
         f"selfknowledge={{resources: {{questions: {REPO / 'resources/selfknowledge/questions.yaml'}, "
         f"tasks: {REPO / 'resources/selfknowledge/tasks.yaml'}}}}}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.M))
    # 16 models and the 8 shared-frame twins of the instruct models
    assert (counts["prepare_model"], counts["generate"], counts["trace"]) == ("24", str(jobs), str(jobs))
    outputs = re.findall(r"^    output: (.*)$", result.stdout, flags=re.M)
    planned_files = {path for line in outputs for path in line.split(", ")}
    for kind, suffix in (("generations", ".json"), ("entropy", ".h5"), ("activations", ".h5")):
        assert len([p for p in planned_files if p.startswith(f"results/{kind}/") and p.endswith(suffix)]) == 960
    assert not (tmp_path / "results").exists()  # planning ran no job and loaded no model


@pytest.mark.parametrize(
    "change, message",
    [
        ({"generation": {"temperature": "hot"}}, "key 'generation.temperature': 'hot' is not of type 'number'"),
        ({"judge": {"model": "nobody"}}, "config key 'judge.model': 'nobody' is not one of the models"),
    ],
    ids=["schema", "judge"],
)
def test_invalid_config_fails_before_any_job_naming_the_key(change, message, tmp_path):
    """The schema's message (every case: tests/test_design.py) and the Snakefile's own check reach the
    terminal, without a traceback, before any job."""
    write_study(tmp_path, TINY_STUDY, **change)
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_unknown_model_package_fails_naming_the_model(tmp_path):
    ghost = {"family": "f", "size_b": 1, "variant": "base",
             "source": {"kind": "gguf_package", "package": "no_such_pkg_xyz", "file": "m.gguf"}}
    write_study(tmp_path, TINY_STUDY, models={"ghost": ghost})
    result = snakemake(tmp_path, "results/models/ghost/manifest.json", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "ghost" in output and "no_such_pkg_xyz" in output, output[-3000:]
    assert not (tmp_path / "results/models/ghost/manifest.json").exists()


