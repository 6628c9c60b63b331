"""Repository hygiene: pinned environments, rule directives, formatting, lint and profiles."""

import os
import re
import subprocess
import sys
import tomllib

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


def test_slurm_profile_requests_gpus_for_model_rules_only(tmp_path):
    """What a cluster user types: the slurm profile as the workflow profile (a dry run needs no cluster)."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--workflow-profile", str(REPO / "profiles/slurm"), "--configfile", str(REPO / "config/seed_study.yaml"),
         "--config", f"prompts={{dir: {REPO / 'resources/prompts'}}}", f"coding={{lexicon: {REPO / 'resources/lexicons/coding.yaml'}, labelled_examples: {REPO / 'resources/lexicons/labelled_examples.yaml'}}}",
         f"judge={{rubric: {REPO / 'resources/judge/rubric.yaml'}}}",
         "--dry-run"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "profiles/slurm" in result.stderr + result.stdout and "profiles/default" not in result.stderr + result.stdout
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", result.stdout, flags=re.M)
    by_rule = {}
    for rule, resources in jobs:
        by_rule.setdefault(rule, set()).add(resources)
    for rule in ("generate", "trace", "judge"):
        assert all("gpu=1" in r and "slurm_partition=SET-ME-gpu-partition" in r for r in by_rule[rule]), rule
    assert all("gpu" not in r for r in by_rule["prepare_model"])
    profile = read_yaml(REPO / "profiles/slurm/config.yaml")
    assert "resources" not in profile  # a global limit would throttle the cluster to one GPU job
    assert read_yaml(REPO / "profiles/default/config.yaml")["resources"] == {"gpu": 1}


def test_rule_script_and_job_function_share_one_name():
    for smk in (REPO / "rules").glob("*.smk"):
        for rule in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = rule.split(":")[0]
            script = re.search(r'script:\s*"\.\./workflow/scripts/(\w+)\.py"', rule).group(1)
            assert script == name, f"rule {name} runs scripts/{script}.py"
            text = (REPO / f"workflow/scripts/{script}.py").read_text()
            assert re.search(rf"^from llm_introspection\.[\w.]+ import run_{name}$", text, flags=re.M), script


def test_parse_time_and_analysis_modules_do_not_import_torch():
    modules = ["registry", "config", "prompts", "injection.texts", "injection.statistics", "study.rubric",
               "finetune", "finetune.design", "finetune.texts", "models_check",
               "study.analysis", "report.markdown", "report.figures", "memory", "progress", "plan", "activations"]
    code = "import sys\n" + "".join(f"import llm_introspection.{m}\n" for m in modules) + "print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
    assert result.stdout.strip() == "False", result.stderr
