"""Teacher-forced passes that capture the residual stream by forward hooks.

Hidden-state index h follows the transformers convention: 0 is the embedding output (the
input of block 0) and h >= 1 the output of block h - 1, read before the final norm. Only the
decoder trunk runs: no logits are computed (entropies come from generation, see sampling).
"""

from contextlib import contextmanager

import torch

from .batching import left_pad
from .modules import input_device, residual_module, untuple_tensor


def hidden_state_indices(fractions: list[float], n_layers: int) -> list[int]:
    """Hidden-state indices round(f * n_layers) for each fraction, sorted and unique."""
    return sorted({int(round(f * n_layers)) for f in fractions})


@contextmanager
def capture_residual(model, indices):
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


def trace_prompts(model, prompts, completions, indices, batch_size, pad_id):
    """Residual stream at `indices` of every prompt and of each of its completions, teacher-forced.

    A prompt's states are computed once and its key/value cache shared by all its completions.
    `completions[p]` lists the completion ids of prompt p. Returns, per prompt, its
    (len(indices), prompt_length, d) array and a list of (len(indices), completion_length, d)
    arrays, float32; each forward pass holds at most `batch_size` completions (at least one prompt).
    """
    traced, start = [], 0
    while start < len(prompts):
        end, load = start, 0
        while end < len(prompts) and (end == start or load + len(completions[end]) <= batch_size):
            load += len(completions[end])
            end += 1
        traced += _trace_group(model, prompts[start:end], completions[start:end], indices, pad_id)
        start = end
    return traced
