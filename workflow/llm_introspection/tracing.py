"""Teacher-forced passes that capture the residual stream by forward hooks.

Hidden-state index h follows the transformers convention: 0 is the embedding output (the
input of block 0) and h >= 1 the output of block h - 1, read before the final norm. Only the
decoder trunk runs: no logits are computed (entropies come from generation, see sampling).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .activations import hidden_state_indices  # noqa: F401 (its home is the files' contract)
from .batching import left_pad
from .memory import BatchRecord, run_with_backoff
from .modules import input_device, residual_module, untuple_tensor
from .progress import Progress
from .sampling import release_memory

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@contextmanager
def capture_residual(model: PreTrainedModel, indices: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual stream at the given hidden-state indices during forward passes.

    Yields a dict index -> (batch, seq, d) tensor of the latest pass, on the model's input device
    (layers of a model spread over several devices are gathered there). Handles layers that
    return a tensor or a tuple; the hooks are removed however the block exits.
    """
    captured, handles = {}, []
    home = input_device(model)

    def keep(index):
        def hook(module, args, output):
            captured[index] = untuple_tensor(output).detach().to(home)

        return hook

    try:
        for index in indices:
            handles.append(residual_module(model, index).register_forward_hook(keep(index)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _stack(captured, indices):
    return torch.stack([captured[i] for i in indices], dim=1).float().cpu().numpy()


@torch.inference_mode()
def _trace_group(model, prompts, completions, indices, pad_id):
    from transformers import DynamicCache

    device = input_device(model)
    ids, prompt_mask, positions = left_pad(prompts, pad_id, device)
    width = ids.shape[1]
    cache = DynamicCache(config=model.config)
    decoder = model.get_decoder()
    with capture_residual(model, indices) as captured:
        decoder(input_ids=ids, attention_mask=prompt_mask, position_ids=positions, past_key_values=cache, use_cache=True)
        prompt_states = _stack(captured, indices)
        owners = [p for p, group in enumerate(completions) for _ in group]
        flat = [c for group in completions for c in group]
        cache.batch_select_indices(torch.tensor(owners))  # a CPU index serves cache layers on any device
        length = max(len(c) for c in flat)
        completion_ids = torch.full((len(flat), length), pad_id, dtype=torch.long)
        completion_mask = torch.zeros((len(flat), length), dtype=torch.long)
        for row, completion in enumerate(flat):
            completion_ids[row, : len(completion)] = torch.tensor(completion)
            completion_mask[row, : len(completion)] = 1
        prompt_lengths = torch.tensor([len(prompts[p]) for p in owners])
        decoder(
            input_ids=completion_ids.to(device),
            attention_mask=torch.cat([prompt_mask[owners], completion_mask.to(device)], dim=1),
            position_ids=(prompt_lengths[:, None] + torch.arange(length)).to(device),
            past_key_values=cache,
            use_cache=True,
        )
        completion_states = _stack(captured, indices)
    traced, row = [], 0
    for p, group in enumerate(completions):
        mine = [completion_states[row + k, :, : len(c)] for k, c in enumerate(group)]
        row += len(group)
        traced.append((prompt_states[p, :, width - len(prompts[p]) :], mine))
    return traced


def trace_prompts(model: PreTrainedModel, prompts: Sequence[Sequence[int]],
                  completions: Sequence[Sequence[Sequence[int]]], indices: Sequence[int], batch_size: int,
                  pad_id: int, record: BatchRecord | None = None,
                  progress: Progress | None = None, keep: Callable | None = None) -> list[Any]:
    """Residual stream at `indices` of every prompt and of each of its completions, teacher-forced.

    `completions[p]` lists the completion ids of prompt p. The completions, in order, are traced
    batch_size at a time (or record.start, when a memory plan is given: an out-of-memory error then
    halves the batch, and record notes it); a batch runs each of its prompts once and shares that
    prompt's key/value cache among its completions. Returns, per prompt, `keep(prompt_states,
    completion_states)` (default: the pair itself) of its (len(indices), prompt_length, d) array and
    list of (len(indices), completion_length, d) arrays, float32: `keep` reduces each prompt as soon
    as its last completion is traced, so a job never holds every position of every prompt.
    """
    record = record or BatchRecord(batch_size)
    keep = keep or (lambda prompt_states, completion_states: (prompt_states, completion_states))
    owners = [(p, c) for p, group in enumerate(completions) for c in range(len(group))]
    prompt_states, completion_states, results = {}, defaultdict(dict), {}

    def run(start, end):
        chunk = owners[start:end]
        mine = sorted({p for p, _ in chunk})
        if progress:
            progress.start_batch(end - start)
        traced = _trace_group(model, [prompts[p] for p in mine],
                              [[completions[p][c] for q, c in chunk if q == p] for p in mine], indices, pad_id)
        for p, (states, group) in zip(mine, traced):
            prompt_states.setdefault(p, states)
            completion_states[p].update(zip([c for q, c in chunk if q == p], group))
            if len(completion_states[p]) == len(completions[p]):
                by_index = completion_states.pop(p)
                results[p] = keep(prompt_states.pop(p), [by_index[c] for c in range(len(completions[p]))])
        if progress:
            progress.step(0, 1, end - start, sum(len(completions[p][c]) for p, c in chunk))
            progress.end_batch(end - start)
        return []

    run_with_backoff(len(owners), record, run, release_memory)
    return [results[p] for p in range(len(prompts))]
