"""A cell of an injection sweep: the concept vectors of one (model, layer) at one strength, and
the record file every experiment writes for it.

A record's kind says what was injected: 'injected' (the trial's concept vector), 'random' (a
norm-matched random vector: isotropic in localization, concept-like in detection), 'mismatched' (another concept's vector) or 'control' (nothing).
Strength is relative: every injected vector gets norm strength x the layer's mean residual norm
(steering.relative_strength); the records carry it and the absolute multiplier.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..prompts import TEMPLATE_DATE
from ..steering import relative_strength
from ..storage import versions, write_json
from .concepts import VectorSet, concept_like_random_vectors, load_vectors


def concept_word(name: str) -> str:
    """The word a concept vector stands for, as the model would write it inside a sentence."""
    return name.replace("_", " ").lower()


@dataclass(frozen=True)
class Cell:
    """The vectors of one (model, layer) and the strength they are injected at in this cell."""

    model: str
    chat: bool  # render through the chat template (prompts.uses_chat_template)
    vectors: VectorSet
    vector_path: Path
    strength: float  # relative: the injected vector's norm is strength x mean_norm
    mean_norm: float  # the layer's mean residual norm (concepts.mean_residual_norm)
    template_date: str | None = TEMPLATE_DATE  # a chat template is rendered as on this day (prompts.apply_template)

    @property
    def layer(self) -> int:
        return int(self.vectors.attrs["layer"])

    def concepts(self, names: Iterable[str] | None = None) -> tuple[str, ...]:
        """The named concepts (all of the file's when None), each checked to be in the file."""
        if names is None:
            return self.vectors.names
        unknown = [n for n in names if n not in self.vectors.names]
        if unknown:
            raise InputError(f"{self.vector_path}: no vector for {', '.join(map(repr, unknown))}")
        return tuple(names)

    def injection(self, name: str) -> tuple[np.ndarray, float]:
        """The vector of `name` and the absolute strength that gives it the cell's norm."""
        vector = self.vectors.vector(name)
        return vector, relative_strength(self.strength, vector, self.mean_norm)

    def random_injections(self, names: Iterable[str], seed: int) -> list[tuple[np.ndarray, float]]:
        """Per name, a concept-like random vector with the norm of that concept's vector
        (concepts.concept_like_random_vectors from the file's baseline vectors, seeded) and the
        absolute strength that gives it the cell's norm; InputError when the file has no baseline
        vectors."""
        if self.vectors.baseline is None:
            raise InputError(f"{self.vector_path}: no baseline_vectors for concept-like random vectors (a "
                             "contrastive file, or one written before they were saved: rerun rule concept_vectors)")
        norms = [float(np.linalg.norm(self.vectors.vector(n))) for n in names]
        vectors = concept_like_random_vectors(self.vectors.baseline, norms, seed)
        return [(v, relative_strength(self.strength, v, self.mean_norm)) for v in vectors]

    def columns(self, experiment: str) -> dict[str, Any]:
        """The columns every record of this cell carries."""
        return {"experiment": experiment, "model": self.model, "layer": self.layer,
                "vector_method": self.vectors.attrs["method"], "strength_relative": self.strength,
                "mean_norm": self.mean_norm}

    def provenance(self) -> dict[str, Any]:
        """What a record file says about the vectors."""
        keep = {k: v for k, v in self.vectors.attrs.items() if k not in ("names", "description")}
        return {"path": str(self.vector_path), **keep}


def open_cell(vector_path: Path | str, model: str, chat: bool, strength: float, mean_norm: float,
              template_date: str | None = TEMPLATE_DATE) -> Cell:
    """Read the concept vector file of one (model, layer) for a cell at relative `strength`, its
    trials rendered (through the chat template when `chat`, as on `template_date`); InputError
    names the file when it was made for another model or holds a zero vector."""
    vectors = load_vectors(vector_path)
    saved = vectors.attrs["model"]  # a name or a model record
    if (saved.get("name") if isinstance(saved, dict) else saved) != model:
        raise InputError(f"{vector_path}: attribute 'model' is {saved!r}, not model {model!r}")
    zero = [n for n, v in zip(vectors.names, vectors.vectors) if not np.linalg.norm(v) > 0]
    if zero:
        raise InputError(f"{vector_path}: the vectors of {', '.join(zero)} have no direction (norm 0)")
    if not strength >= 0 or not mean_norm > 0:
        raise ValueError(f"strength must be >= 0 and mean_norm > 0, not {strength!r} and {mean_norm!r}")
    return Cell(model, chat, vectors, Path(vector_path), float(strength), float(mean_norm), template_date)


def write_records(path: Path | str, records: Sequence[dict[str, Any]], **provenance: Any) -> None:
    """Write one cell's records as JSON, atomically, with the provenance given (e.g. model=the
    model record, vectors=cell.provenance(), texts=provenance(texts), settings=...) and the
    package versions."""
    write_json(path, {**provenance, "versions": versions(), "n_records": len(records), "records": records})
