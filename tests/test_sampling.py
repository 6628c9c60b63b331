import numpy as np
import pytest
import torch
from scipy.stats import chisquare, entropy
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from conftest import TINY_GEMMA3, TINY_LLAMA, load_tiny
from llm_introspection.sampling import (
    SamplingParams, draw, eos_token_ids, noise_streams, sample_completions, sampling_distribution, token_statistics,
)


def dense(probs, token_ids, vocab):
    out = torch.zeros(probs.shape[0], vocab)
    return out.scatter_add(1, token_ids, probs)


@pytest.mark.parametrize("temperature, top_p", [(0.8, 0.95), (1.0, 0.5), (0.5, 1.0), (1.3, 0.9)])
def test_sampling_distribution_matches_transformers_warpers(temperature, top_p):
    logits = torch.randn(6, 3000, generator=torch.Generator().manual_seed(1)) * 3
    probs, token_ids = sampling_distribution(logits, temperature, top_p)
    ours = dense(probs, token_ids, logits.shape[-1])
    warped = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_p < 1:
        warped = TopPLogitsWarper(top_p)(None, warped)
    reference = torch.softmax(warped, dim=-1)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def test_wide_nucleus_falls_back_to_a_full_sort():
    logits = torch.zeros(2, 5000)  # uniform: the nucleus is far wider than the candidate set
    probs, token_ids = sampling_distribution(logits, 1.0, 0.95)
    ours = dense(probs, token_ids, 5000)
    assert int((ours > 0).sum(-1)[0]) == 4750
    torch.testing.assert_close(ours.sum(-1), torch.ones(2))


def test_greedy_puts_all_mass_on_the_argmax():
    logits = torch.randn(3, 50)
    probs, token_ids = sampling_distribution(logits, 0.0, 0.9)
    assert torch.equal(token_ids[:, 0], logits.argmax(-1))
    assert torch.equal(probs, torch.ones(3, 1))


def test_draw_follows_the_distribution():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20000
    uniforms = noise_streams([7], n)[0]
    columns = draw(p.expand(n, 4), uniforms).squeeze(-1)
    counts = np.bincount(columns.numpy(), minlength=4)
    assert chisquare(counts, f_exp=p.numpy() * n).pvalue > 1e-3


def test_noise_stream_depends_only_on_its_seed():
    together = noise_streams([42, 43, 44], 16)
    assert torch.equal(together[1], noise_streams([43], 16)[0])
    assert not torch.equal(together[0], together[1])


def test_token_statistics_match_scipy():
    logits = torch.randn(4, 100) * 2
    probs, token_ids = sampling_distribution(logits, 0.7, 0.9)
    column = torch.zeros(4, 1, dtype=torch.long)
    chosen = token_ids[:, 0]
    stats = token_statistics(logits, probs, column, chosen, top_k=5).numpy()
    p1 = torch.softmax(logits, -1).numpy()
    np.testing.assert_allclose(stats[:, 0], entropy(p1, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(stats[:, 1], entropy(probs.numpy(), axis=-1), rtol=1e-5)
    np.testing.assert_allclose(stats[:, 2], np.sort(p1, -1)[:, -5:].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(stats[:, 3], np.log(p1[np.arange(4), chosen.numpy()]), rtol=1e-5)
    np.testing.assert_allclose(stats[:, 4], np.log(probs[:, 0].numpy()), rtol=1e-5)


def test_uniform_distribution_has_entropy_log_v():
    logits = torch.zeros(1, 64)
    probs, token_ids = sampling_distribution(logits, 1.0, 1.0)
    stats = token_statistics(logits, probs, torch.zeros(1, 1, dtype=torch.long), token_ids[:, 0], 8)
    assert stats[0, 0].item() == pytest.approx(np.log(64), rel=1e-6)
    assert stats[0, 2].item() == pytest.approx(8 / 64, rel=1e-6)


@pytest.mark.parametrize("architecture", [TINY_LLAMA, TINY_GEMMA3], ids=["llama", "gemma3"])
def test_rep_alone_equals_rep_in_batch(architecture, tokenizer_dir, tmp_path):
    """A random model's next-token distribution is nearly flat (46k tokens in the 0.95 nucleus), so
    the last-bit differences between a batched and a single forward pass reorder near-ties and flip
    draws; its logits are scaled x60 here, to a real model's entropy (~2-3 nats)."""
    model, tokenizer = load_tiny(tokenizer_dir, architecture, tmp_path)
    model.get_output_embeddings().register_forward_hook(lambda module, args, logits: logits * 60)
    prompts = [tokenizer("A short prompt")["input_ids"], tokenizer("Another, longer prompt of more tokens")["input_ids"]]
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=8)
    eos = eos_token_ids(model, tokenizer)
    seeds = [42, 43, 44]
    batch = sample_completions(model, [p for p in prompts for _ in seeds], seeds * 2, params, eos, tokenizer.pad_token_id, 6, 10)
    for index, (prompt, seed) in enumerate([(p, s) for p in prompts for s in seeds]):
        alone = sample_completions(model, [prompt], [seed], params, eos, tokenizer.pad_token_id, 1, 10)[0]
        assert alone.token_ids == batch[index].token_ids
        np.testing.assert_allclose(alone.stats, batch[index].stats, atol=1e-4)
    assert len({tuple(c.token_ids) for c in batch[:3]}) > 1, "different seeds should differ"


def test_completion_stops_at_eos(tokenizer_dir, tmp_path):
    model, tokenizer = load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path)
    prompt = tokenizer("Hello")["input_ids"]
    greedy = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=5)
    first = sample_completions(model, [prompt], [0], greedy, set(), tokenizer.pad_token_id, 1, 10)[0]
    assert first.stop_reason == "max_new_tokens" and len(first.token_ids) == 5
    stop_at = first.token_ids[2]
    stopped = sample_completions(model, [prompt], [0], greedy, {stop_at}, tokenizer.pad_token_id, 1, 10)[0]
    end = first.token_ids.index(stop_at) + 1
    assert stopped.stop_reason == "eos"
    assert stopped.token_ids == first.token_ids[:end]
    assert stopped.stats.shape == (end, 5)
