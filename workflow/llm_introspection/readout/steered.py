"""Read-outs and sampling under steering: each trial of a batch carries its own injection.

A Trial is one model input and what is added to the residual stream while the model reads it; a
batch of trials runs as one left-padded pass (or one sampled generation) with each row steered as
its trial says, a control row adding nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..batching import PAD_ID, left_pad
from ..steering import Positions, steer
from ..sampling import sample_completions
from ..tracing import capture_residual
from .options import next_token_log_probs

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..sampling import Completion, SamplingParams


@dataclass(frozen=True)
class Trial:
    """One model input and its injection: strength x vector added to the cell's hidden state on the
    token positions [start, end), end None = onward, generated tokens included. No vector: a control
    (a zero vector at strength 0 is added, which leaves every state as it is)."""

    ids: tuple
    start: int = 0
    end: int | None = 0
    vector: np.ndarray | None = None
    strength: float = 0.0


def _steering(model, layer, trials):
    """The steer context for one batch of trials (their ends all ints, or all None)."""
    width = model.get_input_embeddings().embedding_dim
    vectors = np.stack([np.zeros(width, np.float32) if t.vector is None else np.asarray(t.vector, np.float32)
                        for t in trials])
    strengths = [0.0 if t.vector is None else t.strength for t in trials]
    ends = [t.end for t in trials]
    where = Positions([t.start for t in trials], None if ends[0] is None else ends)
    return steer(model, layer, vectors, strengths, where)


@torch.inference_mode()
def read_options(model: PreTrainedModel, layer: int, trials: Sequence[Trial], option_ids: Sequence[int],
                 batch_size: int) -> np.ndarray:
    """(len(trials), len(option_ids)) float64: log-probabilities (full softmax) of the option tokens
    as the next token after each trial's ids, every trial steered at hidden state `layer` as it says."""
    out = np.empty((len(trials), len(option_ids)))
    for begin in range(0, len(trials), batch_size):
        batch = trials[begin : begin + batch_size]
        with _steering(model, layer, batch):
            out[begin : begin + len(batch)] = next_token_log_probs(model, [t.ids for t in batch], option_ids, PAD_ID)
    return out


def sample_trials(model: PreTrainedModel, layer: int, trials: Sequence[Trial], seeds: Sequence[int],
                  params: SamplingParams, eos_ids: Iterable[int], batch_size: int) -> list[Completion]:
    """One sampled completion (sampling.Completion) per trial and seed, each trial steered as it
    says (ends None: injection runs on through the generated tokens)."""
    completions = []
    for begin in range(0, len(trials), batch_size):
        batch = trials[begin : begin + batch_size]
        with _steering(model, layer, batch):
            completions += sample_completions(model, [list(t.ids) for t in batch], seeds[begin : begin + batch_size],
                                              params, eos_ids, PAD_ID, len(batch), top_k=1)
    return completions


@torch.inference_mode()
def read_continuations(model: PreTrainedModel, layer: int, trials: Sequence[Trial], lengths: Sequence[int],
                       batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per trial, for each of its last `length` tokens (a teacher-forced answer): the token's
    log-probability given what precedes it and whether it is the most probable token, every trial
    steered as it says. A list of ((length,) float64, (length,) bool) pairs."""
    out = []
    for begin in range(0, len(trials), batch_size):
        batch, sizes = trials[begin : begin + batch_size], lengths[begin : begin + batch_size]
        ids, mask, positions = left_pad([t.ids for t in batch], PAD_ID, model.device)
        with _steering(model, layer, batch):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                           logits_to_keep=max(sizes) + 1).logits.float()
        log_probs = torch.log_softmax(logits, dim=-1)  # the full vocabulary, for this batch only
        for row, size in enumerate(sizes):
            targets, scores = ids[row, -size:], log_probs[row, -size - 1 : -1]
            out.append((scores.gather(-1, targets[:, None])[:, 0].double().cpu().numpy(),
                        (scores.argmax(-1) == targets).cpu().numpy()))
        del logits, log_probs
    return out


@torch.inference_mode()
def continuation_cosines(model: PreTrainedModel, layer: int, sequences: Sequence[Sequence[int]], lengths: Sequence[int],
                         vectors: Sequence[np.ndarray] | np.ndarray, batch_size: int) -> np.ndarray:
    """(len(sequences),) float64: the mean over each sequence's last `length` tokens of the cosine
    similarity between hidden state `layer` and the sequence's vector (unsteered)."""
    out = np.empty(len(sequences))
    for begin in range(0, len(sequences), batch_size):
        batch, sizes = sequences[begin : begin + batch_size], lengths[begin : begin + batch_size]
        ids, mask, positions = left_pad(batch, PAD_ID, model.device)
        with capture_residual(model, [layer]) as captured:
            model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        states = captured[layer].double()
        directions = torch.as_tensor(np.asarray(vectors[begin : begin + batch_size]), dtype=torch.float64,
                                     device=states.device)
        for row, size in enumerate(sizes):
            cosines = torch.nn.functional.cosine_similarity(states[row, -size:], directions[row][None], dim=-1)
            out[begin + row] = float(cosines.mean())
    return out
