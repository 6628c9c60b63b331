"""Concept vectors: residual-stream directions that stand for a concept, and their random controls.

- Mean subtraction (Lindsey 2025): the last-token activation of the request "Tell me about
  {word}" (rendered as the model sees a request: through its chat template for instruct models
  in their native frame, see prompts.render_prompt) minus the mean over the baseline words.
- Contrastive pairs: the mean activation over the tokens of a specific sentence minus that of
  its generic counterpart, both as plain text, position 0 (the attention sink) excluded. The mean
  rather than the last token: the concept is spread over the sentence's words, the two sentences
  end alike ("...before the concert." / "...before the event."), and a sentence is steered on
  all of its tokens (localization).
- Random controls: isotropic Gaussian directions with the norms of given vectors (localization),
  and concept-like random vectors (detection): Gaussian combinations of the baseline words'
  vectors, i.e. draws from a Gaussian with the covariance of word vectors, not an isotropic one.

Activations are read at hidden-state indices (tracing's convention) from a decoder-only pass;
steering hooks active around these calls act on them. Vectors of one (model, layer) are stored
in one HDF5 file with their provenance.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..batching import PAD_ID, left_pad
from ..errors import InputError
from ..prompts import TEMPLATE_DATE, Prompt, render_prompt
from ..storage import atomic_h5, open_h5, set_attrs, versions
from ..tracing import capture_residual

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

METHODS = ("mean_subtraction", "contrastive", "random")
# --- prompts ------------------------------------------------------------------------------------

def concept_prompt_ids(words: Iterable[str], template: str, tokenizer: PreTrainedTokenizerBase, variant: str,
                       frame: str, model_name: str, template_date: str | None = TEMPLATE_DATE) -> list[list[int]]:
    """Token ids of the request `template` for each word, rendered for this model (a chat template
    as on `template_date`)."""
    ids = []
    for word in words:
        text = template.format(word=word.lower())
        request = Prompt(id=word, type="concept", instruct=text, base=text)
        ids.append(render_prompt(request, tokenizer, variant, frame, model_name, template_date=template_date)[1])
    return ids


def sentence_ids(sentences: Iterable[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Token ids of sentences as plain text (with the special tokens the tokenizer adds)."""
    return [list(tokenizer(sentence)["input_ids"]) for sentence in sentences]


# --- activations --------------------------------------------------------------------------------

@torch.inference_mode()
def _residual_batches(model, indices, prompts, batch_size):
    """Per batch of prompts: residual states (batch, len(indices), seq, d) float32, left-padded, and
    a (batch, seq) mask of the real tokens other than the attention sink (position 0)."""
    decoder = model.get_decoder()
    for start in range(0, len(prompts), batch_size):
        ids, mask, positions = left_pad(prompts[start : start + batch_size], PAD_ID, model.device)
        with capture_residual(model, indices) as captured:
            decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        yield torch.stack([captured[i] for i in indices], dim=1).float(), mask.bool() & (positions > 0)


def last_token_activations(model: PreTrainedModel, indices: Sequence[int], prompts: Sequence[Sequence[int]],
                           batch_size: int) -> np.ndarray:
    """(len(prompts), len(indices), d) float64: the residual stream at each prompt's last token."""
    rows = [states[:, :, -1].cpu() for states, _ in _residual_batches(model, indices, prompts, batch_size)]
    return torch.cat(rows).double().numpy()


def mean_token_activations(model: PreTrainedModel, indices: Sequence[int], prompts: Sequence[Sequence[int]],
                           batch_size: int) -> np.ndarray:
    """(len(prompts), len(indices), d) float64: the residual stream averaged over each prompt's
    tokens, position 0 (the attention sink) excluded."""
    if any(len(p) < 2 for p in prompts):
        raise InputError("mean token activations need prompts of at least 2 tokens (position 0 is left out)")
    rows = []
    for states, kept in _residual_batches(model, indices, prompts, batch_size):
        weights = kept[:, None, :, None].float()
        rows.append(((states * weights).sum(2) / weights.sum(2)).cpu())
    return torch.cat(rows).double().numpy()


def mean_residual_norms(model: PreTrainedModel, indices: Sequence[int], prompts: Sequence[Sequence[int]],
                        batch_size: int) -> list[float]:
    """Per hidden-state index, the mean L2 norm of that state over all tokens of the prompts, each
    prompt's position 0 (the attention sink, norm far above the rest) excluded; one pass for all."""
    totals, count = [0.0] * len(indices), 0
    for states, kept in _residual_batches(model, indices, prompts, batch_size):
        for j in range(len(indices)):
            totals[j] += float(states[:, j].double().norm(dim=-1)[kept].sum())
        count += int(kept.sum())
    if count == 0:
        raise InputError("mean residual norm: the prompts have no token after position 0")
    return [t / count for t in totals]


def mean_residual_norm(model: PreTrainedModel, index: int, prompts: Sequence[Sequence[int]], batch_size: int) -> float:
    """The mean residual norm (mean_residual_norms) of one hidden-state index."""
    return mean_residual_norms(model, [index], prompts, batch_size)[0]


def mean_subtraction_vectors(model: PreTrainedModel, indices: Sequence[int], concept_prompts: Sequence[Sequence[int]],
                             baseline_prompts: Sequence[Sequence[int]],
                             batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_concepts, len(indices), d): last-token activation of each concept prompt minus the mean
    over the baseline prompts; and (n_baseline, len(indices), d): the same for each baseline
    prompt (its activation minus the baseline mean), the material of concept-like random vectors."""
    concepts = last_token_activations(model, indices, concept_prompts, batch_size)
    baseline = last_token_activations(model, indices, baseline_prompts, batch_size)
    mean = baseline.mean(axis=0)
    return (concepts - mean).astype(np.float32), (baseline - mean).astype(np.float32)


def contrastive_vectors(model: PreTrainedModel, indices: Sequence[int], specific_prompts: Sequence[Sequence[int]],
                        generic_prompts: Sequence[Sequence[int]], batch_size: int) -> np.ndarray:
    """(n_pairs, len(indices), d): token-mean activation of each specific sentence minus that of
    its generic sentence."""
    specific = mean_token_activations(model, indices, specific_prompts, batch_size)
    generic = mean_token_activations(model, indices, generic_prompts, batch_size)
    return (specific - generic).astype(np.float32)


def matched_random_vectors(vectors: ArrayLike, seed: int) -> np.ndarray:
    """Gaussian random directions of the same shape as `vectors`, each scaled to the norm of its
    counterpart (norms along the last axis); the same seed gives the same vectors."""
    vectors = np.asarray(vectors, dtype=np.float64)
    directions = np.random.default_rng(seed).standard_normal(vectors.shape)
    scale = np.linalg.norm(vectors, axis=-1, keepdims=True) / np.linalg.norm(directions, axis=-1, keepdims=True)
    return (directions * scale).astype(np.float32)


def concept_like_random_vectors(baseline: np.ndarray, norms: Sequence[float], seed: int) -> np.ndarray:
    """(len(norms), d) float32: random vectors that look like concept vectors. Each is a Gaussian
    combination of the baseline words' vectors (rows of `baseline`, each a word's activation minus
    the baseline mean, built as a concept vector is), so it is a draw from a Gaussian with the
    covariance of word vectors, lies in their span and stands for no one word; scaled to `norms`.
    The same seed gives the same vectors."""
    baseline = np.asarray(baseline, dtype=np.float64)
    weights = np.random.default_rng(seed).standard_normal((len(norms), len(baseline)))
    directions = weights @ baseline
    scale = np.asarray(norms, dtype=np.float64)[:, None] / np.linalg.norm(directions, axis=-1, keepdims=True)
    return (directions * scale).astype(np.float32)


# --- files --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VectorSet:
    """Vectors of one (model, layer), one row per name, with the provenance they were saved with."""

    names: tuple
    vectors: np.ndarray  # (len(names), d) float32
    attrs: dict
    baseline: np.ndarray | None = None  # (n_baseline, d) float32: the baseline words' vectors (mean subtraction)

    def vector(self, name: str) -> np.ndarray:
        return self.vectors[self.names.index(name)]


def save_vectors(path: Path | str, vectors: ArrayLike, names: Sequence[str], *, model: str | dict, layer: int,
                 method: str, seed: int | None = None, baseline: ArrayLike | None = None, **provenance: Any) -> None:
    """Write vectors (len(names), d) of one model and hidden-state index `layer` to an HDF5 file,
    atomically, with model, layer, method, names, seed, the given provenance and package versions;
    and `baseline` (n, d), the baseline words' vectors, when given."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    if vectors.ndim != 2 or vectors.shape[0] != len(names):
        raise ValueError(f"vectors of shape {vectors.shape} do not give one row per name ({len(names)})")
    with atomic_h5(path) as h5:
        set_attrs(h5, {
            **provenance, "model": model, "layer": layer, "method": method, "names": list(names),
            "seed": seed, "versions": versions(),
        })
        h5.attrs["description"] = (
            "Concept vectors of one model at hidden-state index `layer` (0 = embedding output, h = "
            "output of block h-1): dataset vectors (n, d) float32, row i for names[i]. Methods: "
            "mean_subtraction = last-token activation of the request minus the baseline words' mean; "
            "contrastive = token-mean activation (position 0 excluded) of the specific sentence minus "
            "the generic one; random = Gaussian directions with matched norms, from `seed`. Dataset "
            "baseline_vectors (mean_subtraction): each baseline word's activation minus the baseline mean."
        )
        h5.create_dataset("vectors", data=vectors)
        if baseline is not None:
            h5.create_dataset("baseline_vectors", data=np.asarray(baseline, dtype=np.float32))


def _decoded(value):
    """An attribute as set_attrs was given it: JSON-encoded lists, dicts and None decoded."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        return decoded if decoded is None or isinstance(decoded, (list, dict)) else value
    return value


def load_vectors(path: Path | str) -> VectorSet:
    """Read a file written by save_vectors."""
    path = Path(path)
    with open_h5(path) as h5:
        attrs = {key: _decoded(value) for key, value in h5.attrs.items()}
        vectors = h5["vectors"][()] if "vectors" in h5 else None
        baseline = h5["baseline_vectors"][()] if "baseline_vectors" in h5 else None
    missing = [key for key in ("model", "layer", "method", "names") if key not in attrs]
    if vectors is None or missing:
        raise InputError(f"{path}: not a concept vector file (missing {missing or 'dataset vectors'})")
    return VectorSet(tuple(attrs["names"]), vectors, attrs, baseline)
