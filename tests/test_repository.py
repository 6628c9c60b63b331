"""Repository hygiene: pinned environments, rule directives, formatting, lint and profiles."""

import os
import re
import subprocess
import sys
import tomllib

import yaml

from conftest import REPO
from llm_introspection.config import read_yaml


def pins(requirements):
    return dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", r).groups() for r in requirements)


def env_pins(name):
    dependencies = read_yaml(REPO / f"envs/{name}.yaml")["dependencies"]
    (pip,) = [d["pip"] for d in dependencies if isinstance(d, dict)]
    return pins(pip)


def test_environments_agree_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = pins(project["dependencies"])
    for name in ("model", "analysis"):
        for package, version in env_pins(name).items():
            assert pinned.get(package) == version, f"envs/{name}.yaml pins {package}=={version}"
    assert {"torch", "transformers", "h5py"} <= set(env_pins("model"))
    assert {"pingouin", "statsmodels", "scikit-learn"} <= set(env_pins("analysis"))


def test_every_rule_names_an_environment_log_and_script():
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        for rule in re.split(r"^rule ", text, flags=re.M)[1:]:
            name = rule.split(":")[0]
            for directive in ("log:", "conda:", "script:", "threads:"):
                assert f"    {directive}" in rule, f"rule {name} in {smk.name} lacks {directive}"


def run(*command):
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_snakefmt_and_lint_are_clean():
    formatted = run(sys.executable, "-m", "snakefmt", "--check", ".")
    assert formatted.returncode == 0, formatted.stderr
    lint = run(sys.executable, "-m", "snakemake", "--lint")
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout + lint.stderr


def install_slurm_profile(config_home):
    """What a cluster user runs once: setup.sh --slurm-profile, into `config_home`."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home)}
    result = subprocess.run(["bash", str(REPO / "setup.sh"), "--slurm-profile"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    installed = config_home / "snakemake/slurm/config.yaml"
    assert installed.read_text() == (REPO / "profiles/slurm/config.yaml").read_text()
    return env


def test_slurm_profile_by_name_requests_each_models_gpus_for_model_rules_only(tmp_path):
    """`snakemake --profile slurm` as the README says (a dry run needs no cluster), on the seed study
    with one model on two GPUs and one on as many as its size needs."""
    env = install_slurm_profile(tmp_path / "config")
    study = read_yaml(REPO / "config/seed_study.yaml")
    study["models"]["llama-3.1-8b-instruct"]["gpus"] = 2  # the judge
    study["models"]["gemma-2-9b"]["gpus"] = "auto"  # 18.5 GB of weights
    study["runtime"]["gpu_memory_gb"] = 16  # 9.6 GiB for weights per GPU: 2 GPUs, 4 for its pair in trace_noise
    study["prompts"] = {"dir": str(REPO / "resources/prompts"), "per_type": 1}
    study["coding"] = {"lexicon": str(REPO / "resources/lexicons/coding.yaml"),
                       "labelled_examples": str(REPO / "resources/lexicons/labelled_examples.yaml")}
    study["judge"]["rubric"] = str(REPO / "resources/judge/rubric.yaml")
    study["selfknowledge"]["resources"] = {name: str(REPO / f"resources/selfknowledge/{name}.yaml")
                                           for name in ("questions", "tasks")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(study))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--profile", "slurm", "--configfile", str(tmp_path / "config.yaml"), "--dry-run"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Using profiles slurm and workflow specific profile" in result.stderr
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    wildcards: model=(\S+)\n(?:    .*\n)*?    resources: (.*)$",
                      result.stdout, flags=re.M)
    gpus = {}
    for rule, model, resources in jobs:
        gpus.setdefault(rule, {})[model] = dict(re.findall(r"(\w+)=([^,]+)", resources))
    for rule in ("generate", "trace", "trace_cross", "trace_noise", "judge"):
        for model, resources in gpus[rule].items():
            assert resources["slurm_partition"] == "SET-ME-gpu-partition" and resources["model_jobs"] == "1", rule
    assert {m: r["gpu"] for m, r in gpus["generate"].items()} == {
        m: {"llama-3.1-8b-instruct": "2", "llama-3.1-8b-instruct-base-frame": "2", "gemma-2-9b": "2"}.get(m, "1")
        for m in gpus["generate"]}  # a shared-frame twin runs on its original's GPUs
    assert gpus["trace_noise"]["gemma-2-9b"]["gpu"] == "4"  # the base model and its instruct partner at once
    assert {r["gpu"] for r in gpus["judge"].values()} == {"2"}  # the judge's GPUs, whichever model it reads
    assert all("gpu" not in r for r in gpus["prepare_model"].values())
    profile = read_yaml(REPO / "profiles/slurm/config.yaml")
    assert "resources" not in profile  # a global limit would throttle the cluster
    # the workflow profile, loaded on every run, holds no local-only setting: no cores, and its one
    # limit is scoped local by the Snakefile (so no cluster run adds it up across jobs)
    local = read_yaml(REPO / "profiles/default/config.yaml")
    assert local["resources"] == {"model_jobs": 1} and "cores" not in local
    assert re.search(r'^resource_scopes:\n    model_jobs="local",$', (REPO / "Snakefile").read_text(), flags=re.M)


def test_rule_script_and_job_function_share_one_name():
    for smk in (REPO / "rules").glob("*.smk"):
        for rule in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = rule.split(":")[0]
            script = re.search(r'script:\s*"\.\./workflow/scripts/(\w+)\.py"', rule).group(1)
            assert script == name, f"rule {name} runs scripts/{script}.py"
            text = (REPO / f"workflow/scripts/{script}.py").read_text()
            assert re.search(rf"^from llm_introspection\.[\w.]+ import run_{name}$", text, flags=re.M), script


def test_parse_time_and_analysis_modules_do_not_import_torch():
    modules = ["registry", "config", "placement", "prompts", "injection.texts", "injection.statistics", "study.rubric",
               "finetune", "finetune.design", "finetune.texts", "models_check",
               "study.analysis", "report.markdown", "report.figures", "memory", "progress", "plan", "activations"]
    code = "import sys\n" + "".join(f"import llm_introspection.{m}\n" for m in modules) + "print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
    assert result.stdout.strip() == "False", result.stderr
