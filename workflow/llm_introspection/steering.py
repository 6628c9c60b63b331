"""Steering: add strength × vector to the residual stream of one layer on chosen token positions.

The layer is a hidden-state index as in tracing (0 = embedding output, h >= 1 = output of
block h - 1). Positions count a row's real tokens from 0 (left padding excluded), so a position
is steered alike whether its row runs alone or in a left-padded batch, in one forward pass or
token by token with a key/value cache. A forward call's positions come from the arguments of the
decoder call: the 2D attention mask when there is one (our sampler; HF `generate` with padding),
else the position ids (`generate` without padding), else the cache length (plain `model(...)`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .modules import residual_module, untuple_tensor

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Positions:
    """Token positions [start, end) of each row; end None = from start onward, generated tokens
    included. start and end: one int for every row, or one per row (stored as a tuple)."""

    start: int | tuple = 0
    end: int | tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "start", _row_values(self.start))
        if self.end is not None:
            object.__setattr__(self, "end", _row_values(self.end))

    @classmethod
    def onward(cls, start: int | Sequence[int]) -> Positions:
        """From `start` on: the rest of the prompt and every generated token."""
        return cls(start)

    @classmethod
    def span(cls, start: int | Sequence[int], end: int | Sequence[int]) -> Positions:
        """Only [start, end): tokens generated later are left alone."""
        return cls(start, end)

    @classmethod
    def nowhere(cls) -> Positions:
        """No position (control trials): the hook runs as in a steered trial and adds nothing."""
        return cls(0, 0)

    def select(self, positions: torch.Tensor) -> torch.Tensor:
        """Boolean (batch, seq): which of the absolute positions (batch, seq; -1 = padding) to steer."""
        selected = positions >= _row_column(self.start, positions)
        if self.end is not None:
            selected &= positions < _row_column(self.end, positions)
        return selected


def _row_values(value):
    values = np.atleast_1d(np.asarray(value))
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer) or (values < 0).any():
        raise ValueError(f"steering positions must be non-negative ints (one, or one per row), not {value!r}")
    return int(values[0]) if np.ndim(value) == 0 else tuple(int(v) for v in values)


def _row_column(value, positions):
    column = torch.as_tensor(value, device=positions.device).reshape(-1, 1)
    if column.shape[0] not in (1, positions.shape[0]):
        raise ValueError(
            f"steering positions are given for {column.shape[0]} rows, the batch has {positions.shape[0]}"
        )
    return column


def call_positions(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor:
    """Absolute positions (batch, seq) of the new tokens of one decoder call; -1 marks padding."""
    tokens = kwargs.get("input_ids", args[0] if args else None)
    if tokens is None:
        tokens = kwargs["inputs_embeds"]
    batch, seq = tokens.shape[:2]
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        positions = mask.long().cumsum(-1) - 1
        return positions.masked_fill(mask == 0, -1)[:, -seq:]
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and position_ids.dim() == 2:
        return position_ids.expand(batch, seq)
    cache = kwargs.get("past_key_values")
    past = cache.get_seq_length() if cache is not None else 0
    return (torch.arange(seq, device=tokens.device) + past).expand(batch, seq)


@contextmanager
def steer(model: PreTrainedModel, index: int, vector: torch.Tensor | np.ndarray, strength: ArrayLike,
          where: Positions) -> Iterator[None]:
    """Add strength × vector to hidden state `index` at the Positions `where`, in every forward
    pass inside the block.

    vector: (d,) or (batch, d), torch or numpy; strength: a float or one per row. Layers that
    return a tensor or a tuple are both handled; the hooks are removed however the block exits.
    Hooks registered later on the same module (e.g. capture_residual) see the steered output.
    """
    strength = torch.as_tensor(np.asarray(strength, dtype=np.float32)).reshape(-1, 1)
    delta = strength * torch.as_tensor(vector).float()
    delta = delta.reshape(-1, 1, delta.shape[-1])  # (1 or batch, 1, d)
    current = {}

    def remember_positions(module, args, kwargs):
        current["positions"] = call_positions(args, kwargs)

    def add(module, args, output):
        hidden = untuple_tensor(output)
        positions = current["positions"]
        if hidden.shape[:2] != positions.shape or delta.shape[0] not in (1, hidden.shape[0]):
            raise ValueError(
                f"steering: hidden state {tuple(hidden.shape)} does not fit the call's positions "
                f"{tuple(positions.shape)} or the {delta.shape[0]} rows of strength × vector"
            )
        selected = where.select(positions).unsqueeze(-1).to(device=hidden.device, dtype=hidden.dtype)
        steered = hidden + selected * delta.to(device=hidden.device, dtype=hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    handles = []
    try:
        handles.append(model.get_decoder().register_forward_pre_hook(remember_positions, with_kwargs=True))
        handles.append(residual_module(model, index).register_forward_hook(add))
        yield
    finally:
        for handle in handles:
            handle.remove()


def relative_strength(fraction: float, vector: ArrayLike, mean_norm: float) -> float:
    """The absolute strength at which strength × vector has norm fraction × mean_norm (a layer's
    mean residual norm, from concepts.mean_residual_norm)."""
    return fraction * mean_norm / float(np.linalg.norm(np.asarray(vector, dtype=np.float64)))


def token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """The token positions [first, last + 1) whose characters overlap text[start:end], from a
    tokenizer's offset mapping of that text (special tokens have empty offsets and never count).
    Turns a sentence found in a rendered prompt into the Positions.span that steers it."""
    covering = [i for i, (a, b) in enumerate(offsets) if a < b and a < end and b > start]
    if not covering:
        raise ValueError(f"no token covers characters {start}..{end} of the text")
    return covering[0], covering[-1] + 1
