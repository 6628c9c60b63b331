import copy

import numpy as np
import pytest
import torch

from conftest import TINY_GEMMA3, TINY_LLAMA, StandInModel, load_tiny
from llm_introspection.errors import InputError
from llm_introspection.modules import decoder_layers
from llm_introspection.tracing import capture_residual, hidden_state_indices, trace_prompts
from llm_introspection.weights import add_difference_sized_noise


def test_hidden_state_indices_round_fractions_of_depth():
    assert hidden_state_indices([0, 0.25, 0.5, 0.75, 1.0], 30) == [0, 8, 15, 22, 30]
    assert hidden_state_indices([0, 0.5, 0.5, 1.0], 4) == [0, 2, 4]


@pytest.mark.parametrize("architecture", [TINY_LLAMA, TINY_GEMMA3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_traced_states_equal_a_direct_forward(architecture, batch_size, tokenizer_dir, tmp_path):
    model, tokenizer = load_tiny(tokenizer_dir, architecture, tmp_path)
    prompts = [tokenizer("one two three four five six")["input_ids"], tokenizer("seven")["input_ids"]]
    completions = [[[11, 12, 13], [14], [15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32]], [[21, 22]]]
    indices = [0, 2, 4]
    traced = trace_prompts(model, prompts, completions, indices, batch_size, tokenizer.pad_token_id)
    assert len(traced) == 2
    for prompt, group, (prompt_states, completion_states) in zip(prompts, completions, traced):
        assert prompt_states.shape == (3, len(prompt), 32)
        assert [s.shape for s in completion_states] == [(3, len(c), 32) for c in group]
        for completion, states in zip(group, completion_states):
            with torch.no_grad():
                direct = model(input_ids=torch.tensor([prompt + completion]), output_hidden_states=True)
            ours = torch.from_numpy(np.concatenate([prompt_states, states], axis=1))
            for k, index in enumerate(indices[:-1]):
                torch.testing.assert_close(ours[k], direct.hidden_states[index][0], atol=1e-4, rtol=1e-4)
            last = model.get_decoder().norm(ours[-1])
            torch.testing.assert_close(last, direct.hidden_states[-1][0], atol=1e-4, rtol=1e-4)


def test_hooks_are_removed_when_the_forward_raises(tokenizer_dir, tmp_path):
    model, _ = load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path)
    layers = decoder_layers(model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_residual(model, [0, 2]):
            raise RuntimeError("boom")
    assert not any(layer._forward_hooks or layer._forward_pre_hooks for layer in layers)


def test_capture_handles_tuple_and_tensor_outputs_and_keyword_inputs():
    model = StandInModel()
    x = torch.ones(1, 2, 3)
    with capture_residual(model, [0, 1, 2]) as captured:
        model.trunk(x)
    assert torch.equal(captured[0], x)
    assert torch.equal(captured[1], x * 2)
    assert torch.equal(captured[2], x * 2 + 1)


def test_weight_noise_has_the_norm_of_the_pair_difference_tensor_by_tensor():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 3))
    partner = copy.deepcopy(base)
    with torch.no_grad():
        for scale, parameter in zip((0.01, 0.1, 0.02, 0.3), partner.parameters()):
            parameter.add_(scale * torch.randn_like(parameter))
    before = copy.deepcopy(base)
    summary = add_difference_sized_noise(base, partner, seed=3)
    for (name, old), new, other in zip(before.named_parameters(), base.parameters(), partner.parameters()):
        noise, difference = (new - old).flatten(), (other - old).flatten()
        assert float(torch.linalg.vector_norm(noise)) == pytest.approx(float(torch.linalg.vector_norm(difference)), rel=1e-5), name
        assert abs(float(torch.nn.functional.cosine_similarity(noise, difference, dim=0))) < 0.9  # a random direction
    assert summary["n_tensors"] == 4
    differences = [float(torch.linalg.vector_norm(o - b)) ** 2 for o, b in zip(partner.parameters(), before.parameters())]
    assert summary["difference_norm"] == pytest.approx(sum(differences) ** 0.5, rel=1e-5)
    with pytest.raises(InputError, match="same-shaped twin"):
        add_difference_sized_noise(base, torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 3)), seed=0)
