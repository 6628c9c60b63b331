"""The texts of the detection data, read and validated against their schema.

Free of torch: the workflow validates the configured file when it is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import read_resource
from ..errors import InputError


@dataclass(frozen=True)
class Context:
    """A neutral first turn: the user's message and the assistant's reply."""

    user: str
    assistant: str


@dataclass(frozen=True)
class DetectionTexts:
    """The detection file: contexts, questions (with {a} and {b}), answer pairs and the prefill."""

    path: Path
    version: int
    sha256: str
    prefill: str
    contexts: tuple
    questions: dict  # name -> template with {a} and {b}
    answers: dict  # name -> (option A, option B)

    def question(self, name: str, answers: str) -> str:
        """The question `name` with the answer pair `answers` filled in."""
        a, b = self.answers[answers]
        return self.questions[name].format(a=a, b=b)

    def provenance(self) -> dict:
        """What every output records about the texts."""
        return {"path": str(self.path), "version": self.version, "sha256": self.sha256}


def load_detection_texts(path: Path | str) -> DetectionTexts:
    """Read and validate a detection file (config/schema/finetune_detection.schema.yaml); the
    questions' only placeholders are {a} and {b}, and the contexts' user messages are unique."""
    path, data, sha256 = read_resource(path, "finetune_detection", "detection data file")
    for name, template in data["questions"].items():
        try:
            template.format(a="A", b="B")
        except (KeyError, IndexError, ValueError) as error:
            raise InputError(f"detection data file {path}: key 'questions.{name}': placeholders other than "
                             f"{{a}} and {{b}} ({error})") from None
    users = [c["user"].strip().lower() for c in data["contexts"]]
    if len(set(users)) != len(users):
        raise InputError(f"detection data file {path}: key 'contexts': user messages repeat")
    return DetectionTexts(
        path=path, version=data["version"], sha256=sha256, prefill=data["prefill"],
        contexts=tuple(Context(**c) for c in data["contexts"]), questions=dict(data["questions"]),
        answers={name: tuple(pair) for name, pair in data["answers"].items()},
    )
