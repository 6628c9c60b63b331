"""Localization (after Godet): which of N sentences carries the injected thought? Read from the
digit tokens after the question's prefill, against control questions, a norm-matched random
vector and no injection. The key/value cache of the prefix a trial's rows share (up to the first
sentence) and of the preamble every trial shares is computed once (readout.shared)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..readout.options import option_answers
from ..readout.shared import shared_prefix_options
from ..readout.steered import Trial, read_options
from ..steering import relative_strength
from .concepts import matched_random_vectors
from .inputs import option_frame, localization_prompt
from .texts import AnswerSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .cell import Cell
    from .texts import LocalizationTexts


def run_localization(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cell: Cell, texts: LocalizationTexts,
                     sentences: Sequence[str], n_trials: int, seed: int = 0, batch_size: int = 8,
                     n_sentences: int | None = None, concepts: Sequence[str] | None = None,
                     questions: Collection[str] | None = None, share_prefix: bool = True) -> list[dict[str, Any]]:
    """Localization: trial t shows n_sentences sentences drawn from the pool `sentences` (seeded)
    and injects the vector of concept t mod len(concepts) on the tokens of sentence k, for every k
    and every question; the same with a random vector of the same norm (seeded by (seed, t)); and
    once per question with nothing injected. The answer is read from the digits 1..n after the
    question's prefill. Records: trial, sentence_ids (indices into the pool), n_sentences,
    question, introspection (the question is the introspective one), kind, concept (the concept
    vector, or the one a random vector's norm matches), injected_position (1..n; None for
    controls), strength_absolute, answer_probs (renormalised over the digits), option_mass,
    prediction (1..n), correct (None for controls). `share_prefix=False` reads every row in a full
    pass (readout.steered.read_options; equal within float tolerance)."""
    n = n_sentences or texts.n_sentences
    if not 2 <= n <= 9 or n > len(sentences):
        raise InputError(f"localization needs 2..9 sentences per trial and at most the pool's "
                         f"{len(sentences)}, not {n}")
    unknown = [q for q in questions or () if q not in texts.questions]
    if unknown:
        raise InputError(f"{texts.path}: key 'questions': no question {', '.join(map(repr, unknown))}")
    names = cell.concepts(concepts)
    digits = tuple(str(d) for d in range(1, n + 1))
    frames = {q: option_frame(tokenizer, AnswerSpec(texts.path, texts.questions[q].prefill, texts.separator, digits),
                               cell.chat) for q in questions or texts.questions}
    rng = np.random.default_rng(seed)
    rows = {question: [] for question in frames}  # per question: (record fields, trial), read in full batches
    for t in range(n_trials):
        picks = [int(i) for i in rng.choice(len(sentences), size=n, replace=False)]
        name = names[t % len(names)]
        vector, strength = cell.injection(name)
        noise = matched_random_vectors(vector[None], seed=[seed, t])[0]
        noise_strength = relative_strength(cell.strength, noise, cell.mean_norm)
        for question, frame in frames.items():
            ids, spans = localization_prompt(tokenizer, texts, [sentences[i] for i in picks], question, cell.chat,
                                             frame.prefill, template_date=cell.template_date)
            fields = cell.columns("localization") | {
                "trial": t, "sentence_ids": picks, "n_sentences": n, "question": question,
                "introspection": question == texts.introspection, "concept": name}
            rows[question] += [(fields | {"kind": "injected", "injected_position": k},
                                Trial(tuple(ids), *spans[k - 1], vector, strength)) for k in range(1, n + 1)]
            rows[question] += [(fields | {"kind": "random", "injected_position": k},
                                Trial(tuple(ids), *spans[k - 1], noise, noise_strength)) for k in range(1, n + 1)]
            rows[question].append((fields | {"kind": "control", "injected_position": None}, Trial(tuple(ids))))
    records = []
    for question, frame in frames.items():
        fields, trials = zip(*rows[question])
        # a trial's 2n+1 rows share their ids up to the first sentence, every trial the preamble
        if share_prefix:
            log_probs = shared_prefix_options(model, cell.layer, trials, [t.ids for t in trials], frame.option_ids,
                                              batch_size)
        else:
            log_probs = read_options(model, cell.layer, trials, frame.option_ids, batch_size)
        probs, chosen, mass = option_answers(log_probs)
        for row, (record, trial) in enumerate(zip(fields, trials)):
            prediction, position = int(chosen[row]) + 1, record["injected_position"]
            records.append(record | {
                "strength_absolute": float(trial.strength), "answer_probs": [float(p) for p in probs[row]],
                "option_mass": float(mass[row]), "prediction": prediction,
                "correct": None if position is None else prediction == position,
            })
    return records
