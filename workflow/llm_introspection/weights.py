"""Weight noise the size of a base/instruct pair's difference: the calibration of what two
different weight sets alone let a probe read."""

from __future__ import annotations

import torch

from .errors import InputError


@torch.no_grad()
def add_difference_sized_noise(model: torch.nn.Module, partner: torch.nn.Module, seed: int) -> dict[str, float]:
    """Add to every parameter tensor of `model` Gaussian noise whose Frobenius norm equals that
    tensor's difference from the same-named tensor of `partner` (random direction, same size).

    Returns the norms over all tensors, {'difference_norm', 'weight_norm' (before the noise), 'n_tensors'}."""
    theirs = dict(partner.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    difference, weight, count = 0.0, 0.0, 0
    for name, parameter in model.named_parameters():
        other = theirs.get(name)
        if other is None or other.shape != parameter.shape:
            raise InputError(f"parameter {name!r} has no same-shaped twin in the pair partner: not a fine-tuned pair")
        norm = float(torch.linalg.vector_norm(other.float() - parameter.float()))
        noise = torch.randn(parameter.shape, generator=generator)
        noise *= norm / max(float(torch.linalg.vector_norm(noise)), 1e-30)
        weight += float(torch.linalg.vector_norm(parameter.float())) ** 2
        parameter.add_(noise.to(parameter.device, parameter.dtype))
        difference += norm**2
        count += 1
    return {"difference_norm": difference**0.5, "weight_norm": weight**0.5, "n_tensors": count}
