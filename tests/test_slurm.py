"""Part of the tiny study (tests/configs/tiny.yaml) through a real one-node SLURM cluster (.ci/slurm-cluster.sh)
with `snakemake --profile slurm`, the profile installed by `setup.sh --slurm-profile` and given the test cluster's
values, compared with the session's local run of it. The targets take every kind of model rule (generate, trace,
judge) and a group of analysis rules through the cluster; the rest of the study adds jobs of the same kinds."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import REPO, TINY_STUDY, merged, write_study

pytestmark = pytest.mark.workflow

CLUSTER_SCRIPT = REPO / ".ci/slurm-cluster.sh"
OVERRIDES = REPO / "tests/data/slurm-test-profile.yaml"
MODEL_RULES = {"generate", "trace", "judge"}
LOCAL_RULES = {"all", "prepare_model"}
# seconds for one snakemake run on the cluster; a machine shared with other work may need more
TIMEOUT = int(os.environ.get("LLM_INTROSPECTION_SLURM_TIMEOUT", "900"))
IN_CI = os.environ.get("LLM_INTROSPECTION_CI") == "1"
# generate for the three models (the twin included), trace and judge of one each, and the analysis
# rules on the generations (keyword coding per model, entropy statistics), grouped into one job
MODELS = ("tiny-base", "tiny-instruct", "tiny-instruct-base-frame")
TARGETS = ("results/statistics/entropy_statistics_enhanced.csv",
           *(f"results/coding/keyword/{model}.csv" for model in MODELS),
           "results/activations/tiny-instruct/self_reference_01.h5", "results/judge/tiny-base.csv")


def cluster(action):
    """Run .ci/slurm-cluster.sh; (ok, output)."""
    try:
        result = subprocess.run(["bash", str(CLUSTER_SCRIPT), action], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as error:
        return False, f"timed out after {error.timeout} s"
    return result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="session")
def slurm_cluster():
    """The test cluster, up until the session ends (taken down only if this started it)."""
    already_up, _ = cluster("status")
    ok, output = cluster("up")
    if not ok:
        cluster("down")  # whatever it did start
        message = f"the test SLURM cluster did not start (.ci/slurm-cluster.sh up):\n{output[-3000:]}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    yield
    if not already_up:
        cluster("down")


def cluster_profile(config_home):
    """The profile a cluster user installs (setup.sh --slurm-profile into `config_home`, where
    `snakemake --profile slurm` finds it), edited to the test cluster's values; its directory."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home)}
    subprocess.run(["bash", str(REPO / "setup.sh"), "--slurm-profile"], check=True, env=env, capture_output=True)
    directory = config_home / "snakemake/slurm"
    installed = yaml.safe_load((directory / "config.yaml").read_text())
    text = yaml.safe_dump(merged(installed, yaml.safe_load(OVERRIDES.read_text())), sort_keys=False)
    assert "SET-ME" not in text, f"{OVERRIDES.name} leaves a value of profiles/slurm unset:\n{text}"
    (directory / "config.yaml").write_text(text)
    return directory


def squeue():
    return subprocess.run(["squeue", "--states=all", "-h", "-o", "%i %T %P %j"], capture_output=True, text=True).stdout


def snakemake_on_slurm(directory, profile, name):
    """What a cluster user runs, `snakemake --profile slurm` from the repository (plus --verbose, for the
    sbatch lines) on TARGETS, bounded by TIMEOUT; its output, also kept in `directory`/`name`.log."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(directory), "--configfile", str(directory / "config.yaml"), "--profile", "slurm", "--verbose",
               *TARGETS]
    env = {**os.environ, "XDG_CONFIG_HOME": str(profile.parents[1])}
    log = directory / f"{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                                   env=env)
        try:
            returncode = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.terminate()  # snakemake cancels its SLURM jobs
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"snakemake on SLURM did not finish in {TIMEOUT} s; jobs:\n{squeue()}\n"
                        f"log tail:\n{log.read_text()[-4000:]}")
    output = log.read_text()
    assert returncode == 0, f"snakemake on SLURM failed:\n{output[-6000:]}\njobs:\n{squeue()}"
    return output


@pytest.fixture(scope="module")
def slurm_study(tokenizer_dir, slurm_cluster, tmp_path_factory):
    """(directory, snakemake output, merged profile) of the tiny study's TARGETS run through SLURM."""
    directory = tmp_path_factory.mktemp("slurm")
    write_study(directory, TINY_STUDY, tokenizer_dir)
    profile = cluster_profile(tmp_path_factory.mktemp("config"))
    return directory, snakemake_on_slurm(directory, profile, "run"), profile


def job_record(job_id):
    """`scontrol show job` as a dict (finished jobs stay visible for MinJobAge, an hour)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


def submissions(output):
    """{SLURM job id: its log file} of every job the run submitted."""
    return dict(re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.$", output, flags=re.M))


def planned_counts(output):
    """{rule: number of jobs} from the run's job stats table."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def test_every_cluster_job_ran_in_slurm_with_one_gpu_for_model_rules_only(slurm_study):
    _, output, profile = slurm_study
    ran = {}  # rule: jobs of it that ran
    grouped = set(yaml.safe_load((profile / "config.yaml").read_text()).get("groups", {}))
    for job_id, log in submissions(output).items():
        text = Path(log).read_text()
        rules = re.findall(r"^localrule (\w+):$", text, flags=re.M)  # each rule it ran, in its own srun step
        # the task prolog of .ci/slurm-cluster.sh prints each task's environment into the job's log
        tasks = re.findall(r"^slurm-cluster task: job=(\d+) step=(\S*) .* CUDA_VISIBLE_DEVICES=(\S+)$", text,
                           flags=re.M)
        model_job = bool(MODEL_RULES & set(rules))
        record = job_record(job_id)
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), record
        assert record["Partition"] == ("gpu" if model_job else "cpu"), (rules, record)
        gpus = re.findall(r"gpu:(\d+)", record.get("TresPerJob", ""))
        assert gpus == (["1"] if model_job else []), (rules, record)
        assert {(job, step) for job, step, _ in tasks} == {(job_id, str(s)) for s in ["", *range(len(rules))]}, text
        assert {devices for _, _, devices in tasks} == ({"0"} if model_job else {"unset"}), (rules, tasks)
        assert len(rules) == 1 or set(rules) <= grouped, rules
        for rule in rules:
            ran[rule] = ran.get(rule, 0) + 1
    assert ran == {rule: n for rule, n in planned_counts(output).items() if rule not in LOCAL_RULES}
    assert MODEL_RULES <= set(ran)
    assert len(submissions(output)) < sum(ran.values()), "the profile's analysis group did not run as one job"


def comparable(path):
    """A result file's content, without what differs between runs (generation timings); others hashed."""
    if path.suffix == ".h5":
        with h5py.File(path) as h5:
            content = {"attrs": dict(h5.attrs)}
            h5.visititems(lambda name, item: content.update(
                {name: item[()] if isinstance(item, h5py.Dataset) else dict(item.attrs)}))
            return content
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if "generations" in path.parts:
            data.pop("timings")
        return data
    return hashlib.sha256(path.read_bytes()).hexdigest()


def result_files(directory):
    results = directory / "results"
    return sorted(p.relative_to(results) for p in results.rglob("*")
                  if p.is_file() and not {"logs", "benchmarks", "models"} & set(p.relative_to(results).parts))


def test_outputs_match_a_local_run(slurm_study, tiny_study):
    directory, _, _ = slurm_study
    files = result_files(directory)
    assert {Path(target).relative_to("results") for target in TARGETS} <= set(files) and len(files) > 20
    for name in files:
        local, on_slurm = comparable(tiny_study / "results" / name), comparable(directory / "results" / name)
        np.testing.assert_equal(on_slurm, local, err_msg=str(name))


def test_rerun_submits_nothing(slurm_study):
    directory, _, profile = slurm_study
    jobs_before = squeue()
    output = snakemake_on_slurm(directory, profile, "rerun")
    assert "Nothing to be done" in output and submissions(output) == {}
    assert squeue() == jobs_before


def test_the_profile_is_found_by_name_and_local_limits_do_not_throttle_the_cluster(slurm_study):
    """profiles/default, which Snakemake loads on top, lets one model job run at a time on one machine;
    on the cluster the model jobs are submitted side by side (queued by SLURM, not by Snakemake)."""
    _, output, _ = slurm_study
    assert "Using profiles slurm and workflow specific profile" in output
    windows = []  # (submitted, ended) of each model job
    for job_id, log in submissions(output).items():
        if MODEL_RULES & set(re.findall(r"^localrule (\w+):$", Path(log).read_text(), flags=re.M)):
            record = job_record(job_id)
            windows.append((record["SubmitTime"], record["EndTime"]))
    assert len(windows) >= 4
    overlapping = sum(1 for a in windows for b in windows if a != b and a[0] <= b[0] < a[1])
    assert overlapping >= 1, f"each model job was submitted only after the previous one ended: {sorted(windows)}"
