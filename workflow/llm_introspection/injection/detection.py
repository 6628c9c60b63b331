"""Detection experiments (Lindsey 2025): does the model say it notices an injected thought, and can
it name it? The logit metric, sampled answers (graded by injection.grading) and forced
identification."""

import numpy as np

from ..readout.options import first_token_ids, option_answers
from ..readout.steered import Trial, read_options, sample_trials
from ..sampling import eos_token_ids
from .cell import concept_word
from .inputs import option_frame, answer_start, detection_prompt


def run_detection_logits(model, tokenizer, cell, texts, batch_size=8, concepts=None):
    """Detection by the logit metric: P(yes) against P(no) as the next token after the prefilled
    answer start, for one injected trial per concept (from the question's first token on, prefill
    included) and one control trial (nothing injected: the same input for every concept, so it
    runs once). Records: kind, concept (None for the control), question, strength_absolute, p_yes,
    p_no (renormalised over the two), option_mass, prediction ('yes' when p_yes > p_no, else 'no')
    and correct (yes on an injected trial, no on the control)."""
    frame = option_frame(tokenizer, texts.answer, cell.chat)
    ids, start = detection_prompt(tokenizer, texts, cell.chat, frame.prefill)
    names = cell.concepts(concepts)
    trials = [Trial(tuple(ids), start, len(ids), *cell.injection(n)) for n in names] + [Trial(tuple(ids))]
    probs, _, mass = option_answers(read_options(model, cell.layer, trials, frame.option_ids, batch_size))
    records = []
    for row, (name, trial) in enumerate(zip([*names, None], trials)):
        kind, says_yes = ("control" if name is None else "injected"), bool(probs[row, 0] > probs[row, 1])
        records.append(cell.columns("detection_logits") | {
            "kind": kind, "concept": name, "question": "detect", "strength_absolute": float(trial.strength),
            "p_yes": float(probs[row, 0]), "p_no": float(probs[row, 1]), "option_mass": float(mass[row]),
            "prediction": "yes" if says_yes else "no", "correct": says_yes == (kind == "injected"),
        })
    return records


def run_detection_responses(model, tokenizer, cell, texts, params, samples=1, seed=0, batch_size=8, concepts=None):
    """Sampled answers to the detection question (sampling.SamplingParams `params`): `samples`
    injected trials per concept (from the question's first token on, through every generated
    token) and as many control trials, so half of the trials are injected, as the preamble says.
    Injected sample s of every concept has seed seed + s; control trial j has seed seed + j.
    Records: kind, concept (None for controls), question, sample, seed, strength_absolute, text,
    token_ids, n_tokens, stop_reason."""
    ids, start = detection_prompt(tokenizer, texts, cell.chat)
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


def run_forced_identification(model, tokenizer, cell, texts, batch_size=8, concepts=None):
    """Forced identification: after the prefilled claim of detection, the first token of
    " word" (concept_word, lower case) of every concept of the vector file is a candidate. One
    injected trial per concept (from the question on, prefill included) and one control trial
    (nothing injected), which gives every concept its control record. Records: kind, concept,
    question, strength_absolute, logprob (the concept's first token, full softmax), rank among the
    candidates (1 + the candidates at least as probable: a first token shared with another concept
    never ranks first), top1, prediction (the most probable candidate), correct (= top1),
    candidate_mass (the distinct candidate tokens' total probability), n_candidates,
    shared_first_token."""
    candidates = cell.vectors.names
    prefill = answer_start(texts.forced_prefill, cell.chat)
    option_ids = first_token_ids(tokenizer, prefill, [concept_word(n) for n in candidates])
    ids, start = detection_prompt(tokenizer, texts, cell.chat, prefill)
    names = cell.concepts(concepts)
    trials = [Trial(tuple(ids), start, len(ids), *cell.injection(n)) for n in names] + [Trial(tuple(ids))]
    log_probs = read_options(model, cell.layer, trials, option_ids, batch_size)
    rows = [("injected", r, n) for r, n in enumerate(names)] + [("control", len(names), n) for n in names]
    return [cell.columns("forced_identification") | {
        "kind": kind, "concept": name, "question": "forced_identification",
        "strength_absolute": float(trials[row].strength),
    } | ranking(log_probs[row], name, candidates, option_ids) for kind, row, name in rows]


def ranking(log_probs, name, candidates, option_ids):
    """The record fields of one candidate readout (see run_forced_identification)."""
    own = candidates.index(name)
    rank = 1 + int((np.delete(log_probs, own) >= log_probs[own]).sum())
    distinct = [option_ids.index(i) for i in dict.fromkeys(option_ids)]
    return {"logprob": float(log_probs[own]), "rank": rank, "top1": rank == 1,
            "prediction": candidates[int(log_probs.argmax())], "correct": rank == 1,
            "candidate_mass": float(np.exp(log_probs[distinct]).sum()), "n_candidates": len(candidates),
            "shared_first_token": option_ids.count(option_ids[own]) > 1}
