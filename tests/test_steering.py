from contextlib import contextmanager

import numpy as np
import pytest
import torch

from conftest import TINY_GEMMA3, TINY_LLAMA, StandInModel, load_tiny
from llm_introspection.injection.concepts import mean_residual_norm
from llm_introspection.errors import InputError
from llm_introspection.batching import left_pad
from llm_introspection.sampling import SamplingParams, sample_completions
from llm_introspection.modules import residual_module
from llm_introspection.steering import Positions, relative_strength, steer
from llm_introspection.modules import decoder_layers
from llm_introspection.tracing import capture_residual

ARCHITECTURES = {"llama": TINY_LLAMA, "gemma3": TINY_GEMMA3}
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=6)


@pytest.fixture(scope="module", params=ARCHITECTURES, ids=list(ARCHITECTURES))
def tiny(request, tokenizer_dir, tmp_path_factory):
    return load_tiny(tokenizer_dir, ARCHITECTURES[request.param], tmp_path_factory.mktemp(request.param))


def ids_of(tokenizer, text):
    return tokenizer(text)["input_ids"]


def random_vector(model, seed=0):
    return torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(seed))


def strong(model, tokenizer, vector, index, fraction=8.0):
    """A strength that makes the vector several times the layer's mean residual norm."""
    prompts = [ids_of(tokenizer, "A calibration sentence of ordinary words.")]
    return relative_strength(fraction, vector, mean_residual_norm(model, index, prompts, batch_size=1))


def residual(model, index, **inputs):
    with torch.no_grad(), capture_residual(model, [index]) as captured:
        out = model(**inputs)
    return captured[index], out.logits


def entropies(logits):
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def no_hooks_left(model):
    modules = [model.get_decoder(), model.get_input_embeddings(), *decoder_layers(model)]
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


# --- the mechanism ------------------------------------------------------------------------------

WHERE = {"onward": Positions.onward(3), "span": Positions.span(2, 5), "nowhere": Positions.nowhere()}
EXPECTED_ROWS = {"onward": range(3, 8), "span": range(2, 5), "nowhere": range(0)}


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("index", [0, 2, 4])
def test_adds_exactly_the_vector_on_the_chosen_positions(tiny, where, index):
    model, tokenizer = tiny
    ids = torch.tensor([ids_of(tokenizer, "one two three four five six seven eight")])
    assert ids.shape[1] == 8
    vector = random_vector(model)
    plain, _ = residual(model, index, input_ids=ids)
    with steer(model, index, vector, 2.5, WHERE[where]):
        steered, _ = residual(model, index, input_ids=ids)
    expected = torch.zeros_like(plain)
    expected[0, list(EXPECTED_ROWS[where])] = 2.5 * vector
    torch.testing.assert_close(steered - plain, expected, atol=1e-5, rtol=0)
    if where == "nowhere":
        assert torch.equal(steered, plain)


def test_logits_are_restored_once_the_block_ends(tiny):
    model, tokenizer = tiny
    ids = torch.tensor([ids_of(tokenizer, "The weather was mild all week.")])
    vector = random_vector(model)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with steer(model, 2, vector, strong(model, tokenizer, vector, 2), Positions.onward(1)):
            during = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert not torch.allclose(before, during, atol=1e-3)
    assert torch.equal(before, after)
    assert no_hooks_left(model)


def test_hooks_are_removed_when_the_body_raises(tiny):
    model, _ = tiny
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, 2, random_vector(model), 1.0, Positions.onward(0)):
            raise RuntimeError("boom")
    assert no_hooks_left(model)


# --- generation ---------------------------------------------------------------------------------

@contextmanager
def recording(model, index):
    """Every forward call's hidden state `index` (as steered, when registered inside steer)."""
    calls = []

    def keep(module, args, output):
        calls.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    handle = residual_module(model, index).register_forward_hook(keep)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.mark.parametrize("where", ["onward", "span"])
def test_cached_sampling_steers_generated_tokens_only_when_asked(tiny, where):
    """Our sampler decodes token by token from a KV cache. The states it steered, call by call,
    must equal one steered forward pass over prompt + completion: strength × vector added from
    position 4 on, generated tokens included (onward), or on the prompt's positions 4.. only (span)."""
    model, tokenizer = tiny
    prompt = ids_of(tokenizer, "Write a short line about the harbor at night.")
    index, vector = 2, random_vector(model)
    strength = strong(model, tokenizer, vector, index)
    chosen = Positions.onward(4) if where == "onward" else Positions.span(4, len(prompt))
    with steer(model, index, vector, strength, chosen), recording(model, index) as calls:
        completion = sample_completions(model, [prompt], [0], GREEDY, set(), tokenizer.pad_token_id, 1, 10)[0]
    assert len(calls) == GREEDY.max_new_tokens  # the prompt, then one call per fed-back token
    decoded = torch.cat(calls, dim=1)[0]
    full = torch.tensor([prompt + completion.token_ids[:-1]])
    with steer(model, index, vector, strength, chosen):
        steered, logits = residual(model, index, input_ids=full)
    plain, _ = residual(model, index, input_ids=full)
    torch.testing.assert_close(decoded, steered[0], atol=1e-5, rtol=1e-5)
    expected = torch.zeros_like(plain[0])
    expected[4 : len(prompt) if where == "span" else None] = strength * vector
    torch.testing.assert_close(steered[0] - plain[0], expected, atol=1e-4, rtol=0)
    sampled_entropies = torch.from_numpy(completion.stats[:, 0])
    torch.testing.assert_close(sampled_entropies, entropies(logits[0, len(prompt) - 1 :]), atol=1e-4, rtol=1e-4)


def test_left_padded_sampling_equals_each_row_alone(tiny):
    model, tokenizer = tiny
    prompts = [ids_of(tokenizer, "Describe a quiet street in a small town."), ids_of(tokenizer, "Hello there.")]
    starts, index, vector = (5, 1), 3, random_vector(model, seed=1)
    strength = strong(model, tokenizer, vector, index)
    with steer(model, index, vector, [strength, 0.5 * strength], Positions.onward(starts)):
        batch = sample_completions(model, prompts, [0, 0], GREEDY, set(), tokenizer.pad_token_id, 2, 10)
    for row, scale in enumerate([1.0, 0.5]):
        with steer(model, index, vector, scale * strength, Positions.onward(starts[row])):
            alone = sample_completions(model, [prompts[row]], [0], GREEDY, set(), tokenizer.pad_token_id, 1, 10)[0]
        assert alone.token_ids == batch[row].token_ids
        np.testing.assert_allclose(alone.stats, batch[row].stats, atol=1e-4, rtol=1e-4)


def test_left_padded_forward_equals_each_row_alone(tiny):
    model, tokenizer = tiny
    prompts = [ids_of(tokenizer, "Seven short words in this one here."), ids_of(tokenizer, "Two words")]
    index, vector = 2, random_vector(model, seed=2)
    where = Positions.span((2, 0), (6, 1))
    ids, mask, positions = left_pad(prompts, tokenizer.pad_token_id, "cpu")
    with steer(model, index, vector, 3.0, where):
        states, logits = residual(model, index, input_ids=ids, attention_mask=mask, position_ids=positions)
    for row, prompt in enumerate(prompts):
        alone_where = Positions.span(where.start[row], where.end[row])
        with steer(model, index, vector, 3.0, alone_where):
            alone_states, alone_logits = residual(model, index, input_ids=torch.tensor([prompt]))
        torch.testing.assert_close(states[row, -len(prompt) :], alone_states[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[row, -len(prompt) :], alone_logits[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_hf_generate_steers_as_a_full_forward_does(tiny, padded):
    """HF generate passes a 2D mask with padding and only position ids without it; each row's
    states, call by call, must equal a steered forward pass over that row alone."""
    model, tokenizer = tiny
    prompts = [ids_of(tokenizer, "Tell me something about the mountains in spring.")]
    if padded:
        prompts.append(ids_of(tokenizer, "Go on."))
    starts = (3, 1)[: len(prompts)]
    index, vector, new_tokens = 2, random_vector(model, seed=3), 5
    strength = strong(model, tokenizer, vector, index)
    ids, mask, _ = left_pad(prompts, tokenizer.pad_token_id, "cpu")
    steering = steer(model, index, vector, strength, Positions.onward(starts))
    with torch.no_grad(), steering, recording(model, index) as calls:
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id, output_logits=True,
            return_dict_in_generate=True,
        )
    decoded = torch.cat(calls, dim=1)
    step_logits = torch.stack(out.logits, dim=1)
    for row, prompt in enumerate(prompts):
        full = torch.tensor([prompt + out.sequences[row, ids.shape[1] : -1].tolist()])
        with steer(model, index, vector, strength, Positions.onward(starts[row])):
            reference, logits = residual(model, index, input_ids=full)
        torch.testing.assert_close(decoded[row, -full.shape[1] :], reference[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step_logits[row], logits[0, len(prompt) - 1 :], atol=1e-4, rtol=1e-4)
    assert no_hooks_left(model)


# --- strength -----------------------------------------------------------------------------------

def test_mean_residual_norm_leaves_out_the_attention_sink(tiny):
    model, tokenizer = tiny
    prompts = [ids_of(tokenizer, "A first prompt of a few words."), ids_of(tokenizer, "Short one.")]
    index = 2
    states = []
    for prompt in prompts:
        hidden, _ = residual(model, index, input_ids=torch.tensor([prompt]))
        states.append(hidden[0, 1:])
    reference = torch.cat(states).double().norm(dim=-1).mean().item()
    assert mean_residual_norm(model, index, prompts, batch_size=2) == pytest.approx(reference, rel=1e-5)
    huge = 1e4 * random_vector(model)
    with steer(model, index, huge, 1.0, Positions.span(0, 1)):  # a planted huge first-position norm
        assert mean_residual_norm(model, index, prompts, batch_size=1) == pytest.approx(reference, rel=1e-5)
    with steer(model, index, huge, 1.0, Positions.span(1, 2)):
        assert mean_residual_norm(model, index, prompts, batch_size=1) > 100 * reference


def test_relative_strength_scales_the_vector_to_a_fraction_of_the_norm():
    vector = torch.tensor([3.0, 4.0])
    strength = relative_strength(0.5, vector, mean_norm=20.0)
    assert float((strength * vector).norm()) == pytest.approx(10.0)


# --- layer outputs and errors -------------------------------------------------------------------

@pytest.mark.parametrize("index", [1, 2], ids=["tuple", "tensor"])
def test_tuple_and_tensor_layer_outputs_with_left_padding(index):
    model, x = StandInModel(), torch.ones(2, 3, 4)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    vector = torch.arange(4.0)
    plain, outputs = model.trunk(x, attention_mask=mask), {}
    hook = decoder_layers(model)[index - 1].register_forward_hook(lambda m, a, o: outputs.setdefault("layer", o))
    with steer(model, index, vector, 1.0, Positions.onward(1)):
        steered = model.trunk(x, attention_mask=mask)
    hook.remove()
    if index == 1:
        assert isinstance(outputs["layer"], tuple) and outputs["layer"][1] == "extra"
    expected = torch.zeros(2, 3, 4)
    expected[0, 2] = expected[1, 1:] = vector  # row 0: column 0 is padding, column 2 is position 1
    assert torch.equal(steered - plain, expected)


def test_bad_requests_raise_clear_errors(tiny):
    model, tokenizer = tiny
    with pytest.raises(InputError, match="hidden-state index 5 is outside 0..4"):
        residual_module(model, 5)
    with pytest.raises(ValueError, match="non-negative ints"):
        Positions.span(-1, 3)
    ids = torch.tensor([ids_of(tokenizer, "one two"), ids_of(tokenizer, "three four")])
    with pytest.raises(ValueError, match="given for 3 rows, the batch has 2"):
        with steer(model, 1, random_vector(model), 1.0, Positions.onward((0, 1, 2))):
            model(input_ids=ids)
    with pytest.raises(ValueError, match="3 rows of strength"):
        with steer(model, 1, random_vector(model), [1.0, 2.0, 3.0], Positions.onward(0)):
            model(input_ids=ids)
