"""The activation files' contract under each trace.positions option, the probes reading them, and
the model jobs' batch plan, progress and provenance."""

import json

import h5py
import numpy as np
import pytest

from conftest import REPO, TINY_LLAMA, load_tiny, tiny_spec
from llm_introspection import jobs
from llm_introspection.activations import POSITIONS, reduce_states, write_activations
from llm_introspection.models import prepare_model
from llm_introspection.prompts import TEMPLATE_DATE
from llm_introspection.storage import write_json
from llm_introspection.study.probing import POOLINGS, pooled_activations

MODEL = {"name": "m", "family": "fam", "size_b": 0.1, "variant": "base", "frame": "native", "hidden_size": 4,
         "n_layers": 4}


def _generation(lengths):
    return {"study": "t", "model": MODEL, "generation": {}, "prompt": {"id": "p", "type": "self_reference",
                                                                      "token_ids": list(range(6))},
            "reps": [{"rep": r, "seed": 42 + r, "stop_reason": "eos", "token_ids": list(range(n)), "n_tokens": n}
                     for r, n in enumerate(lengths)]}


@pytest.fixture
def traced():
    rng = np.random.default_rng(1)
    prompt = rng.normal(size=(3, 6, 4)).astype(np.float32)
    prompt[:, 0] = 1000.0  # the attention sink
    return prompt, [rng.normal(size=(3, n, 4)).astype(np.float32) for n in (2, 20)]


def _expected(prompt, reps, pooling):
    if pooling == "completion":
        return [r.mean(axis=1) for r in reps]
    if pooling == "last_prompt":
        return [prompt[:, -1]] * len(reps)
    return [np.concatenate([prompt[:, 1:], r], axis=1).mean(axis=1) for r in reps]


@pytest.mark.parametrize("positions", POSITIONS)
def test_every_positions_option_keeps_what_the_probes_read(positions, traced, tmp_path):
    prompt, reps = traced
    path = tmp_path / f"{positions}.h5"
    reduced = reduce_states(prompt, reps, positions, last_k=5)
    write_activations(path, _generation([2, 20]), MODEL, [0, 2, 4], [0, 0.5, 1], reduced,
                      {"positions": positions, "last_k": 5}, {"configured": 4})
    for pooling in POOLINGS:
        features, meta = pooled_activations([path], pooling=pooling)
        for layer, index in enumerate([0, 2, 4]):
            np.testing.assert_allclose(features[index], [e[layer] for e in _expected(prompt, reps, pooling)],
                                       rtol=1e-5)
        assert meta["rep"].tolist() == [0, 1]
    with h5py.File(path) as h5:
        assert h5.attrs["positions"] == positions and json.loads(h5.attrs["batching"]) == {"configured": 4}
        assert ("hidden_states" in h5["prompt"]) == (positions == "all")
        kept = {"all": 20, "response": 20, "last_k": 5, "pooled": None}[positions]
        if kept is None:
            assert "hidden_states" not in h5["rep_01"]
        else:
            np.testing.assert_allclose(h5["rep_01/hidden_states"][()], reps[1][:, -kept:], rtol=1e-3)
            assert h5["rep_01"].attrs["first_position"] == 20 - kept
            assert h5["rep_00/hidden_states"].shape[1] == 2  # shorter than k: all of it


def test_reduced_dumps_are_smaller(traced, tmp_path):
    prompt, reps = traced
    sizes = {}
    for positions in ("all", "pooled"):
        path = tmp_path / f"{positions}.h5"
        write_activations(path, _generation([2, 20]), MODEL, [0, 2, 4], [0, 0.5, 1],
                          reduce_states(prompt, reps, positions, 5), {"positions": positions, "last_k": 5}, {})
        with h5py.File(path) as h5:
            sizes[positions] = sum(h5[g][d].nbytes for g in h5 for d in h5[g])
    assert sizes["pooled"] < sizes["all"] / 2


def test_generate_with_a_memory_budget_plans_logs_and_samples_what_an_unconstrained_run_does(
        tokenizer_dir, tmp_path, monkeypatch, capsys):
    """A budget that leaves room for one sequence: the job plans batch 1, runs 1 at a time, records it,
    logs the plan against the actual numbers, and writes the same completions as batch 4."""
    manifest = prepare_model("tiny", tiny_spec(tokenizer_dir, TINY_LLAMA, "instruct"), tmp_path)
    write_json(tmp_path / "manifest.json", manifest)
    model, _ = load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path / "model", "instruct")
    model.get_output_embeddings().register_forward_hook(lambda module, args, logits: logits * 40)
    monkeypatch.setattr(jobs, "load_model", lambda *args: model)
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    prompt = REPO / "resources/prompts/self_reference_01.yaml"
    gen = {"reps": 3, "max_new_tokens": 6, "temperature": 1.0, "top_p": 0.95, "seed": 42, "batch_size": 4,
           "top_k_mass": 10}
    results = {}
    for name, budget in (("free", None), ("planned", weights_gb + 1e-6)):
        runtime = {"device": "cpu", "dtype": "float32", "memory_budget_gb": budget, "progress_interval_s": 1e-9}
        out = tmp_path / name
        jobs.run_generate(tmp_path / "manifest.json", [prompt], [out / "self_reference_01.json"], [out / "self_reference_01.h5"], "test",
                          {"generation": gen, "runtime": {k: v for k, v in runtime.items() if v is not None}}, 1,
                          template_date=TEMPLATE_DATE)
        results[name] = json.loads((out / "self_reference_01.json").read_text())
        with h5py.File(out / "self_reference_01.h5") as h5:
            assert json.loads(h5.attrs["batching"]) == results[name]["batching"]
    log = capsys.readouterr().err
    assert results["free"]["batching"] | {"per_sequence_bytes": None} == {
        "configured": 4, "planned": None, "budget_bytes": None, "budget_source": "none", "per_sequence_bytes": None,
        "backoffs": [], "used": [3], "start": 4}
    planned = results["planned"]["batching"]
    assert planned["planned"] == 1 and planned["start"] == 1 and planned["used"] == [1, 1, 1]
    assert planned["budget_source"] == "runtime.memory_budget_gb minus the weights"
    assert [r["token_ids"] for r in results["free"]["reps"]] == [r["token_ids"] for r in results["planned"]["reps"]]
    assert "generate: batch 1 (1 sequences), step 1/6" in log and "live" in log and "ETA" in log
    assert "generate plan vs actual: batch planned 1, actual 1; tokens (at most) planned 18" in log


def test_trace_job_writes_the_positions_and_the_batching_it_used(tokenizer_dir, tmp_path, monkeypatch, capsys):
    manifest = prepare_model("tiny", tiny_spec(tokenizer_dir, TINY_LLAMA, "instruct"), tmp_path)
    write_json(tmp_path / "manifest.json", manifest)
    model, _ = load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path / "model", "instruct")
    monkeypatch.setattr(jobs, "load_model", lambda *args: model)
    generation = _generation([3, 7]) | {"model": {"name": "tiny"}}
    generation["prompt"]["id"] = "p"
    write_json(tmp_path / "p.json", generation)
    settings = {"trace": {"layer_fractions": [0, 1], "batch_size": 1, "positions": "last_k", "last_k": 4},
                "runtime": {"device": "cpu", "dtype": "float32"}}
    jobs.run_trace(tmp_path / "manifest.json", [tmp_path / "p.json"], [tmp_path / "p.h5"], settings, 1)
    with h5py.File(tmp_path / "p.h5") as h5:
        assert h5.attrs["positions"] == "last_k" and h5.attrs["last_k"] == 4
        assert json.loads(h5.attrs["batching"])["used"] == [1, 1]
        assert h5["rep_00/hidden_states"].shape == (2, 3, 32) and h5["rep_01/hidden_states"].shape == (2, 4, 32)
        assert h5["rep_01/mean_hidden_states"].shape == (2, 32)
    assert "trace plan vs actual" in capsys.readouterr().err
