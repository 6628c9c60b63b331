"""Detection experiments (Lindsey 2025): does the model say it notices an injected thought, and can
it name it? The logit metric, sampled answers (graded by injection.grading) and forced
identification. The logit metric and forced identification run over input variants, so each
unsteered control is its own forward pass on its own input, never one pass counted n times."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..readout.options import first_token_ids, option_answers
from ..readout.steered import Trial, read_options, sample_trials
from ..sampling import eos_token_ids
from .cell import concept_word
from .inputs import answer_start, detection_prompt, leak_prompt, option_frame

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..sampling import SamplingParams
    from .cell import Cell
    from .texts import DetectionTexts

WORDINGS = "question + paraphrases"  # the key of texts.wordings, as errors name it


def variants(items: tuple, n: int, key: str, path: Path | str) -> tuple:
    """The first n items of a resource list; InputError naming the file and key when it has fewer."""
    if n > len(items):
        raise InputError(f"{path}: key '{key}' holds {len(items)} variants, fewer than injection.n_variants = {n}")
    return items[:n]


def run_detection_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cell: Cell, texts: DetectionTexts,
                         n_variants: int = 10, min_option_mass: float = 0.1, seed: int = 0, batch_size: int = 8,
                         concepts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Detection by the logit metric: P(yes) against P(no) as the next token after the prefilled
    answer start, each trial one forward pass, over the first n_variants wordings of the question
    (texts.wordings). Per wording (variant v): one injected trial per concept (from the question's
    first token on, prefill included); one random trial per concept, a concept-like random vector
    with that concept vector's norm (Cell.random_injections, seed (seed, v)); one control trial
    (nothing injected). Then per control question v (texts.control_questions, asked in the
    question's place; truthfully answered no): one injected trial per concept and one control.

    Records: kind (injected, random, control), concept (injected: the concept; random: the concept
    whose norm its vector has; control: None), question ('detect' or 'control_question'), variant
    (index of the wording or control question), strength_absolute, p_yes, p_no (renormalised over
    the two), option_mass (their total probability, full softmax), low_mass (option_mass <
    min_option_mass), prediction ('yes' when p_yes > p_no, else 'no') and correct (detect: yes on
    injected, no on control, None on random; control_question: no)."""
    frame = option_frame(tokenizer, texts.answer, cell.chat)
    names = cell.concepts(concepts)
    rows = []  # (record fields, Trial), one per forward pass
    for v, question in enumerate(variants(texts.wordings, n_variants, WORDINGS, texts.path)):
        ids, start = detection_prompt(tokenizer, texts, cell.chat, frame.prefill, question,
                                      template_date=cell.template_date)
        steered = [("injected", n, cell.injection(n)) for n in names]
        steered += [("random", n, pair) for n, pair in zip(names, cell.random_injections(names, [seed, v]))]
        fields = {"question": "detect", "variant": v}
        rows += [(fields | {"kind": kind, "concept": n}, Trial(tuple(ids), start, len(ids), *pair))
                 for kind, n, pair in steered]
        rows.append((fields | {"kind": "control", "concept": None}, Trial(tuple(ids))))
    for v, question in enumerate(variants(texts.control_questions, n_variants, "control_questions", texts.path)):
        ids, start = detection_prompt(tokenizer, texts, cell.chat, frame.prefill, question,
                                      template_date=cell.template_date)
        fields = {"question": "control_question", "variant": v}
        rows += [(fields | {"kind": "injected", "concept": n}, Trial(tuple(ids), start, len(ids), *cell.injection(n)))
                 for n in names]
        rows.append((fields | {"kind": "control", "concept": None}, Trial(tuple(ids))))
    fields, trials = zip(*rows)
    probs, _, mass = option_answers(read_options(model, cell.layer, trials, frame.option_ids, batch_size))
    records = []
    for row, (record, trial) in enumerate(zip(fields, trials)):
        says_yes = bool(probs[row, 0] > probs[row, 1])
        if record["question"] == "control_question":
            correct = not says_yes
        else:
            correct = None if record["kind"] == "random" else says_yes == (record["kind"] == "injected")
        records.append(cell.columns("detection_logits") | record | {
            "strength_absolute": float(trial.strength), "p_yes": float(probs[row, 0]), "p_no": float(probs[row, 1]),
            "option_mass": float(mass[row]), "low_mass": bool(mass[row] < min_option_mass),
            "prediction": "yes" if says_yes else "no", "correct": correct,
        })
    return records


def run_detection_responses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cell: Cell,
                            texts: DetectionTexts, params: SamplingParams, samples: int = 1, seed: int = 0,
                            batch_size: int = 8, concepts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Sampled answers to the detection question (sampling.SamplingParams `params`): `samples`
    injected trials per concept (from the question's first token on, through every generated
    token) and as many control trials, so half of the trials are injected, as the preamble says.
    Injected sample s of every concept has seed seed + s; control trial j has seed seed + j.
    Records: kind, concept (None for controls), question, sample, seed, strength_absolute, text,
    token_ids, n_tokens, stop_reason."""
    ids, start = detection_prompt(tokenizer, texts, cell.chat, template_date=cell.template_date)
    names = cell.concepts(concepts)
    injected = [(n, s) for n in names for s in range(samples)]
    rows = injected + [(None, j) for j in range(len(injected))]
    trials = [Trial(tuple(ids), start, None, *cell.injection(n)) if n is not None else Trial(tuple(ids), 0, None)
              for n, _ in rows]
    seeds = [seed + s for _, s in rows]
    completions = sample_trials(model, cell.layer, trials, seeds, params, eos_token_ids(model, tokenizer), batch_size)
    return [cell.columns("detection_responses") | {
        "kind": "control" if name is None else "injected", "concept": name, "question": "detect", "sample": s,
        "seed": seed_, "strength_absolute": float(trial.strength),
        "text": tokenizer.decode(c.token_ids, skip_special_tokens=True), "token_ids": [int(t) for t in c.token_ids],
        "n_tokens": len(c.token_ids), "stop_reason": c.stop_reason,
    } for (name, s), seed_, trial, c in zip(rows, seeds, trials, completions)]


def run_forced_identification(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cell: Cell,
                              texts: DetectionTexts, n_variants: int = 10, batch_size: int = 8,
                              concepts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Forced identification: after a prefill that ends where a word follows, the first token of
    " word" (concept_word, lower case) of every concept of the vector file is a candidate. Two
    questions, each over n_variants inputs (variant v), every trial one forward pass:
    'forced_identification', the detection conversation asking wording v (texts.wordings) with
    the prefilled claim of detection; and 'leak', a one-turn request for a word that never
    mentions thoughts (texts.leak_requests) with the leak prefill. Per question and variant: one
    injected trial per concept (from the question or request on, prefill included) and one control
    trial (nothing injected), which reads the rank of concept v mod n_concepts.

    Records: kind (injected, control), concept, question, variant, strength_absolute, logprob (the
    concept's first token, full softmax), rank among the candidates (1 + the candidates at least as
    probable: a first token shared with another concept never ranks first), top1, prediction (the
    most probable candidate), correct (= top1), candidate_mass (the distinct candidate tokens'
    total probability), n_candidates, shared_first_token."""
    candidates = cell.vectors.names
    names = cell.concepts(concepts)
    forced, leak = answer_start(texts.forced_prefill, cell.chat), answer_start(texts.leak_prefill, cell.chat)
    arms = {
        "forced_identification": (forced, [detection_prompt(tokenizer, texts, cell.chat, forced, q,
                                                            template_date=cell.template_date)
                                           for q in variants(texts.wordings, n_variants, WORDINGS, texts.path)]),
        "leak": (leak, [leak_prompt(tokenizer, texts, r, cell.chat, leak, template_date=cell.template_date)
                        for r in variants(texts.leak_requests, n_variants, "leak.requests", texts.path)]),
    }
    records = []
    for question, (prefill, prompts) in arms.items():
        option_ids = first_token_ids(tokenizer, prefill, [concept_word(n) for n in candidates])
        rows = []  # (kind, concept, variant, Trial), one per forward pass
        for v, (ids, start) in enumerate(prompts):
            rows += [("injected", n, v, Trial(tuple(ids), start, len(ids), *cell.injection(n))) for n in names]
            rows.append(("control", names[v % len(names)], v, Trial(tuple(ids))))
        log_probs = read_options(model, cell.layer, [trial for *_, trial in rows], option_ids, batch_size)
        records += [cell.columns("forced_identification") | {
            "kind": kind, "concept": name, "question": question, "variant": v,
            "strength_absolute": float(trial.strength),
        } | ranking(log_probs[row], name, candidates, option_ids) for row, (kind, name, v, trial) in enumerate(rows)]
    return records


def ranking(log_probs: np.ndarray, name: str, candidates: Sequence[str], option_ids: Sequence[int]) -> dict[str, Any]:
    """The record fields of one candidate readout (see run_forced_identification)."""
    own = candidates.index(name)
    rank = 1 + int((np.delete(log_probs, own) >= log_probs[own]).sum())
    distinct = [option_ids.index(i) for i in dict.fromkeys(option_ids)]
    return {"logprob": float(log_probs[own]), "rank": rank, "top1": rank == 1,
            "prediction": candidates[int(log_probs.argmax())], "correct": rank == 1,
            "candidate_mass": float(np.exp(log_probs[distinct]).sum()), "n_candidates": len(candidates),
            "shared_first_token": option_ids.count(option_ids[own]) > 1}
