"""The texts of the self-knowledge evaluations, read and validated against their own schemas
(torch-free: the workflow validates them when it is parsed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import read_resource
from ..errors import InputError


@dataclass(frozen=True)
class Question:
    id: str  # <category>_<NN>, in file order
    category: str
    group: str  # suggestive or control
    text: str


@dataclass(frozen=True)
class Questions:
    path: Path
    version: int
    sha256: str
    instruction: str
    prefill: str
    separator: str
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    kind: str = ""


@dataclass(frozen=True)
class Tasks:
    path: Path
    version: int
    sha256: str
    hypothetical: str
    property_questions: dict  # property -> question
    kind_properties: dict  # kind -> properties asked
    self_prediction: tuple[Item, ...]
    calibration_report: str
    calibration: tuple[Item, ...]
    length_question: str
    first_word_question: str
    length_prediction: tuple[Item, ...]
    length_prefill: str  # starts the answer to length_question ("": none)
    first_word_prefill: str


def load_questions(path: Path | str, per_category: int | None = None) -> Questions:
    """The questions file (schema selfknowledge_questions), the first `per_category` questions of
    each category (None: all); InputError when a question is in two categories or there is no
    suggestive or no control category."""
    path, data, sha = read_resource(path, "selfknowledge_questions", "self-knowledge questions file")
    questions, seen = [], set()
    for category, entry in data["categories"].items():
        for i, text in enumerate(entry["questions"][:per_category]):
            if text in seen:
                raise InputError(f"self-knowledge questions file {path}: question {text!r} appears twice")
            seen.add(text)
            questions.append(Question(f"{category}_{i + 1:02d}", category, entry["group"], text))
    groups = {q.group for q in questions}
    if groups != {"suggestive", "control"}:
        raise InputError(f"self-knowledge questions file {path}: key 'categories' needs suggestive and control "
                         f"categories, found only {sorted(groups)}")
    return Questions(path, data["version"], sha, data["instruction"], data["prefill"], data["separator"],
                     tuple(questions))


def _items(entries, where, path):
    ids = [e["id"] for e in entries]
    if len(set(ids)) != len(ids):
        raise InputError(f"self-knowledge tasks file {path}: key '{where}' repeats an id")
    return tuple(Item(e["id"], e["prompt"], e.get("kind", "")) for e in entries)


def load_tasks(path: Path | str) -> Tasks:
    """The tasks file (schema selfknowledge_tasks); InputError when a task's kind or a kind's
    property is not defined in the file."""
    path, data, sha = read_resource(path, "selfknowledge_tasks", "self-knowledge tasks file")
    prediction = data["self_prediction"]
    for kind, properties in prediction["kinds"].items():
        unknown = [p for p in properties if p not in prediction["properties"]]
        if unknown:
            raise InputError(f"self-knowledge tasks file {path}: key 'self_prediction.kinds.{kind}': properties "
                             f"{unknown} have no question in 'self_prediction.properties'")
    for task in prediction["tasks"]:
        if task["kind"] not in prediction["kinds"]:
            raise InputError(f"self-knowledge tasks file {path}: task {task['id']!r} has kind {task['kind']!r}, "
                             f"not one of 'self_prediction.kinds' ({', '.join(prediction['kinds'])})")
    length = data["length_prediction"]
    return Tasks(
        path, data["version"], sha, data["hypothetical"], dict(prediction["properties"]),
        {k: tuple(v) for k, v in prediction["kinds"].items()},
        _items(prediction["tasks"], "self_prediction.tasks", path),
        data["calibration"]["report"], _items(data["calibration"]["prompts"], "calibration.prompts", path),
        length["length_question"], length["first_word_question"],
        _items(length["prompts"], "length_prediction.prompts", path),
        length.get("length_prefill", ""), length.get("first_word_prefill", ""),
    )


def hypothetical(tasks: Tasks, prompt: str, question: str) -> str:
    """The hypothetical question about the model's own answer to `prompt`."""
    return tasks.hypothetical.format(task=prompt, question=question)
