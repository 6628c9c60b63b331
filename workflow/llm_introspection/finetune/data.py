"""The detection data of one (model, variant): token ids of each two-turn example, the
directions, the layers' residual norms and the examples of each split.

The first turn (a neutral user message and the assistant's reply, with whatever the template puts
before them) is what steering acts on; the question turn and the prefill are read afterwards,
unsteered. The answer options follow the prefill as single tokens: a trailing space of the prefill
goes with the option where the tokenizer writes " yes" as one token (readout.answer_frame), so the
model never sees a lone space token it would not produce itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..batching import PAD_ID, left_pad
from ..errors import InputError
from ..injection.concepts import concept_prompt_ids, mean_subtraction_vectors
from ..injection.texts import AnswerSpec
from ..prompts import TEMPLATE_DATE, encode, render_conversation, render_turns, tokenizer_name
from ..readout.options import AnswerFrame, answer_frame
from ..tracing import capture_residual
from .design import DIRECTION_POOL, Variant, assign_labels, check_balance, plan_split

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..injection.texts import ConceptWords
    from .texts import Context, DetectionTexts


def options_frame(tokenizer: PreTrainedTokenizerBase, texts: DetectionTexts, answers: str, chat: bool) -> AnswerFrame:
    """readout.AnswerFrame of the answer pair `answers` after the texts' prefill: the prefill as
    the model reads it and the option ids. The prefill's trailing whitespace is the separator."""
    head = texts.prefill.rstrip()
    spec = AnswerSpec(texts.path, head if chat else " " + head, texts.prefill[len(head):], texts.answers[answers])
    return answer_frame(tokenizer, spec, source="detection data file", key=f"answers.{answers}")


def example_ids(tokenizer: PreTrainedTokenizerBase, context: Context, question: str, chat: bool, prefill: str,
                path: Path | str, template_date: str | None = TEMPLATE_DATE) -> tuple[list, list]:
    """(first-turn ids, question ids + prefill ids) of one example (a chat template rendered as on
    `template_date`). The first turn ends where its complete turns end in the rendered conversation
    (InputError when a token straddles that point or the template does not render them as a prefix)."""
    messages = [context.user, context.assistant]
    text = render_conversation(tokenizer, [*messages, question], chat, template_date=template_date)
    turns = render_turns(tokenizer, messages, chat, template_date=template_date)
    if not text.startswith(turns):
        raise InputError(f"{path}: the chat template of tokenizer {tokenizer_name(tokenizer)} does not render the "
                         "first turn as a prefix of the conversation")
    encoded = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    offsets, ids = encoded["offset_mapping"], list(encoded["input_ids"])
    first = next((i for i, (start, end) in enumerate(offsets) if end > start and start >= len(turns)), len(ids))
    if any(start < len(turns) < end for start, end in offsets):
        raise InputError(f"{path}: a token of tokenizer {tokenizer_name(tokenizer)} straddles the end of the first turn")
    return ids[:first], ids[first:] + encode(tokenizer, prefill)


def random_directions(n: int, width: int, seed: int) -> np.ndarray:
    """(n, width) float32 random unit directions (Gaussian, normalised); the same seed gives the same."""
    draws = np.random.default_rng(seed).standard_normal((n, width))
    return (draws / np.linalg.norm(draws, axis=1, keepdims=True)).astype(np.float32)


def concept_directions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, words: ConceptWords, record: dict,
                       index: int, counts: dict, batch_size: int, template_date: str | None = TEMPLATE_DATE) -> dict:
    """Concept vectors (mean subtraction, injection.concepts, the requests rendered as on
    `template_date`) at hidden-state `index`, normalised: pool name -> (names, (n, d) float32); the
    train pool takes the first concepts of the file, the held-out pool the next ones."""
    needed = counts["train"] + counts["heldout"]
    if needed > len(words.concepts):
        raise InputError(f"config key 'finetune.n_directions': concept vectors need {needed} concepts, "
                         f"the concept file has {len(words.concepts)}")

    def prompts(items):
        return concept_prompt_ids(items, words.template, tokenizer, record["variant"], record["frame"], record["name"],
                                  template_date=template_date)

    names = list(words.concepts[:needed])
    vectors, _ = mean_subtraction_vectors(model, [index], prompts(names), prompts(words.baseline), batch_size)
    unit = vectors[:, 0] / np.linalg.norm(vectors[:, 0], axis=1, keepdims=True)
    return {"train": (names[: counts["train"]], unit[: counts["train"]].astype(np.float32)),
            "heldout": (names[counts["train"]:], unit[counts["train"]:].astype(np.float32))}


@torch.inference_mode()
def mean_residual_norms(model: PreTrainedModel, indices: Sequence[int], prompts: Sequence[Sequence[int]],
                        batch_size: int) -> dict:
    """index -> the mean L2 norm of that hidden state over every token of the prompts but each
    one's position 0 (the attention sink), in one pass per batch for all indices."""
    totals, count = dict.fromkeys(indices, 0.0), 0
    for start in range(0, len(prompts), batch_size):
        ids, mask, positions = left_pad(prompts[start : start + batch_size], PAD_ID, model.device)
        kept = mask.bool() & (positions > 0)
        with capture_residual(model, indices) as captured:
            model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        for index in indices:
            totals[index] += float(captured[index].double().norm(dim=-1)[kept].sum())
        count += int(kept.sum())
    return {index: total / count for index, total in totals.items()}


def build_splits(variant: Variant, sizes: dict, pools: dict, magnitudes: Sequence[float], ranges: dict, norms: dict,
                 turn1_ids: list, tolerance: float, seed: int) -> dict:
    """split -> its examples (dicts): design (steered or not, direction, magnitude, layer range,
    context), what is applied (steered: False for every example of a variant without steering;
    layers and absolute strengths = magnitude x the layer's mean residual norm), the label and
    whether the variant corrupted it. InputError when a split's labels are off balance."""
    splits = {}
    for offset, split in enumerate(sizes):
        rng = np.random.default_rng([seed, offset])
        pool = DIRECTION_POOL[split]
        rows = plan_split(sizes[split], len(pools[pool]), magnitudes, list(ranges), rng)
        labels, corrupted = assign_labels([r["design_steered"] for r in rows], variant, rng)
        check_balance(labels, variant.expected_share, tolerance, f"variant {variant.name}, split {split}")
        contexts = {True: iter(rng.permutation(np.resize(np.arange(len(turn1_ids)), len(rows)))),
                    False: iter(rng.permutation(np.resize(np.arange(len(turn1_ids)), len(rows))))}
        examples = []
        for i, (row, label, bad) in enumerate(zip(rows, labels, corrupted)):
            context = int(next(contexts[row["design_steered"]]))
            steered = row["design_steered"] and variant.steering != "none"
            layers = ranges[row["layer_range"]] if steered else []
            examples.append(row | {
                "index": i, "split": split, "context": context, "turn1_ids": turn1_ids[context],
                "steered": steered, "direction_set": pool if row["design_steered"] else None,
                "layers": layers, "strengths": [row["magnitude"] * norms[h] for h in layers],
                "label": int(label), "corrupted": bool(bad),
            })
        splits[split] = examples
    return splits
