"""Read-outs that share the key/value cache of common prefixes equal one full pass per sequence: the
judge's scores and steered localization-like trials, on tiny random models (llama, and gemma3 with
its sliding-window layers), to ~1e-5."""

import numpy as np
import pytest
import torch

from conftest import TINY_GEMMA3, TINY_LLAMA, load_tiny
from llm_introspection.readout.shared import common_prefix, shared_prefix_options, unsteered_length
from llm_introspection.readout.steered import Trial, read_options
from llm_introspection.study.judge import score_completions
from llm_introspection.study.rubric import load_rubric
from test_judge import RUBRIC, SELF_TEXT, TIDES_TEXT

ARCHITECTURES = {"llama": TINY_LLAMA, "gemma3": TINY_GEMMA3}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def tiny(request, tokenizer_dir, tmp_path_factory):
    """A tiny random model with weights at std 0.3, so that option probabilities differ clearly
    between prompts (a padding or position mistake shows well above the tolerance)."""
    model, tokenizer = load_tiny(tokenizer_dir, ARCHITECTURES[request.param], tmp_path_factory.mktemp("shared"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    return model, tokenizer


def test_common_prefix_and_unsteered_length():
    assert common_prefix([(1, 2, 3), (1, 2, 4), (1, 2)]) == 2 and common_prefix([(5,), (6,)]) == 0
    assert unsteered_length(Trial((1, 2, 3, 4))) == 3
    assert unsteered_length(Trial((1, 2, 3, 4), 2, 3, np.ones(2), 1.0)) == 2


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_judge_scores_with_shared_prefixes_equal_full_passes(tiny, batch_size):
    model, tokenizer = tiny
    rubric = load_rubric(RUBRIC)
    items = [("Tell me about yourself.", SELF_TEXT), ("Why are there tides?", TIDES_TEXT), ("Hi", ""),
             ("Tell me about yourself.", SELF_TEXT[:80])]
    old = score_completions(model, tokenizer, items, rubric, 64, batch_size, share_prefix=False)
    new = score_completions(model, tokenizer, items, rubric, 64, batch_size)
    columns = ["p0", "p1", "p2", "p3", "expected", "option_mass"]
    assert (old[["item", "dimension", "judge_prompt_tokens"]] == new[["item", "dimension", "judge_prompt_tokens"]]).all().all()
    np.testing.assert_allclose(new[columns].to_numpy(), old[columns].to_numpy(), atol=1e-5, rtol=0)
    assert old["p0"].std() > 1e-3  # the prompts give different answers: the comparison can fail


@pytest.mark.parametrize("batch_size", [2, 7, 64])
def test_steered_trials_with_shared_prefixes_equal_full_passes(tiny, batch_size):
    """Groups of trials with the same ids, steered on different spans (and controls), as localization has."""
    model, _ = tiny
    rng = np.random.default_rng(0)
    width = model.get_input_embeddings().embedding_dim
    preamble = [int(t) for t in rng.integers(5, 200, 9)]
    trials, keys = [], []
    for group in range(4):
        ids = tuple(preamble + [int(t) for t in rng.integers(5, 200, 6 + 3 * group)])
        spans = [(len(preamble) + 1, len(preamble) + 3), (len(preamble) + 3, len(preamble) + 5)]
        for start, end in spans:
            trials.append(Trial(ids, start, end, rng.standard_normal(width).astype(np.float32), 4.0))
        trials.append(Trial(ids))
        keys += [ids] * 3
    layer, options = 1, [11, 12, 13]
    old = read_options(model, layer, trials, options, batch_size)
    new = shared_prefix_options(model, layer, trials, keys, options, batch_size)
    np.testing.assert_allclose(new, old, atol=1e-5, rtol=0)
    assert np.abs(old[0] - old[2]).max() > 1e-3  # steering changes the answer: the comparison can fail


def test_a_steered_trial_needs_a_layer(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="need a layer"):
        shared_prefix_options(model, None, [Trial((1, 2, 3), 1, 2, np.ones(4), 1.0)], [0], [5], 4)
