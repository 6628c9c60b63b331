"""Reruns of the tiny study (tests/configs/tiny.yaml) through the real snakemake CLI, each in a copy of the
session's run: what a finished study, an edit, a forced rerun or a killed run plans and computes again."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import REPO, TINY_STUDY, copy_study, planned, planned_rules, snakemake, write_study

pytestmark = pytest.mark.workflow


@pytest.fixture
def per_prompt_study(tiny_study, tmp_path):
    """A copy of the tiny study at one job per (model, prompt), on 2 prompts and without the twin, whose model
    jobs of tiny-instruct have run (on the prepared model of the copy): the directory and those jobs' targets."""
    copy_study(tiny_study, tmp_path)
    write_study(tmp_path, TINY_STUDY, jobs={"granularity": "prompt"}, conditions={"shared_frame": False},
                prompts={"ids": ["self_reference_01", "topic_control_01"]})
    targets = [f"results/activations/tiny-instruct/{p}.h5" for p in ("self_reference_01", "topic_control_01")]
    snakemake(tmp_path, *targets)
    return tmp_path, targets


def test_rerun_does_nothing(study_copy):
    result = snakemake(study_copy, "--dry-run")
    assert planned(result) == [] and "Nothing to be done" in result.stdout


def test_changing_the_lexicon_reruns_coding_and_what_follows_only(study_copy):
    lexicon = study_copy / "resources/lexicons/coding.yaml"
    lexicon.write_text(lexicon.read_text() + "# edited\n")
    assert planned_rules(snakemake(study_copy, "--dry-run")) == [
        "agreement_statistics", *["code_keywords"] * 3, "content_statistics", "figures", "introspection_profile", "probes",
        "report"]


def test_forcerun_trace_reruns_tracing_and_only_what_follows_it(study_copy):
    assert planned_rules(snakemake(study_copy, "--dry-run", "-R", "trace")) == [
        "embeddings", "figures", "introspection_profile", "probes", "report", *["trace"] * 3]


def test_rerun_reproduces_generations_bit_for_bit(study_copy):
    path = study_copy / "results/generations/tiny-instruct/self_reference_01.json"
    entropy = study_copy / "results/entropy/tiny-instruct/self_reference_01.h5"

    def content():
        data = json.loads(path.read_text())
        timings = data.pop("timings")
        with h5py.File(entropy) as h5:
            arrays = {name: h5[name][:] for name in h5}
        return json.dumps(data, sort_keys=True), arrays, timings

    before, before_arrays, before_timings = content()
    snakemake(study_copy, str(path.relative_to(study_copy)), "--forcerun", "generate")  # that model's job only
    after, after_arrays, after_timings = content()
    assert before == after  # every byte but the job timings
    assert before_timings != after_timings  # the job really ran again
    for name, array in before_arrays.items():
        np.testing.assert_array_equal(array, after_arrays[name])


def edit_prompt(study, prompt_id):
    path = study / f"resources/prompts/{prompt_id}.yaml"
    path.write_text(path.read_text().replace("instruct: \"", "instruct: \"Please: "))


def test_editing_one_prompt_reruns_only_its_jobs(per_prompt_study):
    """Only the edited prompt's model jobs (what follows them reruns as in the test below)."""
    study, targets = per_prompt_study
    os.utime(study / "resources/prompts/topic_control_01.yaml")  # a touch alone changes nothing
    assert planned(snakemake(study, "--dry-run", *targets)) == []
    edit_prompt(study, "self_reference_01")
    jobs = planned(snakemake(study, "--dry-run", *targets))
    assert sorted(jobs) == [(rule, "model=tiny-instruct, prompt=self_reference_01") for rule in ("generate", "trace")]


def test_editing_one_prompt_reruns_its_model_jobs_at_model_granularity(study_copy):
    edit_prompt(study_copy, "self_reference_01")
    assert planned_rules(snakemake(study_copy, "--dry-run")) == [
        "agreement_statistics", *["code_keywords"] * 3, "content_statistics", "embeddings", "entropy_statistics",
        "figures", *["generate"] * 3, "introspection_profile", *["judge"] * 3, "probes", "report", *["trace"] * 3]


def test_killed_run_leaves_no_output_taken_as_complete(study_copy):
    """Generation (now 100 tokens x 4 reps) killed in a copy of the tiny study whose generations are removed."""
    write_study(study_copy, TINY_STUDY, generation={"max_new_tokens": 100, "reps": 4})
    for folder in ("generations", "entropy", "logs/generate"):
        shutil.rmtree(study_copy / "results" / folder)
    targets = [f"results/generations/{m}/self_reference_01.json" for m in ("tiny-base", "tiny-instruct")]
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(study_copy), "--configfile", str(study_copy / "config.yaml"), "--cores", "2", *targets]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started = study_copy / "results/logs/generate/tiny-base.log"
    deadline = time.time() + 300
    while not (started.exists() and "loaded" in started.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    assert started.exists(), "generate never started"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed = [p for p in (study_copy / "results").rglob("*") if "tiny-base" in p.parts
              and p.suffix in (".json", ".h5") and ("generations" in p.parts or "entropy" in p.parts)]
    assert killed == []  # the killed job left nothing that looks finished
    finished = {p.parent.name for p in (study_copy / "results/generations").rglob("*.json")}
    for path in (study_copy / "results/generations").rglob("*.json"):
        json.loads(path.read_text())  # what another job finished is whole, and kept
    rerun = planned(snakemake(study_copy, "--dry-run", *targets))
    assert {w for rule, w in rerun if rule == "generate"} == {
        f"model={m}" for m in {"tiny-base", "tiny-instruct"} - finished}
    snakemake(study_copy, "--unlock")  # what a user does after a kill: the lock outlives the process
    snakemake(study_copy, *targets)
    assert len(list((study_copy / "results/generations").rglob("*.json"))) == 8

