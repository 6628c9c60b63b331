"""The conda environments pin exactly what pyproject.toml pins."""

import re
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
