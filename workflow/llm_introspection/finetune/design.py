"""The design of the detection data, free of torch: the variants, which examples are steered
with which direction, magnitude and layers, their labels, and the label-balance check.

A split of n examples (n even) has n/2 examples designed as steered and n/2 as unsteered. The
steered half cycles through every (magnitude, layer range) cell equally (so detection can be read
by magnitude and layer range) and through a shuffled pool of directions. A variant's label rule
then gives each example option A (index 0) or B (index 1).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

LABEL_RULES = ("truth", "flipped", "random", "deny")
STEERING = ("random", "concepts", "none")
LAYERS = ("thirds", "single")
SPLITS = ("train", "validation", "heldout")
# Which direction pool each split draws from: validation is in the training distribution.
DIRECTION_POOL = {"train": "train", "validation": "train", "heldout": "heldout"}


@dataclass(frozen=True)
class Variant:
    """One variant of the detection task (config key finetune.variants.<name>)."""

    name: str
    question: str = "detection"
    answers: str = "yes_no"
    labels: str = "truth"
    corrupt: float = 0.0
    steering: str = "random"
    layers: str = "thirds"

    @classmethod
    def from_config(cls, name: str, entry: dict) -> "Variant":
        return cls(name=name, **entry)

    @property
    def expected_share(self) -> float:
        """The share of option A the variant's labels must have."""
        return 0.0 if self.labels == "deny" else 0.5


def steered_option(variant: Variant) -> int:
    """The option (0 = A, 1 = B) that says "steered" in a variant's answers: the one its labels give
    the steered examples — B for flipped labels, else A (truthful labels; random labels, which keep
    A as the truth's; deny and no-steering variants, whose A is still the affirmative answer: the
    yes of yes/no, the first option of a neutral pair such as Red of Red/Blue, which the truthful
    labels paired with steering). The detection evaluation's said_yes is "chose this option"."""
    return 1 if variant.labels == "flipped" else 0


def check_variant(variant: Variant, questions: Collection[str], answers: Collection[str]) -> None:
    """InputError naming the variant's key when its question or answer pair is not in the texts,
    or when `corrupt` is set without random labels."""
    key = f"config key 'finetune.variants.{variant.name}'"
    if variant.question not in questions:
        raise InputError(f"{key}: question {variant.question!r} is not one of the detection file's ({', '.join(questions)})")
    if variant.answers not in answers:
        raise InputError(f"{key}: answers {variant.answers!r} is not one of the detection file's ({', '.join(answers)})")
    if (variant.labels == "random") != (variant.corrupt > 0):
        raise InputError(f"{key}: 'corrupt' (a fraction above 0) goes with labels: random, and only with it")


def layer_ranges(ranges: dict, single: float, n_layers: int, kind: str) -> dict:
    """Range name -> the hidden-state indices steered: for 'thirds', the outputs of blocks
    round(f0 * n) .. round(f1 * n) - 1 of each configured [f0, f1] (at least one block); for
    'single', the one index round(single * n) (at least 1) under the name 'single'."""
    if kind == "single":
        return {"single": [max(1, int(round(single * n_layers)))]}
    out = {}
    for name, (start, end) in ranges.items():
        first = int(round(start * n_layers))
        last = max(first + 1, int(round(end * n_layers)))
        out[name] = list(range(first + 1, min(last, n_layers) + 1))
    return out


def plan_split(n: int, n_directions: int, magnitudes: Sequence[float], ranges: Iterable[str],
               rng: np.random.Generator) -> list[dict]:
    """The design rows of one split: n/2 steered rows (magnitude x layer-range cells in turn,
    directions from a shuffled pool of `n_directions` in turn) and n/2 unsteered ones, in a
    random order."""
    if n % 2:
        raise InputError(f"a split has {n} examples: it must be even (half of them steered)")
    cells = [(m, r) for r in ranges for m in magnitudes]
    order = rng.permutation(n_directions)
    rows = []
    for i in range(n // 2):
        magnitude, layer_range = cells[i % len(cells)]
        rows.append({"design_steered": True, "direction": int(order[i % n_directions]),
                     "magnitude": float(magnitude), "layer_range": layer_range})
    rows += [{"design_steered": False, "direction": None, "magnitude": 0.0, "layer_range": None}
             for _ in range(n - n // 2)]
    return [rows[i] for i in rng.permutation(n)]


def assign_labels(design_steered: Sequence[bool], variant: Variant,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(labels, corrupted): option index per example (0 = A, the answer to 'steered' under truthful
    labels) and whether the variant corrupted it. Random labels: a share `corrupt` of the labels is
    replaced by a fair coin, i.e. round(corrupt * k / 2) of each class (k examples) are flipped, so
    the labels stay balanced."""
    truth = np.array([0 if s else 1 for s in design_steered])
    corrupted = np.zeros(len(truth), dtype=bool)
    if variant.labels == "flipped":
        return 1 - truth, ~corrupted
    if variant.labels == "deny":
        return np.ones_like(truth), truth == 0
    if variant.labels == "random":
        for value in (0, 1):
            members = np.flatnonzero(truth == value)
            chosen = rng.choice(members, size=int(round(variant.corrupt * len(members) / 2)), replace=False)
            corrupted[chosen] = True
        return np.where(corrupted, 1 - truth, truth), corrupted
    return truth, corrupted


def check_balance(labels: ArrayLike, expected_share: float, tolerance: float, what: str) -> float:
    """The share of option A among `labels`; InputError naming `what` when it is further than
    `tolerance` from `expected_share` (the reference shipped a yes-biased set by accident)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise InputError(f"{what}: no examples")
    share = float(np.mean(labels == 0))
    if abs(share - expected_share) > tolerance:
        raise InputError(f"{what}: labels are off balance: {share:.3f} of them are option A, expected "
                         f"{expected_share:.3f} +- {tolerance} (finetune.label_tolerance)")
    return share
