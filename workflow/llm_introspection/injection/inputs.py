"""Trial inputs: a conversation rendered for the model (prompts.render_conversation), its token
ids, and the token span of each marked string, found from the tokenizer's character offsets of
the rendered text (steering.token_span), so a sentence can be steered on exactly its tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..prompts import TEMPLATE_DATE, encode, render_conversation, tokenizer_name
from ..readout.options import answer_frame
from ..steering import token_span

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..readout.options import AnswerFrame
    from .texts import AnswerSpec, DetectionTexts, LocalizationTexts


def answer_start(prefill: str, chat: bool) -> str:
    """A prefill as it follows the rendered prompt: after a space in the plain transcript."""
    return prefill if chat else " " + prefill


def option_frame(tokenizer: PreTrainedTokenizerBase, spec: AnswerSpec, chat: bool) -> AnswerFrame:
    """judge.answer_frame for the options of `spec` after its prefill as it follows a rendered prompt."""
    return answer_frame(tokenizer, replace(spec, prefill=answer_start(spec.prefill, chat)))


def _encode_marked(tokenizer, text, chat, marks, path):
    """Token ids of a rendered prompt (a chat text holds its special tokens; a plain transcript
    gets the tokenizer's, as in prompts.render_prompt) and the token span of each marked string,
    found after the previous one; InputError when the rendered text lacks one (a chat template
    that rewrites messages)."""
    encoded = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    spans, at = [], 0
    for mark in marks:
        at = text.find(mark, at)
        if at < 0:
            raise InputError(f"{path}: {mark!r} is not in the prompt as rendered for tokenizer {tokenizer_name(tokenizer)}")
        spans.append(token_span(encoded["offset_mapping"], at, at + len(mark)))
        at += len(mark)
    return list(encoded["input_ids"]), spans


def conversation_ids(tokenizer: PreTrainedTokenizerBase, messages: list[str], chat: bool, marks: Sequence[str],
                     prefill: str, path: Path | str,
                     template_date: str | None = TEMPLATE_DATE) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a conversation (a chat template rendered as on `template_date`) with `prefill`
    (as answer_start gives it) after it, and the token span [start, end) of each marked string, in
    order of appearance."""
    head = render_conversation(tokenizer, messages, chat, template_date=template_date)
    ids, spans = _encode_marked(tokenizer, head, chat, marks, path)
    return ids + encode(tokenizer, prefill), spans


def detection_prompt(tokenizer: PreTrainedTokenizerBase, texts: DetectionTexts, chat: bool, prefill: str = "",
                     question: str | None = None, template_date: str | None = TEMPLATE_DATE) -> tuple[list[int], int]:
    """Token ids of a detection trial asking `question` (the file's question when None), with
    `prefill` (as answer_start gives it) after the prompt, and the position of the question's
    first token, where injection starts."""
    question = texts.question if question is None else question
    messages = [texts.preamble, texts.acknowledgement, f"{texts.opening}\n\n{question}"]
    ids, [(start, _)] = conversation_ids(tokenizer, messages, chat, [question], prefill, texts.path,
                                         template_date=template_date)
    return ids, start


def leak_prompt(tokenizer: PreTrainedTokenizerBase, texts: DetectionTexts, request: str, chat: bool,
                prefill: str, template_date: str | None = TEMPLATE_DATE) -> tuple[list[int], int]:
    """Token ids of a leak trial: one user turn, `request`, then `prefill` (as answer_start gives
    it); injection starts at the request's first token, position `start`."""
    ids, [(start, _)] = conversation_ids(tokenizer, [request], chat, [request], prefill, texts.path,
                                         template_date=template_date)
    return ids, start


def localization_prompt(tokenizer: PreTrainedTokenizerBase, texts: LocalizationTexts, sentences: Sequence[str],
                        question: str, chat: bool, prefill: str,
                        template_date: str | None = TEMPLATE_DATE) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a localization trial (the preamble and its acknowledgement when the texts have
    one, then the sentences and the question; `prefill` as answer_start gives it, after the prompt)
    and the token span [start, end) of each sentence (its words, not its label)."""
    lines = [texts.sentence_format.format(number=i + 1, sentence=s) for i, s in enumerate(sentences)]
    message = texts.template.format(n=len(sentences), sentences="\n".join(lines),
                                    question=texts.questions[question].question)
    before = [texts.preamble, texts.acknowledgement] if texts.preamble else []
    # The turns before are marks too, so that each sentence is found in the trial's own turn.
    ids, spans = conversation_ids(tokenizer, [*before, message], chat, [*before, *sentences], prefill, texts.path,
                                  template_date=template_date)
    return ids, spans[len(before):]
