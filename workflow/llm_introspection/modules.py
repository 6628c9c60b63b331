"""Where the residual stream lives in a decoder model, for the hooks that read and steer it.

Hidden-state index h follows the transformers convention: 0 is the embedding output (the input of
block 0) and h >= 1 the output of block h - 1, read before the final norm. The blocks of a model
spread over several devices (device_map) each run on their own device: hooks take a block's output
where it is and move only what they keep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The decoder's list of blocks (model.get_decoder().layers)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise InputError(f"{type(model).__name__}: no decoder layer list (model.get_decoder().layers)")
    return layers


def residual_module(model: PreTrainedModel, index: int) -> torch.nn.Module:
    """The module whose output is hidden state `index`: the embeddings for 0, else block index - 1."""
    layers = decoder_layers(model)
    if not 0 <= index <= len(layers):
        raise InputError(f"{type(model).__name__}: hidden-state index {index} is outside 0..{len(layers)}")
    return model.get_input_embeddings() if index == 0 else layers[index - 1]


def input_device(model: PreTrainedModel) -> torch.device:
    """Where a model takes its input ids: the device its embeddings run on. Under accelerate's
    dispatch (device_map over several GPUs, or layers offloaded to the CPU or disk) that is the
    embedding hook's execution device, even while its weights wait on the meta device."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    weight = getattr(embeddings, "weight", None)
    if weight is not None:
        return weight.device
    return next((parameter.device for parameter in model.parameters()), torch.device("cpu"))


def untuple_tensor(output: torch.Tensor | tuple[Any, ...]) -> torch.Tensor:
    """A module's hidden-state output: the first element of a tuple (most transformers layers) or
    the tensor itself (layers of transformers 5 that return one)."""
    return output[0] if isinstance(output, tuple) else output
