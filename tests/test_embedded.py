"""A short real run of the default study's two embedded models through the snakemake CLI."""

import json

import h5py
import pytest

from conftest import read_default_models, snakemake, write_study

pytestmark = [pytest.mark.embedded, pytest.mark.workflow]


def test_embedded_models_generate_and_trace(tmp_path):
    write_study(
        tmp_path, read_default_models(),
        prompts={"ids": ["self_reference_01", "topic_control_01"]},
        generation={"reps": 2, "max_new_tokens": 8},
        trace={"layer_fractions": [0.0, 0.5, 1.0]},
    )
    snakemake(tmp_path)
    expected = {"gemma3-270m": ("gemma3_text", 18, 640, False), "smollm2-135m-instruct": ("llama", 30, 576, True)}
    for model, (model_type, n_layers, width, chat) in expected.items():
        for prompt in ("self_reference_01", "topic_control_01"):
            generation = json.loads((tmp_path / f"results/generations/{model}/{prompt}.json").read_text())
            record = generation["model"]
            assert (record["model_type"], record["n_layers"], record["hidden_size"]) == (model_type, n_layers, width)
            assert record["revision"].startswith("sha256:") and record["dtype"] == "float32"
            assert generation["prompt"]["chat_template"] is chat
            assert ("<|im_start|>assistant" in generation["prompt"]["text"]) is chat
            assert all(r["text"].strip() for r in generation["reps"])
            with h5py.File(tmp_path / f"results/activations/{model}/{prompt}.h5") as h5:
                assert json.loads(h5.attrs["hidden_state_indices"]) == [0, n_layers // 2, n_layers]
                assert h5["rep_01/hidden_states"].shape[::2] == (3, width)
