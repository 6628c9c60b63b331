"""Memory plans from the seed study's real model shapes, the out-of-memory back-off, finished
sequences leaving the batch, and progress lines: none of it may change an output."""

import numpy as np
import pytest
import torch

from conftest import TINY_GEMMA3, TINY_LLAMA, load_tiny
from llm_introspection.memory import (
    BatchRecord, generate_bytes_per_sequence, kv_bytes_per_token, largest_batch, plan_record, run_with_backoff,
    scaled_rate, shape_from_config, trace_bytes_per_sequence, weight_bytes,
)
from llm_introspection.progress import Progress, compare_with_plan, duration
from llm_introspection.sampling import SamplingParams, sample_completions
from llm_introspection.tracing import trace_prompts

# The published config.json values (Hugging Face model cards' configs), written out here.
SEED_CONFIGS = {
    "Llama-3.1-8B": {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "head_dim": 128, "vocab_size": 128256, "intermediate_size": 14336, "tie_word_embeddings": False},
    "Qwen2.5-7B": {"num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
                   "vocab_size": 152064, "intermediate_size": 18944, "tie_word_embeddings": False},
    "Mistral-7B-v0.3": {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32768, "intermediate_size": 14336,
                        "tie_word_embeddings": False},
    "Gemma-2-9B": {"num_hidden_layers": 42, "hidden_size": 3584, "num_attention_heads": 16, "num_key_value_heads": 8,
                   "head_dim": 256, "vocab_size": 256000, "intermediate_size": 14336, "tie_word_embeddings": True},
}
# Published parameter counts (billions) and KV cache bytes per token in bf16 (layers x kv heads x
# head dim x 2 x 2 bytes).
PUBLISHED_PARAMS_B = {"Llama-3.1-8B": 8.03, "Qwen2.5-7B": 7.62, "Mistral-7B-v0.3": 7.25, "Gemma-2-9B": 9.24}
KV_BF16 = {"Llama-3.1-8B": 32 * 8 * 128 * 4, "Qwen2.5-7B": 28 * 4 * 128 * 4, "Mistral-7B-v0.3": 32 * 8 * 128 * 4,
           "Gemma-2-9B": 42 * 8 * 256 * 4}
GB = 1e9


@pytest.mark.parametrize("name", SEED_CONFIGS)
def test_seed_shapes_give_the_published_sizes(name):
    shape = shape_from_config(SEED_CONFIGS[name])
    assert shape.n_params / 1e9 == pytest.approx(PUBLISHED_PARAMS_B[name], rel=0.01)
    assert kv_bytes_per_token(shape, 2) == KV_BF16[name]
    assert weight_bytes(shape, 2) == 2 * shape.n_params
    assert shape_from_config({"model_type": "x", "text_config": SEED_CONFIGS[name]}) == shape


def test_the_seed_study_batch_of_gemma_2_does_not_fit_an_80_gb_card():
    """The issue's arithmetic: 400 sequences x (~60 prompt + 500 new) tokens of Gemma-2-9B's cache
    is ~77 GB beside 18 GB of weights; the plan cuts the batch to what fits."""
    shape = shape_from_config(SEED_CONFIGS["Gemma-2-9B"])
    assert 400 * 560 * kv_bytes_per_token(shape, 2) / GB == pytest.approx(77, abs=1)
    budget = 80 * GB - weight_bytes(shape, 2)
    per_sequence = generate_bytes_per_sequence(shape, 60, 500, 2)
    assert per_sequence > 560 * kv_bytes_per_token(shape, 2)  # the cache plus the transient work
    batch = largest_batch(per_sequence, budget, fraction=0.9)
    assert batch * per_sequence <= 0.9 * budget < (batch + 1) * per_sequence
    assert 100 < batch < 400
    assert plan_record(400, per_sequence, budget, "simulated", 0.9).start == batch
    assert plan_record(64, per_sequence, budget, "simulated", 0.9).start == 64  # never above the config
    assert plan_record(64, per_sequence, None, "none", 0.9).start == 64  # no budget: the config


@pytest.mark.parametrize("name", SEED_CONFIGS)
def test_plans_follow_the_budget_and_the_shapes(name):
    shape = shape_from_config(SEED_CONFIGS[name])
    per_sequence = generate_bytes_per_sequence(shape, 60, 500, 2)
    batches = [largest_batch(per_sequence, gb * GB) for gb in (10, 40, 80)]
    assert batches == sorted(batches) and batches[0] < batches[2]
    assert largest_batch(per_sequence, 1) == 1  # at least one sequence: the back-off says the rest
    longer = generate_bytes_per_sequence(shape, 60, 1000, 2)
    assert longer > per_sequence
    traced = trace_bytes_per_sequence(shape, 60, 500, 2, n_captured=5)
    assert traced > 560 * kv_bytes_per_token(shape, 2) + 5 * 500 * shape.hidden_size * 2


def test_grouped_query_attention_makes_qwen_cache_cheaper_than_llama():
    qwen, llama = (shape_from_config(SEED_CONFIGS[n]) for n in ("Qwen2.5-7B", "Llama-3.1-8B"))
    assert kv_bytes_per_token(qwen, 2) * 2 < kv_bytes_per_token(llama, 2)
    assert scaled_rate(2000, 16, 8) == 1000 and scaled_rate(2000, 0.1, 8) == 8000  # within 0.25-4x


class FakeOOM(RuntimeError):
    """What torch raises on a CUDA allocation failure is torch.OutOfMemoryError; its name is what counts."""


FakeOOM.__name__ = "OutOfMemoryError"


def test_backoff_halves_the_batch_and_goes_on():
    calls, record = [], BatchRecord(configured=8, planned=6)

    def run(start, end):
        calls.append((start, end))
        if end - start > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return list(range(start, end))

    assert run_with_backoff(10, record, run) == list(range(10))
    assert calls == [(0, 6), (0, 3), (3, 6), (6, 9), (9, 10)]
    assert record.backoffs == [{"at_sequence": 0, "from": 6, "to": 3}] and record.used == [3, 3, 3, 1]
    with pytest.raises(ValueError):
        run_with_backoff(4, BatchRecord(4), lambda start, end: (_ for _ in ()).throw(ValueError("not memory")))
    with pytest.raises(FakeOOM):  # a single sequence that does not fit is an error, not a loop
        run_with_backoff(2, BatchRecord(1), lambda start, end: (_ for _ in ()).throw(FakeOOM("no")))


class OOMOnce:
    """Wraps a model's forward: the first call with more than `rows` sequences raises out-of-memory."""

    def __init__(self, model, rows):
        self.forward, self.rows, self.raised, self.batch_rows = model.forward, rows, False, []
        model.forward = self

    def __call__(self, *args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        self.batch_rows.append(rows)
        if not self.raised and rows > self.rows:
            self.raised = True
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.forward(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny(tokenizer_dir, tmp_path_factory):
    """A tiny llama whose logits are scaled to a trained model's entropy (see test_sampling), and prompts."""
    model, tokenizer = load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path_factory.mktemp("tiny"))
    model.get_output_embeddings().register_forward_hook(lambda module, args, logits: logits * 40)
    prompts = [tokenizer(t)["input_ids"] for t in ("A short prompt", "Another, longer prompt of more tokens")]
    return model, prompts, _sample(model, prompts, set())  # the unconstrained run both tests compare with


def _sample(model, prompts, eos, **options):
    seeds = [42, 43, 44, 45]
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10)
    return sample_completions(model, [p for p in prompts for _ in seeds], seeds * len(prompts), params, eos, 0,
                              8, 10, **options)


def _assert_same(first, second):
    for a, b in zip(first, second, strict=True):
        assert a.token_ids == b.token_ids and a.stop_reason == b.stop_reason
        np.testing.assert_allclose(a.stats, b.stats, atol=1e-4)


def test_simulated_oom_halves_the_batch_and_changes_no_sample(tiny):
    model, prompts, free = tiny
    record = BatchRecord(configured=8)
    wrapper = OOMOnce(model, rows=4)
    try:
        backed_off = _sample(model, prompts, set(), record=record)
    finally:
        model.forward = wrapper.forward
    assert wrapper.raised and record.backoffs == [{"at_sequence": 0, "from": 8, "to": 4}] and record.used == [4, 4]
    _assert_same(free, backed_off)


def test_finished_sequences_leave_the_batch_and_change_no_sample(tiny):
    model, prompts, free = tiny
    eos = {free[0].token_ids[1], free[5].token_ids[3]}  # two rows end early, the rest later or never
    kept = _sample(model, prompts, eos, compact=None)
    assert sum(len(c.token_ids) < 10 for c in kept) >= 2
    wrapper = OOMOnce(model, rows=10**6)  # counts the rows of every forward pass
    try:
        compacted = _sample(model, prompts, eos, compact=1.0)
    finally:
        model.forward = wrapper.forward
    _assert_same(kept, compacted)
    assert wrapper.batch_rows[0] == 8 and min(wrapper.batch_rows) < 8  # the batch shrank
    assert wrapper.batch_rows == sorted(wrapper.batch_rows, reverse=True)


@pytest.mark.parametrize("architecture", [TINY_LLAMA, TINY_GEMMA3], ids=["llama", "gemma3"])
def test_trace_back_off_and_split_prompts_change_no_state(architecture, tokenizer_dir, tmp_path):
    model, tokenizer = load_tiny(tokenizer_dir, architecture, tmp_path)
    prompts = [tokenizer(t)["input_ids"] for t in ("One prompt", "A second, longer prompt")]
    completions = [[[5, 6, 7], [8, 9]], [[10, 11, 12, 13], [14], [15, 16]]]
    whole = trace_prompts(model, prompts, completions, [0, 2, 4], 8, pad_id=0)
    record = BatchRecord(configured=8, planned=4)
    wrapper = OOMOnce(model, rows=2)  # trace runs the decoder, whose rows reach the model's inner forward
    decoder = model.get_decoder()
    inner = OOMOnce(decoder, rows=2)
    try:
        backed_off = trace_prompts(model, prompts, completions, [0, 2, 4], 8, pad_id=0, record=record)
    finally:
        model.forward, decoder.forward = wrapper.forward, inner.forward
    assert inner.raised and record.backoffs[0]["from"] == 4 and sum(record.used) == 5
    for (prompt_a, reps_a), (prompt_b, reps_b) in zip(whole, backed_off, strict=True):
        np.testing.assert_allclose(prompt_a, prompt_b, atol=1e-5)
        for a, b in zip(reps_a, reps_b, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_progress_logs_every_interval_with_batch_step_live_rate_and_eta():
    now, lines = [0.0], []
    progress = Progress("generate", total=20, interval_s=30, log=lines.append, clock=lambda: now[0])
    progress.start_batch(10)
    for step in range(100):
        now[0] += 1.0
        progress.step(step, 100, live=10 - step // 20, new_tokens=10)
    progress.end_batch(10)
    assert len(lines) == 3  # at 30, 60 and 90 s
    assert lines[0] == ("generate: batch 1 (10 sequences), step 30/100, 9 live, 0/20 sequences done, 10.0 tok/s, "
                        "ETA 2m50s")  # 3 of 20 sequences in 30 s: 170 s to go
    assert progress.tokens == 1000 and progress.done == 10
    assert duration(3725) == "1h02m" and duration(5) == "5s"
    line = compare_with_plan("trace", {"batch": 8, "seconds": 10.0, "peak": None}, {"batch": 4, "seconds": 12.5})
    assert line == "trace plan vs actual: batch planned 8, actual 4; seconds planned 10.0, actual 12.5"
