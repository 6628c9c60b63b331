"""The texts of the concept-injection experiments, read and validated against their own schemas.

Free of torch: the workflow validates every configured resource file when it is parsed.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import read_resource
from ..errors import InputError
from ..study.rubric import RubricText, rubric_text_fields

CRITERIA = ("coherent", "affirmative", "identifies", "detection_before_word")
CONTROL_CRITERIA = ("coherent", "affirmative")  # no concept was injected: nothing to identify
INSTRUCTIONS = ("think", "dont_think", "neutral")


@dataclass(frozen=True)
class ConceptWords:
    concepts: tuple[str, ...]
    baseline: tuple[str, ...]
    template: str  # "{word}" is replaced by the word in lower case


@dataclass(frozen=True)
class ContrastivePair:
    id: str
    specific: str
    generic: str


@dataclass(frozen=True)
class AnswerSpec:
    """Options read after a prefill (the fields judge.answer_frame reads)."""

    path: Path
    prefill: str
    separator: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class DetectionTexts:
    path: Path
    version: int
    sha256: str
    preamble: str
    acknowledgement: str
    opening: str
    question: str
    answer: AnswerSpec  # prefill as written; the options yes, no
    forced_prefill: str
    # the question, then its paraphrases: the logit metric's and forced identification's variants
    wordings: tuple[str, ...]
    control_questions: tuple[str, ...]  # yes/no questions whose truthful answer is no, injection or not
    leak_requests: tuple[str, ...]  # requests for a word that do not ask about thoughts
    leak_prefill: str


@dataclass(frozen=True)
class Question:
    question: str
    prefill: str


@dataclass(frozen=True)
class LocalizationTexts:
    path: Path
    version: int
    sha256: str
    preamble: str | None  # the first user turn (None: the trial is one user message)
    acknowledgement: str | None  # the assistant's answer to the preamble
    n_sentences: int
    template: str
    sentence_format: str
    separator: str
    introspection: str
    questions: dict[str, Question]  # in file order


@dataclass(frozen=True)
class GradingRubric(RubricText):
    """A grading rubric: RubricText (options: yes, no) and one question per criterion."""

    criteria: dict[str, str]  # name -> question, in CRITERIA order


@dataclass(frozen=True)
class ThoughtTexts:
    path: Path
    version: int
    sha256: str
    thought_question: str
    thought_prefill: str
    repeat_question: str
    word_question: str
    follow_up: str
    intent_answer: AnswerSpec  # options: intended, accident
    instructions: dict[str, str]  # think, dont_think, neutral -> template with {sentence} (and {word})


def _fields(template):
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _check_fields(path, key, template, allowed, required, once=False):
    fields = _fields(template)
    problems = [f"unknown field {{{f}}}" for f in sorted(set(fields) - set(allowed))]
    problems += [f"no {{{f}}}" for f in sorted(set(required) - set(fields))]
    if once:
        problems += [f"{{{f}}} more than once" for f in sorted(set(fields)) if fields.count(f) > 1]
    if problems:
        raise InputError(f"{path}: key '{key}': {', '.join(problems)}")


def _check_unique(items, what, path):
    seen = set()
    for item in items:
        if item.casefold() in seen:
            raise InputError(f"{path}: {what} holds {item!r} twice (case-insensitively)")
        seen.add(item.casefold())


def load_concept_words(path: Path | str) -> ConceptWords:
    """The concept words and the baseline words (disjoint, case-insensitively) and the request template."""
    path, data, _ = read_resource(path, "concepts", "concept file")
    _check_unique(data["concepts"], "key 'concepts'", path)
    _check_unique(data["baseline_words"], "key 'baseline_words'", path)
    _check_unique(data["concepts"] + data["baseline_words"], "keys 'concepts' and 'baseline_words' together", path)
    return ConceptWords(tuple(data["concepts"]), tuple(data["baseline_words"]), data["template"])


def load_contrastive_pairs(path: Path | str) -> tuple[ContrastivePair, ...]:
    """The specific/generic sentence pairs, in file order (unique ids)."""
    path, data, _ = read_resource(path, "concepts_contrastive_pairs", "contrastive pair file")
    _check_unique([pair["id"] for pair in data["pairs"]], "key 'pairs' (ids)", path)
    return tuple(ContrastivePair(**pair) for pair in data["pairs"])


def load_neutral_sentences(path: Path | str) -> tuple[str, ...]:
    """The pool of neutral sentences, in file order (unique)."""
    path, data, _ = read_resource(path, "concepts_neutral_sentences", "sentence file")
    _check_unique(data["sentences"], "key 'sentences'", path)
    return tuple(data["sentences"])


def provenance(texts: DetectionTexts | LocalizationTexts | ThoughtTexts | GradingRubric) -> dict[str, Any]:
    """What a record file says about the texts it was made with."""
    return {"path": str(texts.path), "version": texts.version, "sha256": texts.sha256}


def load_detection_texts(path: Path | str) -> DetectionTexts:
    """The detection trial texts, validated (the wordings, control questions and leak requests
    each unique, case-insensitively)."""
    path, data, sha256 = read_resource(path, "injection_detection", "detection file")
    answer = data["answer"]
    wordings = [data["question"], *data["paraphrases"]]
    _check_unique(wordings, "keys 'question' and 'paraphrases' together", path)
    _check_unique(data["control_questions"], "key 'control_questions'", path)
    _check_unique(data["leak"]["requests"], "key 'leak.requests'", path)
    return DetectionTexts(
        path, data["version"], sha256, data["preamble"], data["acknowledgement"], data["opening"],
        data["question"], AnswerSpec(path, answer["prefill"], answer["separator"], tuple(answer["options"])),
        data["forced_identification"]["prefill"], tuple(wordings), tuple(data["control_questions"]),
        tuple(data["leak"]["requests"]), data["leak"]["prefill"],
    )


def load_localization_texts(path: Path | str) -> LocalizationTexts:
    """The localization trial texts, validated (template fields, the introspection question named);
    preamble and acknowledgement are None without a preamble."""
    path, data, sha256 = read_resource(path, "injection_localization", "localization file")
    _check_fields(path, "template", data["template"], {"n", "sentences", "question"}, {"sentences", "question"},
                  once=True)
    _check_fields(path, "sentence_format", data["sentence_format"], {"number", "sentence"}, {"number", "sentence"},
                  once=True)
    if data["introspection"] not in data["questions"]:
        raise InputError(f"{path}: key 'introspection': {data['introspection']!r} is not one of the "
                         f"questions ({', '.join(data['questions'])})")
    preamble = data.get("preamble") or {}
    return LocalizationTexts(
        path, data["version"], sha256, preamble.get("text"), preamble.get("acknowledgement"), data["n_sentences"], data["template"], data["sentence_format"],
        data["separator"], data["introspection"],
        {name: Question(**question) for name, question in data["questions"].items()},
    )


def load_thought_texts(path: Path | str) -> ThoughtTexts:
    """The thought-vs-text, prefill-intent and intentional-control texts, validated."""
    path, data, sha256 = read_resource(path, "injection_thought_and_intent", "thought and intent file")
    instructions = data["intentional_control"]
    for name in INSTRUCTIONS:
        _check_fields(path, f"intentional_control.{name}", instructions[name], {"sentence", "word"},
                      {"sentence"} if name == "neutral" else {"sentence", "word"})
    thought, intent = data["thought_vs_text"], data["prefill_intent"]
    answer = intent["answer"]
    return ThoughtTexts(
        path, data["version"], sha256, thought["thought_question"], thought["thought_prefill"],
        thought["repeat_question"], intent["word_question"], intent["follow_up"],
        AnswerSpec(path, answer["prefill"], answer["separator"], tuple(answer["options"])),
        {name: instructions[name] for name in INSTRUCTIONS},
    )


def load_grading_rubric(path: Path | str) -> GradingRubric:
    """The grading rubric, validated (template fields; {word} in the criteria that name the concept)."""
    path, data, sha256 = read_resource(path, "injection_grading_rubric", "grading rubric")
    _check_fields(path, "user_template", data["user_template"],
                  {"instructions", "question", "response", "criterion", "options"}, {"response", "criterion"})
    for name, question in data["criteria"].items():
        needs_word = name not in CONTROL_CRITERIA
        _check_fields(path, f"criteria.{name}", question, {"word"} if needs_word else set(),
                      {"word"} if needs_word else set())
    return GradingRubric(**rubric_text_fields(path, data, sha256),
                         criteria={name: data["criteria"][name] for name in CRITERIA})
