"""Steer, then remove: the first turn is read with directions added to the residual stream, the
hooks come off, and the question is read from the steered key/value cache with clean weights.

An example (a dict, as the detection data stores it) has `turn1_ids` (the steered first turn),
and when steered a `direction_set` and `direction` (a row of the directions file), the hidden-state
indices `layers` and the absolute `strengths` added there (one per layer, to every position of the
first turn). The question ids (question, then the prefill) are the same for every example of a
split. Only the first turn's cache is built under steering; nothing of the question is steered.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..batching import PAD_ID, left_pad
from ..steering import Positions, steer

if TYPE_CHECKING:
    from transformers import Cache, PreTrainedModel


def _layer_deltas(examples, directions: dict, width: int) -> dict:
    """index -> ((batch, d) unit directions, (batch,) strengths), zeros where a row steers nothing."""
    deltas = {}
    for row, example in enumerate(examples):
        if not example.get("steered"):
            continue
        vector = np.asarray(directions[example["direction_set"]][example["direction"]], dtype=np.float32)
        for index, strength in zip(example["layers"], example["strengths"]):
            vectors, strengths = deltas.setdefault(
                index, (np.zeros((len(examples), width), np.float32), np.zeros(len(examples), np.float32)))
            vectors[row], strengths[row] = vector, strength
    return deltas


def steered_cache(model: PreTrainedModel, examples: list, directions: dict) -> tuple:
    """The key/value cache of the examples' first turns (left-padded, one batch), each read with
    its directions added at its layers; and the first turn's attention mask. No gradient; every
    steering hook is removed before this returns, whatever happens."""
    width = model.get_input_embeddings().embedding_dim
    ids, mask, positions = left_pad([e["turn1_ids"] for e in examples], PAD_ID, model.device)
    with torch.no_grad(), ExitStack() as hooks:
        for index, (vectors, strengths) in sorted(_layer_deltas(examples, directions, width).items()):
            hooks.enter_context(steer(model, index, vectors, strengths, Positions.onward(0)))
        out = model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    return out.past_key_values, mask


def answer_logits(model: PreTrainedModel, cache: Cache, mask: torch.Tensor,
                  question_ids: Sequence[int]) -> torch.Tensor:
    """(batch, vocab) next-token logits after the question ids, read from `cache` (the first turn's,
    attention `mask`); differentiable with respect to the model's weights (the cache is not)."""
    batch = mask.shape[0]
    question = torch.as_tensor(list(question_ids), device=mask.device).expand(batch, -1)
    full = torch.cat([mask, torch.ones_like(question)], dim=1)
    positions = (full.cumsum(-1) - 1)[:, -question.shape[1]:]
    out = model(input_ids=question, attention_mask=full, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1]


def read_answers(model: PreTrainedModel, examples: Sequence[dict], question_ids: Sequence[int], directions: dict,
                 option_ids: Sequence[int], batch_size: int) -> np.ndarray:
    """(len(examples), len(option_ids)) float64 log-probabilities (full softmax) of the options as
    the answer token, each example steered-then-removed as it says. Full-vocabulary logits live for
    one batch only."""
    out = np.empty((len(examples), len(option_ids)))
    options = torch.tensor(list(option_ids), device=model.device)
    with torch.inference_mode():
        for begin in range(0, len(examples), batch_size):
            batch = examples[begin : begin + batch_size]
            cache, mask = steered_cache(model, batch, directions)
            log_probs = torch.log_softmax(answer_logits(model, cache, mask, question_ids).float(), dim=-1)
            out[begin : begin + len(batch)] = log_probs[:, options].double().cpu().numpy()
    return out
