"""Option read-outs that share the key/value cache of common prefixes (tracing.trace_prompts' way).

Many read-outs differ only at their end: the judge's four dimensions of one completion share the
system message, the instructions, the prompt and the completion; every judge prompt shares the
system message and the instructions; a localization trial's 2n+1 rows (each sentence steered, a
random vector, a control) share their ids up to the first steered token, and all trials share the
preamble. The read-out runs in three stages, each batched:

1. the root: the longest prefix common to every sequence, one pass at batch 1;
2. per group (sequences given the same key): the group's common prefix beyond the root, run on a
   copy of the root's cache;
3. per sequence: the rest, on its group's cache, under its trial's steering; the options'
   log-probabilities at the last token.

No prefix reaches a steered position (steering adds from a trial's `start` on, so the tokens before
it are the same in every row), and every sequence keeps at least one token of its own. Rows of
different lengths are left-padded within each stage, so padding sits between cached and new tokens;
the 2D attention mask masks it and positions count real tokens only (steering reads them from the
mask), so a row's result equals its full-pass result within float tolerance. A sliding-window
model whose padded rows could outgrow its window runs rows of equal length together instead (a
window counts cache slots, padding included).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..batching import PAD_ID
from .options import check_context, option_log_probs
from .steered import Trial, _steering

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """The length of the longest prefix shared by every sequence."""
    first, length = sequences[0], min(map(len, sequences))
    for other in sequences[1:]:
        n = 0
        while n < length and other[n] == first[n]:
            n += 1
        length = n
    return length


def unsteered_length(trial: Trial) -> int:
    """How many leading tokens of a trial can come from a shared cache: those before its steering
    starts, and never its last token (the one whose next-token logits are read)."""
    limit = len(trial.ids) - 1
    return limit if trial.vector is None else min(limit, trial.start)


def _extend(model, cache, mask, pieces, logits):
    """Run `pieces` (one token list per cache row, left-padded against each other) after `cache`
    with its 2D `mask`; the extended cache and mask, and with `logits` the last position's
    float32 logits."""
    width = max(len(p) for p in pieces)
    rows = len(pieces)
    ids = torch.full((rows, width), PAD_ID, dtype=torch.long)
    new = torch.zeros((rows, width), dtype=torch.long)
    for row, piece in enumerate(pieces):
        if piece:
            ids[row, width - len(piece):] = torch.tensor(piece)
            new[row, width - len(piece):] = 1
    device = model.device
    full = torch.cat([mask, new.to(device)], dim=1) if mask is not None else new.to(device)
    positions = (full.cumsum(-1) - 1).clamp(min=0)[:, -width:]
    arguments = dict(input_ids=ids.to(device), attention_mask=full, position_ids=positions,
                     past_key_values=cache, use_cache=True)
    if logits:
        out = model(**arguments, logits_to_keep=1).logits[:, -1].float()
    else:
        model.get_decoder()(**arguments)
        out = None
    return cache, full, out


def _rows_of(model, cache, mask, index):
    """A copy of `cache` (and `mask`) holding the given rows, in order (an empty cache: a new one)."""
    from transformers import DynamicCache

    indices = torch.tensor(index, device=mask.device)
    if mask.shape[1] == 0:
        return DynamicCache(config=model.config), mask[indices]
    selected = copy.deepcopy(cache)
    selected.batch_select_indices(indices)
    return selected, mask[indices]


def _chunks(items, size, length, uniform):
    """Consecutive chunks of at most `size` items; with `uniform`, of items of one `length` each
    (the items sorted by length)."""
    chunk = []
    for item in items:
        if chunk and (len(chunk) == size or (uniform and length(item) != length(chunk[0]))):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


@torch.inference_mode()
def shared_prefix_options(model: PreTrainedModel, layer: int | None, trials: Sequence[Trial], keys: Sequence[Hashable],
                          option_ids: Sequence[int], batch_size: int) -> np.ndarray:
    """(len(trials), len(option_ids)) float64: log-probabilities (full softmax) of the option tokens
    as the next token after each trial's ids, each trial steered at hidden state `layer` as it says
    (layer None: no trial is steered), with the cache of the prefix common to all trials and of the
    prefix common to each group of trials with the same key computed once."""
    from transformers import DynamicCache

    if layer is None and any(t.vector is not None for t in trials):
        raise ValueError("steered trials need a layer")
    out = np.empty((len(trials), len(option_ids)))
    if not trials:
        return out
    groups: dict = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    group_keys = list(groups)
    bounds = {}  # group -> the length of its cached prefix (root included)
    for key in group_keys:
        members = [trials[r] for r in groups[key]]
        bounds[key] = min(common_prefix([t.ids for t in members]), *map(unsteered_length, members))
    root_length = min(common_prefix([trials[groups[k][0]].ids for k in group_keys]), *bounds.values())
    model.eval()
    device = model.device
    root, root_mask = DynamicCache(config=model.config), None
    root_ids = list(trials[0].ids[:root_length])
    if root_ids:
        root, root_mask, _ = _extend(model, root, None, [root_ids], logits=False)
    options = torch.tensor(option_ids, device=device)
    pieces = {k: list(trials[groups[k][0]].ids[root_length:bounds[k]]) for k in group_keys}
    tails = [list(t.ids[bounds[k]:]) for t, k in zip(trials, keys)]
    # A sliding window counts cache slots, padding included: where padding could push a token out
    # of a window it would not leave in a full pass, rows of a pass all have the same length.
    window = getattr(model.config, "sliding_window", None)
    uniform = window is not None and root_length + max(map(len, pieces.values())) + max(map(len, tails)) > window
    # groups longest first, so that a batch pads little
    group_keys.sort(key=lambda k: (-len(pieces[k]), -max(len(tails[r]) for r in groups[k])))
    for batch in _chunks(group_keys, batch_size, lambda k: len(pieces[k]), uniform):
        if root_mask is None:
            cache, mask = DynamicCache(config=model.config), torch.zeros((len(batch), 0), dtype=torch.long,
                                                                          device=device)
        else:
            cache, mask = _rows_of(model, root, root_mask, [0] * len(batch))
        if any(pieces[k] for k in batch):
            cache, mask, _ = _extend(model, cache, mask, [pieces[k] for k in batch], logits=False)
        rows = sorted(((g, r) for g, k in enumerate(batch) for r in groups[k]), key=lambda gr: -len(tails[gr[1]]))
        for chunk in _chunks(rows, batch_size, lambda gr: len(tails[gr[1]]), uniform):
            sub_cache, sub_mask = _rows_of(model, cache, mask, [g for g, _ in chunk])
            chunk_trials = [trials[r] for _, r in chunk]
            chunk_tails = [tails[r] for _, r in chunk]
            if layer is None:
                _, _, logits = _extend(model, sub_cache, sub_mask, chunk_tails, logits=True)
            else:
                with _steering(model, layer, chunk_trials):
                    _, _, logits = _extend(model, sub_cache, sub_mask, chunk_tails, logits=True)
            out[[r for _, r in chunk]] = torch.log_softmax(logits, dim=-1)[:, options].double().cpu().numpy()
            del sub_cache, logits
    return out


def prompt_options(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sequences: Sequence[Sequence[int]],
                   keys: Sequence[Hashable], option_ids: Sequence[int], batch_size: int, setting: str,
                   share_prefix: bool = True) -> np.ndarray:
    """(len(sequences), len(option_ids)) float64 log-probabilities of the options after each
    unsteered sequence: with `share_prefix` the caches of the prefix common to all sequences and to
    each group of one key are computed once (shared_prefix_options), else one full pass per
    sequence (options.option_log_probs); InputError as options.check_context says, naming `setting`."""
    if not share_prefix:
        return option_log_probs(model, tokenizer, sequences, option_ids, batch_size, setting).numpy()
    check_context(model, tokenizer, sequences, setting)
    return shared_prefix_options(model, None, [Trial(tuple(s)) for s in sequences], keys, option_ids, batch_size)
