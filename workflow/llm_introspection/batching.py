"""Left-padded batches of token sequences, as every model pass of the workflow feeds them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The id written into padded positions: any id serves, since they are masked out of attention and
# cut from every result.
PAD_ID = 0


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int,
             device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids (positions count real tokens only)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence) :] = torch.tensor(sequence)
        mask[row, width - len(sequence) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)
