"""The self-knowledge evaluations on a tiny random model: records per item, any answer pair, the
read-out equal to a direct forward pass, greedy answers independent of their batch."""

import math

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_LLAMA, load_tiny
from llm_introspection.selfknowledge import evaluate
from llm_introspection.selfknowledge.texts import load_questions, load_tasks

QUESTIONS = REPO / "resources/selfknowledge/questions.yaml"
TASKS = REPO / "resources/selfknowledge/tasks.yaml"
RECORD = {"variant": "instruct", "frame": "native"}


@pytest.fixture(scope="module")
def tiny(tokenizer_dir, tmp_path_factory):
    return load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path_factory.mktemp("sk"), variant="instruct")


def test_answer_shift_reads_any_answer_pair_as_a_direct_forward_pass(tiny):
    model, tokenizer = tiny
    questions = load_questions(QUESTIONS, per_category=1)
    records = evaluate.run_answer_shift(model, tokenizer, RECORD, questions, [("Red", "Blue"), ("Yes", "No")], 4)
    assert len(records) == 2 * len(questions.questions)
    red = [r for r in records if r["pair"] == "Red/Blue"]
    assert {r["group"] for r in red} == {"suggestive", "control"}
    first = red[0]
    # the same question, read by hand: the chat prompt, the prefill, then " Red" vs " Blue"
    text = evaluate.prompt_ids(tokenizer, f"{first['question']}\n\n" + questions.instruction.format(a="Red", b="Blue"),
                               True, QUESTIONS, questions.prefill)
    red_id, blue_id = (tokenizer(" Red", add_special_tokens=False)["input_ids"][-1],
                       tokenizer(" Blue", add_special_tokens=False)["input_ids"][-1])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([text])).logits[0, -1].double()
    log_probs = torch.log_softmax(logits, -1)
    assert first["log_p_a"] == pytest.approx(float(log_probs[red_id]), abs=1e-4)
    assert first["p_a"] == pytest.approx(float(torch.sigmoid(log_probs[red_id] - log_probs[blue_id])), abs=1e-4)
    assert 0 < first["option_mass"] <= 1


def test_greedy_answers_do_not_depend_on_their_batch(tiny):
    model, tokenizer = tiny
    sequences = [evaluate.prompt_ids(tokenizer, p, True, TASKS) for p in ("Name an animal.", "Say a longer thing, please.")]
    together = evaluate.greedy_answers(model, tokenizer, sequences, 6, 2, True)
    alone = [evaluate.greedy_answers(model, tokenizer, [s], 6, 1, True)[0] for s in sequences]
    assert together == alone
    # the KV-cached loop is transformers' greedy decoding
    reference = model.generate(input_ids=torch.tensor([sequences[0]]), max_new_tokens=6, do_sample=False)
    assert together[0][0] == tokenizer.decode(reference[0, len(sequences[0]):], skip_special_tokens=True).strip()
    assert all(truncated for _, truncated in together)  # a random model does not end its turn in 6 tokens


def test_length_hypotheticals_start_with_the_tasks_prefills(tiny, monkeypatch):
    """The length and first-word questions are answered after their prefills (the tasks file's), so
    the model writes a number or a word rather than answering the task; the answer to the task itself
    has none."""
    model, tokenizer = tiny
    tasks = load_tasks(TASKS)
    assert tasks.length_prefill and tasks.first_word_prefill
    seen = []

    def answers(model, tokenizer, sequences, *args):
        seen.append([tokenizer.decode(s) for s in sequences])
        return [("12 words", False)] * len(sequences)

    monkeypatch.setattr(evaluate, "greedy_answers", answers)
    (record,) = evaluate.run_length_prediction(model, tokenizer, RECORD, tasks, 1, 4, 8)
    (task,), (length, first) = seen
    assert length.endswith(tasks.length_prefill) and first.endswith(tasks.first_word_prefill)
    assert tasks.length_question in length and tasks.first_word_question in first
    assert not task.endswith((tasks.length_prefill, tasks.first_word_prefill))
    assert record["predicted_words"] == 12 and record["abs_error"] == 10.0  # "12 words" is 2 words long


@pytest.mark.parametrize("evaluation", ["self_prediction", "calibration", "length_prediction"])
def test_generating_evaluations_write_one_record_per_item(tiny, evaluation):
    model, tokenizer = tiny
    tasks = load_tasks(TASKS)
    records = getattr(evaluate, f"run_{evaluation}")(model, tokenizer, RECORD, tasks, 1, 4, 8)
    assert records and all("item" in r for r in records)
    if evaluation == "self_prediction":
        assert {r["kind"] for r in records} == set(tasks.kind_properties)
        assert {(r["item"], r["property"]) for r in records} == {
            (t.id, p) for t in tasks.self_prediction if t.id.endswith("01") for p in tasks.kind_properties[t.kind]}
    if evaluation == "calibration":
        (r,) = records
        assert len(r["top_probs"]) == 5 and sorted(r["top_probs"], reverse=True) == r["top_probs"]
        assert math.isnan(r["kl"]) or r["kl"] >= 0
    if evaluation == "length_prediction":
        (r,) = records
        assert r["actual_words"] == len(r["answer"].split()) or r["actual_words"] >= 0
        assert np.isnan(r["abs_error"]) or r["abs_error"] == abs(r["predicted_words"] - r["actual_words"])
