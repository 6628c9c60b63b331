"""The plan command: per model job memory, batch, tokens, GPU time and activation storage, loading no weights."""

import subprocess
import sys

import pytest

from conftest import REPO, TINY_STUDY
from llm_introspection.config import read_yaml, validate
from llm_introspection.memory import shape_from_config
from llm_introspection.plan import SHAPES, main, model_shape, plan_jobs, render
from test_memory import SEED_CONFIGS


@pytest.fixture
def seed_study(monkeypatch):
    monkeypatch.chdir(REPO)  # the config's paths are relative to the repository
    return validate(read_yaml(REPO / "config/seed_study.yaml"), "config", "the seed study")


def test_the_shapes_table_agrees_with_the_published_configs_written_in_the_tests():
    ids = {"Llama-3.1-8B": "meta-llama/Llama-3.1-8B", "Qwen2.5-7B": "Qwen/Qwen2.5-7B",
           "Mistral-7B-v0.3": "mistralai/Mistral-7B-v0.3", "Gemma-2-9B": "google/gemma-2-9b"}
    for name, hub_id in ids.items():
        assert shape_from_config(SHAPES[hub_id]) == shape_from_config(SEED_CONFIGS[name])
    assert SHAPES["google/gemma-2-9b-it"] == SHAPES["google/gemma-2-9b"]
    assert SHAPES["meta-llama/Llama-3.2-1B-Instruct"] == SHAPES["meta-llama/Llama-3.2-1B"]


def test_every_seed_study_model_has_a_shape_and_its_sizes_match_the_config(seed_study):
    for name, spec in seed_study["models"].items():
        shape = model_shape(spec)
        assert shape is not None, name
        assert shape.n_params / 1e9 == pytest.approx(spec["size_b"], rel=0.02), name


def test_seed_study_plan_fits_80_gb_and_its_dump_is_well_under_50_gb(seed_study):
    jobs = plan_jobs(seed_study)
    rules = [job.rule for job in jobs]
    # 16 models + 8 shared-frame twins; 8 pairs: 16 cross traces, 8 noise traces; one judge job per model
    assert [rules.count(r) for r in ("generate", "trace", "trace_cross", "trace_noise", "judge")] == [24, 24, 16, 8, 24]
    assert all(job.memory_gb <= 80 and isinstance(job.batch, int) for job in jobs)  # weights + 0.9 of the rest
    gemma = next(job for job in jobs if job.rule == "generate" and job.model == "gemma-2-9b")
    assert gemma.batch < 400  # 400 sequences x 560 tokens of cache would not fit beside the weights
    dump = sum(job.storage_gb.get("last_k", 0) for job in jobs)
    assert seed_study["trace"]["positions"] == "last_k" and dump < 25
    assert sum(job.storage_gb.get("all", 0) for job in jobs) > 200  # what every position would cost
    text = render(seed_study, jobs)
    assert "activation storage (at most): 10.7" in text and "GPU hours" in text and "gemma-2-9b" in text


def test_the_command_runs_without_torch_on_the_default_and_tiny_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    command = [sys.executable, "-c", "import sys, runpy; sys.argv = ['plan', 'config/config.yaml'];"
               "runpy.run_module('llm_introspection.plan', run_name='__main__');"
               "assert 'torch' not in sys.modules, 'the plan imported torch'"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "generate     smollm2-135m-instruct" in result.stdout and "totals:" in result.stdout
    config = tmp_path / "tiny.yaml"
    config.write_text((REPO / "tests/configs/tiny.yaml").read_text())
    main([str(config), "--gpu-memory-gb", "1", "--tokens-per-s", "100"])
    out = capsys.readouterr().out
    assert "one GPU of 1 GB; 100 sampled" in out and "trace        tiny-base" in out
    assert len(TINY_STUDY["models"]) == 2 and "no shape known" not in out  # tiny configs filled by transformers
