"""The judge's rubric: texts, answer options and one question with levels per dimension.

Free of torch: the workflow validates every configured rubric when it is parsed.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import read_resource
from ..errors import InputError

from .coding import DIMENSIONS as KEYWORD_DIMENSIONS

# The dimensions the judge rates: the keyword coder's three and introspective depth.
DIMENSIONS = (*KEYWORD_DIMENSIONS, "introspective_depth")

TEMPLATE_FIELDS = frozenset({"instructions", "prompt", "completion", "question", "levels", "options"})
REQUIRED_FIELDS = frozenset({"completion", "question", "levels"})


@dataclass(frozen=True)
class Dimension:
    question: str
    levels: tuple


@dataclass(frozen=True)
class RubricText:
    """What every rubric file holds: the prompt's texts and the answer options read after the prefill."""

    path: Path
    version: int
    sha256: str
    system: str | None
    instructions: str
    user_template: str
    prefill: str
    separator: str
    options: tuple
    truncation_marker: str


def rubric_text_fields(path: Path, data: Mapping[str, Any], sha256: str) -> dict[str, Any]:
    """The RubricText fields of a validated rubric file's data, by name."""
    return dict(path=path, version=data["version"], sha256=sha256, system=data["system"],
                instructions=data["instructions"], user_template=data["user_template"], prefill=data["prefill"],
                separator=data["separator"], options=tuple(data["options"]),
                truncation_marker=data["truncation_marker"])


@dataclass(frozen=True)
class Rubric(RubricText):
    dimensions: dict  # name -> Dimension, in DIMENSIONS order


def load_rubric(path: Path | str) -> Rubric:
    """Read and validate a rubric file; InputError names the file and the key at fault."""
    path, data, sha256 = read_resource(path, "rubric", "rubric file")
    fields = {name for _, name, _, _ in string.Formatter().parse(data["user_template"]) if name is not None}
    unknown, missing = fields - TEMPLATE_FIELDS, REQUIRED_FIELDS - fields
    if unknown or missing:
        problems = [f"unknown field {{{f}}}" for f in sorted(unknown)] + [f"no {{{f}}}" for f in sorted(missing)]
        raise InputError(
            f"rubric file {path}: key 'user_template': {', '.join(problems)} "
            f"(its fields: {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))})"
        )
    return Rubric(
        **rubric_text_fields(path, data, sha256),
        dimensions={name: Dimension(data["dimensions"][name]["question"], tuple(data["dimensions"][name]["levels"]))
                    for name in DIMENSIONS},
    )
