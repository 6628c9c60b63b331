"""LLM judge: a local causal LM rates completions, read from its option probabilities.

For every completion and dimension the judge reads one prompt (the rubric's instructions, the
original prompt, the completion, the dimension's question and levels) whose assistant turn is
prefilled with the answer start ("Score:"). One forward pass gives the next-token logits; the
four option tokens "0".."3" are renormalised among themselves into p0..p3, so there is always a
score: the expected score sum(k * p_k) and the argmax. The mass the options had under the full
softmax is kept as a diagnostic (low mass: the judge wanted to say something else).

The four dimensions of one completion share everything up to the dimension's question, and all
judge prompts share the system message and the instructions: those prefixes run once and their
key/value cache is shared (readout.shared); `share_prefix=False` runs one full pass per prompt.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ..prompts import TEMPLATE_DATE, framed_ids
from ..errors import InputError
from ..readout.options import answer_frame, truncate_completion
from ..readout.shared import prompt_options

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .rubric import Rubric

COLUMNS = ("item", "dimension", "p0", "p1", "p2", "p3", "expected", "argmax", "option_mass", "truncated",
           "judge_prompt_tokens")


def _options_text(options):
    return ", ".join(options[:-1]) + " or " + options[-1]


def render_user_message(rubric: Rubric, dimension: str, completion_text: str, prompt_text: str | None) -> str:
    """The user message for one dimension (the completion already truncated)."""
    if dimension not in rubric.dimensions:
        raise InputError(f"rubric file {rubric.path}: no dimension {dimension!r} (it has {list(rubric.dimensions)})")
    spec = rubric.dimensions[dimension]
    levels = "\n".join(f"{option}: {meaning}" for option, meaning in zip(rubric.options, spec.levels))
    return rubric.user_template.format(
        instructions=rubric.instructions, prompt=prompt_text or "", completion=completion_text,
        question=spec.question, levels=levels, options=_options_text(rubric.options),
    )


def _judge_ids(tokenizer, rubric, frame, dimension, completion_text, prompt_text, template_date):
    user = render_user_message(rubric, dimension, completion_text, prompt_text)
    return framed_ids(tokenizer, rubric.system, user, frame.prefill, template_date=template_date)


def build_judge_prompt(tokenizer: PreTrainedTokenizerBase, rubric: Rubric, dimension: str, completion_text: str,
                       prompt_text: str | None, max_completion_tokens: int,
                       template_date: str = TEMPLATE_DATE) -> tuple[list[int], bool]:
    """Token ids of the judge prompt for one completion and dimension, and whether the completion
    was truncated to `max_completion_tokens` tokens (its beginning is kept).

    Through the chat template (as on `template_date`) when the tokenizer has one (system message,
    user message, then the assistant turn prefilled), else a plain-text frame (system text, user
    message, prefill).
    """
    frame = answer_frame(tokenizer, rubric)
    completion, truncated = truncate_completion(tokenizer, completion_text, max_completion_tokens,
                                                rubric.truncation_marker)
    return _judge_ids(tokenizer, rubric, frame, dimension, completion, prompt_text, template_date), truncated


def score_completions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      items: Iterable[tuple[str | None, str]], rubric: Rubric, max_completion_tokens: int = 512,
                      batch_size: int = 16, dimensions: Collection[str] | None = None,
                      share_prefix: bool = True, template_date: str = TEMPLATE_DATE) -> pd.DataFrame:
    """Judge every (prompt_text, completion_text) of `items` on every rubric dimension (or on
    those named in `dimensions`), the judge's chat template rendered as on `template_date`.

    One row per item x dimension (items in order, dimensions in DIMENSIONS order): item (index
    into items), dimension, p0..p3 (the option probabilities renormalised over the options),
    expected (sum k * p_k), argmax, option_mass (the options' total probability under the full
    softmax), truncated (the completion was cut to max_completion_tokens), judge_prompt_tokens.
    With `share_prefix` the shared prefixes' key/value caches are computed once (equal results
    within float tolerance).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"judge batch_size must be a positive integer, got {batch_size!r}")
    unknown = [d for d in dimensions or () if d not in rubric.dimensions]
    if unknown:
        raise InputError(f"rubric file {rubric.path}: no dimension {', '.join(map(repr, unknown))} "
                         f"(it has {', '.join(rubric.dimensions)})")
    selected = [d for d in rubric.dimensions if dimensions is None or d in dimensions]
    frame = answer_frame(tokenizer, rubric)
    rows, sequences = [], []
    for index, (prompt_text, completion_text) in enumerate(items):
        completion, truncated = truncate_completion(tokenizer, completion_text, max_completion_tokens,
                                                    rubric.truncation_marker)
        for dimension in selected:
            ids = _judge_ids(tokenizer, rubric, frame, dimension, completion, prompt_text, template_date)
            rows.append({"item": index, "dimension": dimension, "truncated": truncated, "judge_prompt_tokens": len(ids)})
            sequences.append(ids)
    if not sequences:
        return pd.DataFrame(columns=list(COLUMNS))
    log_probs = torch.from_numpy(prompt_options(model, tokenizer, sequences, [row["item"] for row in rows],
                                                frame.option_ids, batch_size,
                                                f"max_completion_tokens (now {max_completion_tokens})", share_prefix))
    probs = torch.softmax(log_probs, dim=-1)
    mass = log_probs.exp().sum(-1)
    levels = torch.arange(len(frame.option_ids), dtype=torch.float64)
    expected = (probs * levels).sum(-1)
    argmax = probs.argmax(-1)
    table = pd.DataFrame(rows)
    for k in range(probs.shape[1]):
        table[f"p{k}"] = probs[:, k].numpy()
    table["expected"] = expected.numpy()
    table["argmax"] = argmax.numpy().astype(int)
    table["option_mass"] = mass.numpy()
    return table[list(COLUMNS)]
