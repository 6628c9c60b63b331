"""Thought vs text, prefill intent and intentional control (Lindsey 2025): experiments on a
sentence from the neutral pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..prompts import encode
from ..readout.options import first_token_ids, option_answers
from ..readout.steered import Trial, continuation_cosines, read_continuations, read_options
from .cell import concept_word
from .detection import ranking
from .inputs import option_frame, answer_start, conversation_ids
from .texts import INSTRUCTIONS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .cell import Cell
    from .texts import ThoughtTexts


def _sentence_trials(sentences, n_trials, names, seed):
    """Per trial: (index into the sentence pool, concept name); sentences in a seeded order without
    repeats until the pool is used up, concepts in turn."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    return [(int(order[t % len(order)]), names[t % len(names)]) for t in range(n_trials)]


def _asking(question, sentence):
    return f"{question}\n\n{sentence}"


def run_thought_vs_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cell: Cell, texts: ThoughtTexts,
                        sentences: Sequence[str], n_trials: int, seed: int = 0, batch_size: int = 8,
                        concepts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Thought vs text: trial t injects concept t mod len(concepts) on the tokens of a sentence
    from the pool (seeded), once with nothing injected, under two questions. 'thought': which word
    the model thinks about, read as in run_forced_identification (the concept's first token ranked
    against every concept of the vector file after the prefill). 'text': repeat the sentence, which
    is teacher-forced as the answer and scored token by token. Records: trial, sentence_id, kind,
    concept, question, strength_absolute; for 'thought' the ranking fields of
    run_forced_identification; for 'text' n_tokens (the sentence's), mean_logprob, token_accuracy
    (the share of them that are the most probable token), exact (all are) and correct (= exact)."""
    candidates = cell.vectors.names
    prefill = answer_start(texts.thought_prefill, cell.chat)
    option_ids = first_token_ids(tokenizer, prefill, [concept_word(n) for n in candidates])
    thought, text = [], []
    for t, (index, name) in enumerate(_sentence_trials(sentences, n_trials, cell.concepts(concepts), seed)):
        sentence = sentences[index]
        fields = cell.columns("thought_vs_text") | {"trial": t, "sentence_id": index, "concept": name}
        vector, strength = cell.injection(name)
        ids, [span] = conversation_ids(tokenizer, [_asking(texts.thought_question, sentence)], cell.chat, [sentence],
                                       prefill, texts.path, template_date=cell.template_date)
        thought += [(fields | {"kind": "injected"}, Trial(tuple(ids), *span, vector, strength)),
                    (fields | {"kind": "control"}, Trial(tuple(ids)))]
        ids, [span] = conversation_ids(tokenizer, [_asking(texts.repeat_question, sentence)], cell.chat, [sentence],
                                       "", texts.path, template_date=cell.template_date)
        answer = encode(tokenizer, answer_start(sentence, cell.chat))
        fields |= {"n_tokens": len(answer)}  # thought's rows hold copies made before
        text += [(fields | {"kind": "injected"}, Trial(tuple(ids + answer), *span, vector, strength)),
                 (fields | {"kind": "control"}, Trial(tuple(ids + answer)))]
    fields, trials = zip(*thought)
    log_probs = read_options(model, cell.layer, trials, option_ids, batch_size)
    records = [record | {"question": "thought", "strength_absolute": float(trial.strength)}
               | ranking(row, record["concept"], candidates, option_ids)
               for record, trial, row in zip(fields, trials, log_probs)]
    fields, trials = zip(*text)
    scored = read_continuations(model, cell.layer, trials, [f["n_tokens"] for f in fields], batch_size)
    for record, trial, (scores, hits) in zip(fields, trials, scored):
        records.append(record | {
            "question": "text", "strength_absolute": float(trial.strength), "mean_logprob": float(scores.mean()),
            "token_accuracy": float(hits.mean()), "exact": bool(hits.all()), "correct": bool(hits.all()),
        })
    return records


def run_prefill_intent(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cell: Cell, texts: ThoughtTexts,
                       sentences: Sequence[str], n_trials: int, seed: int = 0, batch_size: int = 8,
                       concepts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Prefill intent: the model is asked which word it thinks about when it reads a sentence
    (seeded, from the pool), its answer is prefilled with the word of concept t mod len(concepts),
    and it is asked whether it meant to say it; P(intended) against P(accident) is read after the
    answer prefill. Per trial: the word's own vector injected on the sentence's tokens
    ('injected'), the next concept's vector there ('mismatched'), nothing ('control'). Records:
    trial, sentence_id, kind, concept (the prefilled word's), injected_concept, question,
    strength_absolute, p_yes (intended), p_no, option_mass, prediction ('yes' claims intent)."""
    names = cell.concepts(concepts)
    if len(names) < 2:
        raise InputError(f"{cell.vector_path}: prefill intent needs two concepts or more (a mismatched one)")
    frame = option_frame(tokenizer, texts.intent_answer, cell.chat)
    rows = []
    for t, (index, name) in enumerate(_sentence_trials(sentences, n_trials, names, seed)):
        sentence, other = sentences[index], names[(names.index(name) + 1) % len(names)]
        messages = [_asking(texts.word_question, sentence), concept_word(name).capitalize(), texts.follow_up]
        ids, [span] = conversation_ids(tokenizer, messages, cell.chat, [sentence], frame.prefill, texts.path,
                                       template_date=cell.template_date)
        fields = cell.columns("prefill_intent") | {"trial": t, "sentence_id": index, "concept": name,
                                                   "question": "intent"}
        rows += [(fields | {"kind": "injected", "injected_concept": name},
                  Trial(tuple(ids), *span, *cell.injection(name))),
                 (fields | {"kind": "mismatched", "injected_concept": other},
                  Trial(tuple(ids), *span, *cell.injection(other))),
                 (fields | {"kind": "control", "injected_concept": None}, Trial(tuple(ids)))]
    fields, trials = zip(*rows)
    probs, _, mass = option_answers(read_options(model, cell.layer, trials, frame.option_ids, batch_size))
    return [record | {"strength_absolute": float(trial.strength), "p_yes": float(p[0]), "p_no": float(p[1]),
                      "option_mass": float(m), "prediction": "yes" if p[0] > p[1] else "no"}
            for record, trial, p, m in zip(fields, trials, probs, mass)]


def run_intentional_control(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cell: Cell, texts: ThoughtTexts,
                            sentences: Sequence[str], n_trials: int, seed: int = 0, batch_size: int = 8,
                            concepts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Intentional control (nothing is injected; the cell's strength is not used): trial t asks the
    model to write a sentence from the pool (seeded) while thinking about the word of concept
    t mod len(concepts) ('think'), while not thinking about it ('dont_think'), or with no word
    ('neutral'); the sentence is teacher-forced as the answer. Records: trial, sentence_id,
    concept, question (the instruction), cosine (the mean cosine similarity between the cell's
    hidden state on the answer's tokens and the concept vector), n_tokens."""
    rows = []
    for t, (index, name) in enumerate(_sentence_trials(sentences, n_trials, cell.concepts(concepts), seed)):
        sentence = sentences[index]
        answer = encode(tokenizer, answer_start(sentence, cell.chat))
        for instruction in INSTRUCTIONS:
            message = texts.instructions[instruction].format(sentence=sentence, word=concept_word(name))
            ids, _ = conversation_ids(tokenizer, [message], cell.chat, [], "", texts.path,
                                      template_date=cell.template_date)
            rows.append((cell.columns("intentional_control") | {
                "trial": t, "sentence_id": index, "concept": name, "question": instruction, "n_tokens": len(answer),
            }, ids + answer))
    fields, sequences = zip(*rows)
    cosines = continuation_cosines(model, cell.layer, sequences, [f["n_tokens"] for f in fields],
                                   [cell.vectors.vector(f["concept"]) for f in fields], batch_size)
    return [record | {"cosine": float(c)} for record, c in zip(fields, cosines)]
