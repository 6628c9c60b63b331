"""Answers read from next-token probabilities: the option tokens after a prefill, their
log-probabilities in batched forward passes, and what they say.

A read-out never generates: one forward pass per sequence gives the next-token log-probabilities
of the answer options; the full-vocabulary logits live for that batch only. The judge, the grader,
every injection experiment and the self-knowledge evaluations read their answers here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..batching import PAD_ID, left_pad
from ..errors import InputError
from ..modules import input_device
from ..prompts import encode, tokenizer_name

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..injection.texts import AnswerSpec
    from ..study.rubric import RubricText


@dataclass(frozen=True)
class AnswerFrame:
    """How the answer is read with one tokenizer: the text the judge prompt ends with, and the
    token id of each option as the next token after it."""

    prefill: str
    option_ids: tuple


def option_token_ids(tokenizer: PreTrainedTokenizerBase, options: Sequence[str], prefill: str) -> list[int]:
    """The token id of each option as the next token right after `prefill`.

    The id is the one token that `prefill + option` has beyond the tokens of `prefill`, so a
    tokenizer's own way of joining them (" 0" as one token, or a space and "0") is what counts.
    InputError names the tokenizer and the option when that is not exactly one extra token.
    """
    base = encode(tokenizer, prefill)
    ids = []
    for option in options:
        full = encode(tokenizer, prefill + option)
        if full[: len(base)] != base or len(full) != len(base) + 1:
            extra = full[len(base):] if full[: len(base)] == base else full
            raise InputError(
                f"tokenizer {tokenizer_name(tokenizer)}: answer option {option!r} after the prefill {prefill!r} "
                f"is not exactly one token of its tokenizer (it is {tokenizer.convert_ids_to_tokens(extra)})"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise InputError(f"tokenizer {tokenizer_name(tokenizer)}: answer options {list(options)} share a token ({ids})")
    return ids


def answer_frame(tokenizer: PreTrainedTokenizerBase, rubric: RubricText | AnswerSpec, source: str = "rubric file",
                 key: str = "options") -> AnswerFrame:
    """Where the separator goes for this tokenizer: with the options (" 0" is one token) or at
    the end of the prompt (a space token, then "0"); InputError, naming `source` (the kind of
    file), its path and `key`, when neither makes every option one token."""
    attempts = [(rubric.prefill, [rubric.separator + o for o in rubric.options])]
    if rubric.separator:
        attempts.append((rubric.prefill + rubric.separator, list(rubric.options)))
    errors = []
    for prefill, options in attempts:
        try:
            return AnswerFrame(prefill, tuple(option_token_ids(tokenizer, options, prefill)))
        except InputError as error:
            errors.append(str(error))
    raise InputError(f"{source} {rubric.path}: key '{key}': the options are not one token each after the "
                     "prefill: " + "; and ".join(errors))


def truncate_completion(tokenizer: PreTrainedTokenizerBase, text: str | None, max_tokens: int,
                        marker: str) -> tuple[str, bool]:
    """The first `max_tokens` tokens of `text` (plus `marker` when cut) and whether it was cut."""
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise InputError(f"judge max_completion_tokens must be a positive integer, got {max_tokens!r}")
    text = text or ""
    ids = encode(tokenizer, text)
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[:max_tokens]) + marker, True


def next_token_log_probs(model: PreTrainedModel, sequences: Sequence[Sequence[int]], option_ids: Sequence[int],
                         pad_id: int) -> torch.Tensor:
    """(len(sequences), n_options) float64 log-probabilities (full softmax) of the options as the
    next token after each sequence, in one left-padded forward pass under whatever hooks are on."""
    ids, mask, positions = left_pad(sequences, pad_id, input_device(model))
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=1).logits[:, -1].float()
    log_probs = torch.log_softmax(logits, dim=-1)  # the full vocabulary, for this batch only
    return log_probs[:, torch.tensor(option_ids, device=log_probs.device)].double().cpu()


def check_context(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sequences: Sequence[Sequence[int]],
                  setting: str) -> None:
    """InputError naming the model and `setting` (the knob that shortens the prompts) when a
    sequence is longer than the model's context."""
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(map(len, sequences))
    if limit is not None and longest > limit:
        raise InputError(f"judge {tokenizer_name(tokenizer)}: a judge prompt has {longest} tokens, more than its "
                         f"context of {limit}; lower {setting}")


@torch.inference_mode()
def option_log_probs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sequences: Sequence[Sequence[int]],
                     option_ids: Sequence[int], batch_size: int, setting: str) -> torch.Tensor:
    """(len(sequences), n_options) float64 log-probabilities of the options as the next token,
    batched longest first, one full pass per sequence; InputError as check_context says."""
    check_context(model, tokenizer, sequences, setting)
    model.eval()
    out = torch.empty((len(sequences), len(option_ids)), dtype=torch.float64)
    # longest first, so a batch pads little; each row's result is independent of its batch mates
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = next_token_log_probs(model, [sequences[i] for i in rows], option_ids, PAD_ID)
    return out


def option_answers(log_probs: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From option log-probabilities (n, k): the probabilities renormalised over the options, the
    index of the most probable option and the options' total mass under the full softmax."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    mass = np.exp(log_probs).sum(-1)
    shifted = np.exp(log_probs - log_probs.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True), log_probs.argmax(-1), mass


def first_token_ids(tokenizer: PreTrainedTokenizerBase, prefill: str, words: Iterable[str]) -> list[int]:
    """Per word, the id of the first token of " word" right after `prefill`; InputError when the
    prefill's own tokens change."""
    base = encode(tokenizer, prefill)
    ids = []
    for word in words:
        full = encode(tokenizer, f"{prefill} {word}")
        if full[: len(base)] != base or len(full) == len(base):
            raise InputError(f"tokenizer {tokenizer_name(tokenizer)}: {word!r} after the prefill {prefill!r} "
                             "does not start a token of its own")
        ids.append(full[len(base)])
    return ids
