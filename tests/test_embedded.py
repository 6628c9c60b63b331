"""A short real run of the default study's two embedded models through the snakemake CLI: generate and
trace only (their targets), in the session's embedded study (tests/configs/embedded.yaml)."""

import json

import h5py
import pytest

from conftest import snakemake

pytestmark = [pytest.mark.embedded, pytest.mark.workflow]

PROMPTS = ("self_reference_01", "topic_control_01")
# the default study's models: model type, layers, width, chat template
EXPECTED = {"gemma3-270m": ("gemma3_text", 18, 640, False), "smollm2-135m-instruct": ("llama", 30, 576, True)}


def test_embedded_models_generate_and_trace(embedded_study):
    snakemake(embedded_study, *(f"results/activations/{model}/{PROMPTS[0]}.h5" for model in EXPECTED))
    for model, (model_type, n_layers, width, chat) in EXPECTED.items():
        for prompt in PROMPTS:
            generation = json.loads((embedded_study / f"results/generations/{model}/{prompt}.json").read_text())
            record = generation["model"]
            assert (record["model_type"], record["n_layers"], record["hidden_size"]) == (model_type, n_layers, width)
            assert record["revision"].startswith("sha256:") and record["dtype"] == "float32"
            assert generation["prompt"]["chat_template"] is chat
            assert ("<|im_start|>assistant" in generation["prompt"]["text"]) is chat
            assert all(r["text"].strip() for r in generation["reps"])
            with h5py.File(embedded_study / f"results/activations/{model}/{prompt}.h5") as h5:
                assert json.loads(h5.attrs["hidden_state_indices"]) == [0, n_layers // 2, n_layers]
                assert h5["rep_01/hidden_states"].shape[::2] == (3, width)
