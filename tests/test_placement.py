"""Big models across GPUs: how many GPUs a model asks for, how a job spreads it over them, and the
hooks of tracing and steering on a model whose layers accelerate dispatches (here: offloaded to
the disk and kept on the CPU, which is what a device_map over GPUs does with its hooks)."""

import numpy as np
import pytest
import torch

from conftest import CONFIG_SCHEMA, TINY_GEMMA3, TINY_LLAMA, tiny_spec
from llm_introspection.config import validate
from llm_introspection.batching import PAD_ID
from llm_introspection.errors import InputError
from llm_introspection.models import load_model, prepare_model
from llm_introspection.modules import decoder_layers, input_device
from llm_introspection.placement import GIB, gpus_needed, load_placement, model_gpus
from llm_introspection.readout.options import option_log_probs
from llm_introspection.sampling import SamplingParams, sample_completions
from llm_introspection.steering import Positions, steer
from llm_introspection.tracing import capture_residual, trace_prompts

RUNTIME = {"device": "cuda", "dtype": "auto", "gpu_memory_gb": 80, "gpu_weights_share": 0.6}


# --- how many GPUs ------------------------------------------------------------------------------

@pytest.mark.parametrize("size_b, dtype, gpus", [
    (8.03, "bfloat16", 1),   # Llama-3.1-8B: 16 GB of 48 GiB for weights on an 80 GiB card
    (9.24, "float32", 1),    # Gemma-2-9B in float32: 37 GB
    (32.8, "bfloat16", 2),   # a 32B model: 66 GB
    (70.6, "bfloat16", 3),   # Llama-3.1-70B: 141 GB over 3 x 48 GiB
    (70.6, "float32", 6),
    (405, "bfloat16", 16),
])
def test_auto_asks_for_the_fewest_gpus_whose_weight_share_holds_the_weights(size_b, dtype, gpus):
    assert gpus_needed(size_b, dtype, "cuda", 80, 0.6) == gpus
    assert gpus * 80 * GIB * 0.6 >= size_b * 1e9 * {"bfloat16": 2, "float32": 4}[dtype] > (gpus - 1) * 80 * GIB * 0.6


def test_model_gpus_from_the_entry_the_runtime_and_the_copies_held():
    assert model_gpus("m", {"size_b": 70.6}, RUNTIME) == 1  # not asked: one GPU
    assert model_gpus("m", {"size_b": 70.6, "gpus": 8}, RUNTIME) == 8
    assert model_gpus("m", {"size_b": 70.6, "gpus": "auto"}, RUNTIME) == 3
    assert model_gpus("m", {"size_b": 70.6, "gpus": "auto", "dtype": "float32"}, RUNTIME) == 6
    assert model_gpus("m", {"size_b": 70.6, "gpus": "auto"}, RUNTIME | {"gpu_memory_gb": 141}) == 2  # H200
    assert model_gpus("m", {"size_b": 8.03, "gpus": "auto"}, RUNTIME, copies=2) == 1
    assert model_gpus("m", {"size_b": 32.8, "gpus": "auto"}, RUNTIME, copies=2) == 3  # trace_noise holds two
    with pytest.raises(InputError, match="model m: key 'gpus'"):
        model_gpus("m", {"size_b": 1, "gpus": 0}, RUNTIME)


@pytest.mark.parametrize("gpus", [0, "many", 1.5])
def test_the_config_refuses_a_gpu_count_that_is_no_positive_integer_or_auto(gpus, tokenizer_dir):
    spec = tiny_spec(tokenizer_dir, TINY_LLAMA)
    config = {"models": {"m": {**spec, "gpus": gpus}}, "prompts": {}, "generation": {"reps": 1, "max_new_tokens": 1},
              "judge": {"model": "m"}}
    with pytest.raises(InputError, match="key 'models.m.gpus'"):
        validate(config, CONFIG_SCHEMA, "config")
    config["models"]["m"]["gpus"] = "auto"
    assert validate(config, CONFIG_SCHEMA, "config")["runtime"]["gpu_weights_share"] == 0.6


# --- placement when a job loads -------------------------------------------------------------------

def test_placement_on_the_cpu_and_on_one_gpu_loads_straight_onto_the_device():
    assert load_placement("cpu", 1, []) == {}
    assert load_placement("cpu", 4, []) == {}  # a CPU run of a multi-GPU entry (tests, laptops)
    assert load_placement("cuda", 1, [80 * GIB]) == {"device_map": "cuda"}
    assert load_placement("cuda:1", 1, [80 * GIB, 80 * GIB]) == {"device_map": "cuda:1"}


@pytest.mark.parametrize("visible", [2, 8])
def test_placement_over_several_gpus_caps_each_at_its_free_memory_and_never_offloads(visible):
    free = [int((70 + i) * GIB) for i in range(visible)]
    placement = load_placement("cuda", 2, free)
    assert placement == {"device_map": "auto", "max_memory": {0: free[0], 1: free[1]}}
    if visible == 8:
        everything = load_placement("cuda", 8, free)
        assert everything["max_memory"] == dict(enumerate(free))
        assert "cpu" not in everything["max_memory"] and "disk" not in everything["max_memory"]


def test_placement_refuses_more_gpus_than_visible_or_one_named_gpu():
    with pytest.raises(InputError, match="asks for 3 GPUs, but 2 are visible"):
        load_placement("cuda", 3, [GIB, GIB])
    with pytest.raises(InputError, match="names one GPU"):
        load_placement("cuda:0", 2, [GIB, GIB])


# --- hooks on a dispatched model ------------------------------------------------------------------

ARCHITECTURES = {"llama": TINY_LLAMA, "gemma3": TINY_GEMMA3}


def offloading_map(model):
    """The embeddings and the (tied) head on the disk (so model.device is "meta"), the norm on the
    CPU, decoder layers alternately on the disk and the CPU."""
    device_map = {"model.embed_tokens": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    device_map |= {f"model.layers.{i}": "disk" if i % 2 == 0 else "cpu" for i in range(len(decoder_layers(model)))}
    return device_map


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def pair(request, tokenizer_dir, tmp_path_factory):
    """(plain, dispatched) copies of one tiny model: the second with half its layers on the disk."""
    out = tmp_path_factory.mktemp(request.param)
    manifest = prepare_model(request.param, tiny_spec(tokenizer_dir, ARCHITECTURES[request.param]), out)
    plain = load_model(manifest, "cpu", torch.float32)
    dispatched = load_model(manifest, "cpu", torch.float32,
                            placement={"device_map": offloading_map(plain), "offload_folder": str(out / "offload")})
    return plain, dispatched


PROMPTS = [[1, 400, 401, 402, 403, 404, 405, 406, 407, 408], [1, 500, 501]]


def test_the_dispatched_model_is_really_offloaded(pair):
    _, dispatched = pair
    layers = decoder_layers(dispatched)
    assert all(hasattr(layer, "_hf_hook") for layer in layers)
    assert layers[0].mlp.down_proj.weight.device.type == "meta"  # its weights wait on the disk
    assert dispatched.device.type == "meta" and input_device(dispatched) == torch.device("cpu")


def test_traced_states_of_a_dispatched_model_equal_the_plain_models(pair):
    plain, dispatched = pair
    completions = [[[11, 12, 13, 14], [15]], [[21, 22]]]
    indices = [0, 1, 2, 4]
    expected = trace_prompts(plain, PROMPTS, completions, indices, batch_size=3, pad_id=PAD_ID)
    got = trace_prompts(dispatched, PROMPTS, completions, indices, batch_size=3, pad_id=PAD_ID)
    for (prompt_a, reps_a), (prompt_b, reps_b) in zip(expected, got):
        np.testing.assert_allclose(prompt_b, prompt_a, atol=1e-5)
        for a, b in zip(reps_a, reps_b):
            np.testing.assert_allclose(b, a, atol=1e-5)


def test_steered_outputs_of_a_dispatched_model_equal_the_plain_models(pair):
    plain, dispatched = pair
    vector = torch.randn(plain.config.hidden_size, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([PROMPTS[0]])
    results = []
    for model in (plain, dispatched):
        before = {name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks}
        with torch.no_grad(), steer(model, 1, vector, 20.0, Positions.onward(4)), \
                capture_residual(model, [1, 3]) as captured:
            logits = model(input_ids=ids).logits
            states = {index: state.clone() for index, state in captured.items()}
        with steer(model, 3, vector, 20.0, Positions.onward(2)):
            tokens = sample_completions(model, PROMPTS, [0, 1], SamplingParams(0.0, 1.0, 5), [], PAD_ID, 2, top_k=5)
        with steer(model, 2, vector, 20.0, Positions.onward(0)):
            answers = option_log_probs(model, None, PROMPTS, [5, 6, 7], batch_size=2, setting="")
        after = {name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks}
        assert after == before
        results.append((logits, states, tokens, answers))
    (logits_a, states_a, tokens_a, answers_a), (logits_b, states_b, tokens_b, answers_b) = results
    torch.testing.assert_close(logits_b, logits_a, atol=1e-5, rtol=0)
    for index in (1, 3):
        torch.testing.assert_close(states_b[index], states_a[index], atol=1e-5, rtol=0)
    with torch.no_grad():
        unsteered = plain(input_ids=ids).logits
    assert float((logits_a[0, 4:] - unsteered[0, 4:]).abs().max()) > 1e-2  # the steering did something
    assert [c.token_ids for c in tokens_b] == [c.token_ids for c in tokens_a]
    np.testing.assert_allclose(np.stack([c.stats for c in tokens_b]), np.stack([c.stats for c in tokens_a]), atol=1e-5)
    torch.testing.assert_close(answers_b, answers_a, atol=1e-6, rtol=0)
