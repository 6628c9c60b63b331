"""Batched sampling where every sequence draws from its own seeded noise stream.

Sequence i at step t takes the token where the cumulative sampling distribution (tokens in
descending probability; in vocabulary order when top_p is 1) first exceeds u[i, t], with
u[i] = torch.rand(max_new_tokens) from a generator seeded with its own seed. So a sample
depends only on its own seed and the model's logits, never on its batch mates.
A sequence ends at an eos token, at max_new_tokens, or, for a continuation frame, where its text
starts a line with one of the frame's end labels (the next turn: answer_end); an ended sequence
draws nothing more and takes no draw from any other, so it is the prefix of the same sequence
run without the labels.
Entropies and log-probabilities are taken from the same logits at the same step, so no
full-vocabulary logits are kept and none are computed twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .batching import left_pad
from .errors import InputError
from .memory import BatchRecord, run_with_backoff
from .progress import Progress
from .modules import input_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The nucleus is searched among this many top tokens first; a full sort only when it is wider.
_NUCLEUS_CANDIDATES = 1024
# Rows of full-vocabulary work per chunk on the CPU: a (rows, 262k) float32 block stays in
# cache, where a whole batch's does not (measured 5x faster per step at 40 rows of Gemma's
# vocabulary). A GPU takes the whole batch at once.
_CPU_ROWS_PER_CHUNK = 8


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    max_new_tokens: int


# Per generated token, from the very logits it was sampled from (nats; log-probabilities natural).
STAT_NAMES = ("entropy_t1", "entropy_sampling", "topk_mass", "logprob_t1", "logprob_sampling")


def check_context(model: PreTrainedModel, name: str, prompt_lengths: dict[str, int], max_new_tokens: int) -> None:
    """Raise InputError, naming the model, the prompts and the lengths, when a prompt and the
    tokens asked for do not fit the model's context (max_position_embeddings)."""
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if context is None:
        return
    over = [
        f"prompt {prompt} is {length} tokens + {max_new_tokens} new = {length + max_new_tokens}"
        for prompt, length in prompt_lengths.items()
        if length + max_new_tokens > context
    ]
    if over:
        raise InputError(
            f"model {name}: its context (max_position_embeddings) is {context} tokens, but "
            + "; ".join(over)
            + ": shorten the prompt or lower generation.max_new_tokens"
        )


@dataclass(frozen=True)
class Completion:
    token_ids: list
    stop_reason: str  # "eos" (the eos token is the last id), "frame_end" (cut before an end label) or "max_new_tokens"
    stats: np.ndarray  # (len(token_ids), len(STAT_NAMES)) float32, columns as STAT_NAMES


def sampling_distribution(logits: torch.Tensor, temperature: float, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The distribution tokens are drawn from, as (probs, token_ids), both (batch, k).

    probs are renormalised over the nucleus and zero outside it. Temperature 0 is greedy:
    all mass on the argmax.
    """
    logits = logits.float()
    if temperature == 0:
        token_ids = logits.argmax(-1, keepdim=True)
        return torch.ones_like(token_ids, dtype=torch.float32), token_ids
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1:
        return probs, torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)
    k = min(_NUCLEUS_CANDIDATES, probs.shape[-1])
    top, token_ids = probs.topk(k, dim=-1)
    if k < probs.shape[-1] and bool((top.sum(-1) < top_p).any()):
        top, token_ids = probs.sort(dim=-1, descending=True)
    mass_before = top.cumsum(-1) - top
    kept = torch.where(mass_before < top_p, top, torch.zeros_like(top))
    return kept / kept.sum(-1, keepdim=True), token_ids


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: for each row, the column where the cumulative mass first exceeds u."""
    cdf = probs.cumsum(-1)
    targets = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, targets, right=True).clamp(max=cdf.shape[-1] - 1)


def token_statistics(logits: torch.Tensor, probs: torch.Tensor, column: torch.Tensor, chosen: torch.Tensor,
                     top_k: int) -> torch.Tensor:
    """STAT_NAMES for each row: the T=1 distribution of `logits`, the sampling distribution
    `probs` and the token `chosen` (at `column` of probs)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    entropy_t1 = -(log_probs.exp() * log_probs).sum(-1)
    topk_mass = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1).values.exp().sum(-1)
    entropy_sampling = -torch.special.xlogy(probs, probs).sum(-1)
    logprob_t1 = log_probs.gather(-1, chosen[:, None]).squeeze(-1)
    logprob_sampling = probs.gather(-1, column).squeeze(-1).log()
    return torch.stack([entropy_t1, entropy_sampling, topk_mass, logprob_t1, logprob_sampling], dim=1)


def sample_step(logits: torch.Tensor, uniforms: torch.Tensor, params: SamplingParams,
                top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row and its statistics."""
    chunk = logits.shape[0] if logits.is_cuda else _CPU_ROWS_PER_CHUNK
    chosen, stats = [], []
    for start in range(0, logits.shape[0], chunk):
        rows = slice(start, start + chunk)
        block = logits[rows].float()
        probs, token_ids = sampling_distribution(block, params.temperature, params.top_p)
        column = draw(probs, uniforms[rows])
        tokens = token_ids.gather(-1, column).squeeze(-1)
        chosen.append(tokens)
        stats.append(token_statistics(block, probs, column, tokens, top_k))
    return torch.cat(chosen), torch.cat(stats)


def noise_streams(seeds: Iterable[int], steps: int) -> torch.Tensor:
    """One row of uniforms per seed, each from its own generator."""
    return torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds])


def answer_end(text: str, labels: Sequence[str]) -> int | None:
    """Where the answer in `text` ends: right after the newline that starts the first line
    beginning with one of `labels`; None when no line does."""
    found = [at for at in (text.find("\n" + label) for label in labels) if at >= 0]
    return min(found) + 1 if found else None


def answer_length(token_ids: list[int], labels: Sequence[str], decode: Callable) -> int:
    """How many of `token_ids` the answer keeps: every token before the first one whose text
    reaches past answer_end (all of them when no line starts with a label; at least one)."""
    end = answer_end(decode([token_ids])[0], labels)
    if end is None:
        return len(token_ids)
    length = len(token_ids)
    while length > 1 and len(decode([token_ids[:length]])[0]) > end:
        length -= 1
    return length


@torch.inference_mode()
def _sample_batch(model, prompts, seeds, params, eos_ids, pad_id, top_k, end_labels, decode, compact=None,
                  progress=None):
    from transformers import DynamicCache

    device = input_device(model)
    ids, mask, positions = left_pad(prompts, pad_id, device)
    uniforms = noise_streams(seeds, params.max_new_tokens).to(device)
    eos = torch.tensor(sorted(eos_ids), device=device)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, logits_to_keep=1)
    watched = [row for row, labels in enumerate(end_labels) if labels]
    # An end label spans at most as many tokens as it has bytes: the check decodes that many.
    window = max((len(("\n" + label).encode()) for row in watched for label in end_labels[row]), default=0)
    tokens, stats, frame_ends = [], [], {}  # frame_ends: row -> the step that completed its end label
    n = len(prompts)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    live = torch.arange(n, device=device)  # the rows of the batch that the model still computes
    if progress:
        progress.start_batch(n)
    for step in range(params.max_new_tokens):
        chosen, step_stats = sample_step(out.logits[:, -1].to(device), uniforms[live, step], params, top_k)
        drawn = torch.full((n,), pad_id, dtype=chosen.dtype, device=device)
        drawn[live] = chosen
        full_stats = torch.zeros((n, len(STAT_NAMES)), dtype=step_stats.dtype)
        full_stats[live.cpu()] = step_stats.cpu()
        stats.append(full_stats)
        was_running = int((~finished).sum())
        token = torch.where(finished, pad_id, drawn)
        tokens.append(token)
        finished |= torch.isin(token, eos)
        if watched:
            done = finished.tolist()
            running = [row for row in watched if not done[row]]
            recent = torch.stack(tokens[-window:], dim=1)[running].tolist() if running else []
            ended = [row for row, text in zip(running, decode(recent)) if answer_end(text, end_labels[row]) is not None]
            if ended:
                frame_ends.update(dict.fromkeys(ended, step))
                finished[ended] = True
        if progress:
            progress.step(step, params.max_new_tokens, int((~finished).sum()), was_running)
        if bool(finished.all()) or step + 1 == params.max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        keep = (~finished[live]).nonzero().squeeze(1)
        if compact is not None and len(keep) < len(live) and len(keep) <= compact * len(live):
            out.past_key_values.batch_select_indices(keep)  # finished rows leave the batch
            mask, positions, live = mask[keep], positions[keep], live[keep]
        out = model(input_ids=token[live][:, None], attention_mask=mask, position_ids=positions,
                    past_key_values=out.past_key_values)
    if progress:
        progress.end_batch(n)
    tokens = torch.stack(tokens, dim=1).tolist()
    stats = torch.stack(stats, dim=1).numpy()
    completions = []
    for row, (row_tokens, row_stats) in enumerate(zip(tokens, stats)):
        ends = [i for i, t in enumerate(row_tokens) if t in eos_ids]
        if row in frame_ends:  # checked first: the pad ids after its end may be eos ids
            length, reason = answer_length(row_tokens[: frame_ends[row] + 1], end_labels[row], decode), "frame_end"
        elif ends:
            length, reason = ends[0] + 1, "eos"
        else:
            length, reason = len(row_tokens), "max_new_tokens"
        completions.append(Completion(row_tokens[:length], reason, row_stats[:length].astype(np.float32)))
    return completions


# Finished sequences leave the batch when the live ones are at most this share of the rows computed:
# each compaction copies the whole cache once, so it waits until a quarter of the rows are idle.
COMPACT_BELOW = 0.75


def sample_completions(model: PreTrainedModel, prompts: Sequence[Sequence[int]], seeds: Sequence[int],
                       params: SamplingParams, eos_ids: Iterable[int], pad_id: int, batch_size: int, top_k: int,
                       end_labels: Sequence[Sequence[str]] | None = None, decode: Callable | None = None,
                       record: BatchRecord | None = None, progress: Progress | None = None,
                       compact: float | None = None) -> list[Completion]:
    """Sample one completion per (prompt token ids, seed), batch_size sequences at a time (or
    record.start, when a memory plan is given: an out-of-memory error then halves the batch, and
    record notes it); `top_k` is the k of the top-k mass statistic. `end_labels` (one tuple per
    sequence; empty: none) end a sequence's answer where its text starts a line with one of them;
    `decode` (a batch decode: lists of ids to texts, e.g. tokenizer.batch_decode) reads its text.
    Finished sequences leave the batch once the live ones are at most `compact` of it (None, the
    default: never; generate jobs use COMPACT_BELOW — not under steering hooks, which hold one
    vector and position mask per row of the batch they were given).
    Every sequence draws from its own noise stream, so none of this changes a sample."""
    end_labels = list(end_labels or [()] * len(prompts))
    if any(end_labels) and decode is None:
        raise ValueError("end labels need a decode function")
    record = record or BatchRecord(batch_size)

    def run(start, end):
        return _sample_batch(model, prompts[start:end], seeds[start:end], params, set(eos_ids), pad_id, top_k,
                             end_labels[start:end], decode, compact, progress)

    return run_with_backoff(len(prompts), record, run, release_memory)


def release_memory() -> None:
    """Return a failed batch's cached CUDA blocks before a smaller one tries."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every id that ends a completion: the tokenizer's eos and the generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
