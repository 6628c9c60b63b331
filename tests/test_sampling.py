import json

import h5py
import numpy as np
import pytest
import torch
from scipy.stats import chisquare, entropy
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from conftest import REPO, TINY_GEMMA3, TINY_LLAMA, load_tiny, tiny_spec
from llm_introspection import jobs
from llm_introspection.models import prepare_model
from llm_introspection.prompts import TEMPLATE_DATE, load_prompt
from llm_introspection.sampling import (
    SamplingParams, answer_end, answer_length, draw, eos_token_ids, noise_streams, sample_completions,
    sampling_distribution, token_statistics,
)
from llm_introspection.storage import write_json


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


def lines_of_ids(rows):
    """A stand-in decode: every token on a line of its own, as "<id>"."""
    return ["".join(f"\n<{t}>" for t in row) for row in rows]


def test_a_rep_that_reaches_its_end_label_is_its_own_prefix_and_leaves_the_others_alone(tokenizer_dir, tmp_path):
    """One sequence gets as end label a token it draws first at step j >= 2: it must stop there,
    equal its own run without labels cut to j tokens (ids and statistics) and equal itself run
    alone; every other sequence of the batch (a label that never occurs, or none) must be exactly
    what it is without labels. Logits x40: a trained model's entropy, and not yet one token
    repeated (as x60 gives this random model)."""
    model, tokenizer = load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path)
    model.get_output_embeddings().register_forward_hook(lambda module, args, logits: logits * 40)
    prompts = [tokenizer("A short prompt")["input_ids"], tokenizer("Another, longer prompt of more tokens")["input_ids"]]
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10)
    seeds = [42, 43, 44]
    batch = ([p for p in prompts for _ in seeds], seeds * 2)
    free = sample_completions(model, *batch, params, set(), tokenizer.pad_token_id, 6, 10)
    index, j = next((i, k) for i, c in enumerate(free) for k in range(2, len(c.token_ids))
                    if c.token_ids[k] not in c.token_ids[:k])
    labels = [("<-1>",), ()] * 3
    labels[index] = (f"<{free[index].token_ids[j]}>",)
    stopped = sample_completions(model, *batch, params, set(), tokenizer.pad_token_id, 6, 10, labels, lines_of_ids)
    assert stopped[index].stop_reason == "frame_end" and stopped[index].token_ids == free[index].token_ids[:j]
    np.testing.assert_allclose(stopped[index].stats, free[index].stats[:j], atol=1e-4)
    for other in set(range(6)) - {index}:
        assert stopped[other].token_ids == free[other].token_ids and stopped[other].stop_reason == "max_new_tokens"
        np.testing.assert_allclose(stopped[other].stats, free[other].stats, atol=1e-4)
    alone = sample_completions(model, [batch[0][index]], [batch[1][index]], params, set(), tokenizer.pad_token_id, 1,
                               10, [labels[index]], lines_of_ids)[0]
    assert alone.token_ids == stopped[index].token_ids and alone.stop_reason == "frame_end"
    with pytest.raises(ValueError, match="decode"):
        sample_completions(model, *batch, params, set(), tokenizer.pad_token_id, 6, 10, labels)


INVENTED = " It feels like a hum.\nInterviewer: I think it's like a movie.\nAI: Yeah, a movie."


def test_the_answer_ends_before_the_line_of_the_next_turn(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(INVENTED, add_special_tokens=False)["input_ids"]
    labels = ("Interviewer:", "AI:")
    assert answer_end(INVENTED, labels) == INVENTED.index("Interviewer:")
    length = answer_length(ids, labels, tokenizer.batch_decode)
    assert tokenizer.decode(ids[:length]) == " It feels like a hum.\n"
    assert answer_end(INVENTED, ("AI:",)) == INVENTED.index("AI:")  # the first line that starts with a label
    inline = " The AI: a tool. Interviewer: me."  # labels inside a line end nothing
    assert answer_end(inline, labels) is None
    assert answer_length(tokenizer(inline)["input_ids"], labels, tokenizer.batch_decode) == len(tokenizer(inline)["input_ids"])


class Script:
    """A forward hook on the output layer that makes every sequence write `script` (then its last
    token again), whatever it is given."""

    def __init__(self, script):
        self.script, self.calls = script, 0

    def __call__(self, module, args, logits):
        token = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        forced = torch.full_like(logits, -1e4)
        forced[..., token] = 0
        return forced


@pytest.mark.parametrize("variant", ["base", "instruct"])
def test_generate_cuts_a_base_frame_at_its_next_turn_only(variant, tokenizer_dir, tmp_path, monkeypatch):
    """A model that invents the interviewer's next turn: from the base frame, the generation file
    keeps the text before that turn (ids, text, entropies alike, stop_reason frame_end); under the
    chat template nothing is cut."""
    manifest = prepare_model("tiny", tiny_spec(tokenizer_dir, TINY_LLAMA, variant), tmp_path)
    write_json(tmp_path / "manifest.json", manifest)
    model, tokenizer = load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path / "model", variant)
    script = tokenizer(INVENTED, add_special_tokens=False)["input_ids"]
    model.get_output_embeddings().register_forward_hook(Script(script))
    monkeypatch.setattr(jobs, "load_model", lambda *args: model)
    prompt_path = REPO / "resources/prompts/self_reference_01.yaml"
    assert load_prompt(prompt_path).base_end_labels == ("Interviewer:", "AI:")
    settings = {"generation": {"reps": 1, "max_new_tokens": len(script), "temperature": 0.8, "top_p": 0.95, "seed": 42,
                               "batch_size": 1, "top_k_mass": 10},
                "runtime": {"device": "cpu", "dtype": "float32"}}
    paths = [tmp_path / "generations/self_reference_01.json"], [tmp_path / "entropy/self_reference_01.h5"]
    jobs.run_generate(tmp_path / "manifest.json", [prompt_path], *paths, "test", settings, 1,
                      template_date=TEMPLATE_DATE if variant == "instruct" else None)
    generation = json.loads(paths[0][0].read_text())
    (rep,) = generation["reps"]
    if variant == "base":
        answer = " It feels like a hum.\n"
        assert rep["stop_reason"] == "frame_end" and generation["prompt"]["end_labels"] == ["Interviewer:", "AI:"]
    else:
        answer = INVENTED
        assert rep["stop_reason"] == "max_new_tokens" and generation["prompt"]["end_labels"] == []
    assert rep["text"] == answer and tokenizer.decode(rep["token_ids"]) == answer
    assert rep["token_ids"] == script[: rep["n_tokens"]]
    with h5py.File(paths[1][0]) as h5:
        assert h5["n_tokens"][:].tolist() == [rep["n_tokens"]]
        assert not np.isnan(h5["entropy_t1"][0, : rep["n_tokens"]]).any() and np.isnan(h5["entropy_t1"][0, rep["n_tokens"]:]).all()
