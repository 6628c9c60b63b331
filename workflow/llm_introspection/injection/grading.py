"""Grading of sampled detection answers by a grading model (the judge of the config), read from
the probabilities of the rubric's yes and no options. The criteria of one response share its
prompt up to the criterion, whose key/value cache is computed once (readout.shared)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..prompts import TEMPLATE_DATE, framed_ids, tokenizer_name
from ..readout.options import answer_frame, option_answers, truncate_completion
from ..readout.shared import prompt_options
from .cell import concept_word
from .texts import CONTROL_CRITERIA, CRITERIA

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .texts import GradingRubric


def grade_responses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    responses: Sequence[Mapping[str, Any]], rubric: GradingRubric, question: str,
                    max_response_tokens: int = 256, batch_size: int = 8,
                    template_date: str = TEMPLATE_DATE, share_prefix: bool = True) -> list[dict[str, Any]]:
    """Grade detection responses (records of run_detection_responses) with a grading model: per
    criterion one pass, the verdict read from the probabilities of the rubric's yes and no options
    after the prefill (renormalised over the two). Injected trials are graded on CRITERIA, controls
    on CONTROL_CRITERIA (the others are None). `question` is the trial question the model saw; the
    grader's chat template is rendered as on `template_date`. With `share_prefix` the prompt up to
    the criterion is read once per response (equal results within float tolerance); without it
    every criterion is a full pass.

    Returns the records with, per criterion c: p_c (probability of yes), c (p_c > 0.5), mass_c
    (the two options' mass under the full softmax); detected_and_identified (all four criteria;
    None for controls), truncated, grader, rubric_version, rubric_sha256."""
    if not responses:
        return []
    frame = answer_frame(tokenizer, rubric)
    sequences, owners, graded = [], [], []
    for index, record in enumerate(responses):
        text, truncated = truncate_completion(tokenizer, record["text"], max_response_tokens, rubric.truncation_marker)
        graded.append(dict(record, truncated=truncated, grader=tokenizer_name(tokenizer), rubric_version=rubric.version,
                           rubric_sha256=rubric.sha256))
        for criterion in CRITERIA if record["kind"] == "injected" else CONTROL_CRITERIA:
            word = concept_word(record["concept"]) if record["concept"] is not None else ""
            user = rubric.user_template.format(
                instructions=rubric.instructions, question=question, response=text,
                criterion=rubric.criteria[criterion].format(word=word), options=" or ".join(rubric.options))
            sequences.append(framed_ids(tokenizer, rubric.system, user, frame.prefill, template_date=template_date))
            owners.append((index, criterion))
    log_probs = prompt_options(model, tokenizer, sequences, [index for index, _ in owners], frame.option_ids, batch_size,
                               f"max_response_tokens (now {max_response_tokens})", share_prefix)
    probs, _, mass = option_answers(log_probs)
    for record in graded:
        record.update({name: None for c in CRITERIA for name in (f"p_{c}", c, f"mass_{c}")})
    for (index, criterion), p_yes, option_mass in zip(owners, probs[:, 0], mass):
        graded[index].update({f"p_{criterion}": float(p_yes), criterion: bool(p_yes > 0.5),
                              f"mass_{criterion}": float(option_mass)})
    for record in graded:
        record["detected_and_identified"] = all(record[c] for c in CRITERIA) if record["kind"] == "injected" else None
    return graded
