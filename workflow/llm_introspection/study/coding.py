"""Keyword content coding of completions: three 0-3 dimensions, a content type and a refusal flag.

The lexicon (resources/lexicons/coding.yaml) holds the patterns, the level rule in words and its
thresholds; this module implements exactly that rule:

- the text is normalised (NFKC, curly apostrophes/quotes to straight ones, non-breaking hyphens
  to '-', runs of spaces/tabs to one space) and matched case-insensitively, a line break counting
  as a space;
- per dimension, all its patterns form one alternation found left to right without overlap,
  so each occurrence counts once;
- rate = matches * 100 / max(words, words_floor); a matched sentence is one a match starts in;
- level 3 if rate >= level3_rate, or matched sentences >= level3_min_sentences and matched
  sentences / sentences >= level3_sentence_share; else level 2 if rate >= level2_rate or matched
  sentences >= level2_sentences; else 1 if there is a match; else 0;
- content type: the type with the most cues (self_description counts the matches of its
  dimensions), ties broken by `tie_order`, `fallback` when there is no cue; a refusal gets
  `refusal_type` when the lexicon names one;
- refusal: any refusal pattern matches.

Hand-labelled texts (resources/lexicons/labelled_examples.yaml) measure the coder's agreement
with a reader applying the same rule (labelled_agreement).

Pure regex, compiled once per lexicon; no torch import.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import read_resource
from ..errors import InputError

DIMENSIONS = ("self_reference", "meta_cognition", "hedging")
CONTENT_TYPES = ("self_description", "creative", "factual", "conversational", "other")

# Texts a pattern is tried on at load time: a pattern that matches the empty string anywhere
# would count matches in every text.
_EMPTY_PROBES = ("", " ", "a", "i am. it is, perhaps", "the end\nnew line")

_APOSTROPHES = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u02bc": "'",
    "\u0060": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-",
})
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*[ \n]+|\n+")
_HAS_WORD = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class Thresholds:
    words_floor: int
    level2_rate: float
    level2_sentences: int
    level3_rate: float
    level3_min_sentences: int
    level3_sentence_share: float


@dataclass(frozen=True)
class Lexicon:
    """A loaded lexicon: one compiled alternation per dimension, content type and for refusals."""

    path: Path
    version: int
    sha256: str
    dimensions: dict[str, re.Pattern[str]]  # name -> compiled alternation
    thresholds: dict[str, Thresholds]
    type_patterns: dict[str, re.Pattern[str] | None]  # content type -> compiled alternation (None: no patterns)
    type_dimensions: dict[str, tuple[str, ...]]  # content type -> the dimensions whose matches count as its cues
    tie_order: tuple[str, ...]
    fallback: str
    refusal_type: str | None
    refusal: re.Pattern[str]


def _compile_groups(groups, key, path):
    """Compile every pattern (naming the one that fails), then the alternation of all of them."""
    sources = []
    for group, patterns in groups.items():
        for index, pattern in enumerate(patterns):
            where = f"lexicon file {path}: key '{key}.{group}.{index}'"
            try:
                compiled = re.compile(pattern, re.IGNORECASE)
            except re.error as error:
                raise InputError(f"{where}: pattern {pattern!r} is not a valid regular expression: {error}") from None
            letters = re.sub(r"\\.|\(\?P", "", pattern)  # escapes (\b, \S) and (?P<name>) may be upper case
            if letters != letters.lower():
                raise InputError(f"{where}: pattern {pattern!r} is not lower case")
            if any(m.end() == m.start() for probe in _EMPTY_PROBES for m in compiled.finditer(probe)):
                raise InputError(f"{where}: pattern {pattern!r} can match the empty string")
            sources.append(f"(?:{pattern})")
    try:
        return re.compile("|".join(sources), re.IGNORECASE)
    except re.error as error:
        raise InputError(
            f"lexicon file {path}: key '{key}': its patterns do not combine into one "
            f"regular expression (a repeated group name or an inline flag?): {error}"
        ) from None


def load_lexicon(path: Path | str) -> Lexicon:
    """Read, validate and compile a lexicon file; InputError names the file and the key at fault."""
    path, data, sha256 = read_resource(path, "lexicon", "lexicon file")
    dimensions, thresholds = {}, {}
    for name in DIMENSIONS:
        spec = data["dimensions"][name]
        dimensions[name] = _compile_groups(spec["patterns"], f"dimensions.{name}.patterns", path)
        thresholds[name] = Thresholds(**spec["thresholds"])
    rule = data["content_type"]
    type_patterns, type_dimensions = {}, {}
    for name, spec in rule["types"].items():
        patterns = spec.get("patterns")
        type_patterns[name] = (
            _compile_groups(patterns, f"content_type.types.{name}.patterns", path) if patterns else None
        )
        type_dimensions[name] = tuple(spec.get("dimensions", ()))
    refusal = _compile_groups(data["refusal"]["patterns"], "refusal.patterns", path)
    return Lexicon(
        path=path,
        version=data["version"],
        sha256=sha256,
        dimensions=dimensions,
        thresholds=thresholds,
        type_patterns=type_patterns,
        type_dimensions=type_dimensions,
        tie_order=tuple(rule["tie_order"]),
        fallback=rule["fallback"],
        refusal_type=rule["refusal_type"],
        refusal=refusal,
    )


def normalise(text: str) -> str:
    """NFKC, straight apostrophes/quotes/hyphens, single spaces; line breaks kept."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    return _SPACE_AROUND_NEWLINE.sub("\n", _HORIZONTAL_SPACE.sub(" ", text)).strip()


def sentence_starts(text: str) -> list[int]:
    """Start offsets of the sentences of normalised text (pieces without a letter or digit dropped)."""
    starts, begin = [], 0
    for brk in _SENTENCE_BREAK.finditer(text):
        if _HAS_WORD.search(text, begin, brk.start()):
            starts.append(begin)
        begin = brk.end()
    if _HAS_WORD.search(text, begin):
        starts.append(begin)
    return starts


def level(count: int, n_words: int, matched_sentences: int, n_sentences: int, t: Thresholds) -> int:
    """The documented level rule (see the module docstring and the lexicon's `levels`)."""
    if count == 0:
        return 0
    rate = count * 100 / max(n_words, t.words_floor)
    share = matched_sentences / n_sentences if n_sentences else 0.0
    if rate >= t.level3_rate or (
        matched_sentences >= t.level3_min_sentences and share >= t.level3_sentence_share
    ):
        return 3
    if rate >= t.level2_rate or matched_sentences >= t.level2_sentences:
        return 2
    return 1


def _as_text(text):
    """None and NaN (a missing text in a table) code as empty text."""
    if text is None or (isinstance(text, float) and text != text):
        return ""
    return text


def _matches(regex, text):
    return [m for m in regex.finditer(text) if m.end() > m.start()]


def explain(text: str | float | None, lexicon: Lexicon) -> dict[str, list[str]]:
    """The matched phrases per dimension, content type and refusal, for auditing the lexicon."""
    text = normalise(_as_text(text)).replace("\n", " ")
    found = {name: [m.group(0) for m in _matches(rx, text)] for name, rx in lexicon.dimensions.items()}
    for name, rx in lexicon.type_patterns.items():
        if rx is not None:
            found[f"type:{name}"] = [m.group(0) for m in _matches(rx, text)]
    found["refusal"] = [m.group(0) for m in _matches(lexicon.refusal, text)]
    return found


def code_text(text: str | float | None, lexicon: Lexicon) -> dict[str, Any]:
    """Code one text: levels, match counts, content_type, refusal, n_words and n_sentences.

    Empty, blank or missing (None, NaN) text codes as all zeros, content type `fallback`, no refusal.
    """
    norm = normalise(_as_text(text))
    starts = sentence_starts(norm)
    flat = norm.replace("\n", " ")
    n_words = len(_WORD.findall(flat))
    result = {}
    for name, regex in lexicon.dimensions.items():
        found = _matches(regex, flat)
        sentences = {bisect_right(starts, m.start()) for m in found}
        result[name] = level(len(found), n_words, len(sentences), len(starts), lexicon.thresholds[name])
        result[f"{name}_count"] = len(found)
    cues = {}
    for name in lexicon.tie_order:
        regex = lexicon.type_patterns[name]
        cues[name] = (len(_matches(regex, flat)) if regex is not None else 0) + sum(
            result[f"{d}_count"] for d in lexicon.type_dimensions[name]
        )
    refusal = lexicon.refusal.search(flat) is not None
    best = max(lexicon.tie_order, key=lambda name: cues[name])  # first of the tied maxima
    if refusal and lexicon.refusal_type is not None:
        result["content_type"] = lexicon.refusal_type
    else:
        result["content_type"] = best if cues[best] > 0 else lexicon.fallback
    result["refusal"] = refusal
    result["n_words"] = n_words
    result["n_sentences"] = len(starts)
    return result


def code_table(rows: pd.DataFrame | Iterable[str | Mapping[str, Any]], lexicon: Lexicon,
               text_key: str = "text") -> pd.DataFrame:
    """Code many texts: rows are strings or mappings with a `text_key` (other keys are kept as columns).

    Returns one row per text: the kept keys, then the columns of code_text.
    """
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    records = []
    for row in rows:
        if isinstance(row, str):
            record, text = {}, row
        else:
            record = {k: v for k, v in row.items() if k != text_key}
            text = row[text_key]
        record.update(code_text(text, lexicon))
        records.append(record)
    columns = [c for c in records[0]] if records else _empty_columns()
    return pd.DataFrame.from_records(records, columns=columns)


def _empty_columns():
    columns = []
    for name in DIMENSIONS:
        columns.append(name)
        columns.append(f"{name}_count")
    return columns + ["content_type", "refusal", "n_words", "n_sentences"]


def load_labelled_examples(path: Path | str) -> list[dict[str, Any]]:
    """Read and validate hand-labelled texts; InputError names the file and the key at fault."""
    path, data, _ = read_resource(path, "labelled_examples", "labelled examples file")
    ids = [example["id"] for example in data["examples"]]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InputError(f"labelled examples file {path}: repeated ids {repeated}")
    return data["examples"]


def labelled_agreement(examples: Sequence[Mapping[str, Any]], lexicon: Lexicon) -> pd.DataFrame:
    """Per dimension: n, Spearman rho and exact agreement (share) of coded levels with the labels.

    rho is NaN when the labels or the coded levels are all equal.
    """
    from scipy.stats import spearmanr  # here: the model jobs import this module (the judge's rubric), not scipy

    coded = [code_text(example["text"], lexicon) for example in examples]
    rows = []
    for name in DIMENSIONS:
        labels = [example["expected"][name] for example in examples]
        levels = [c[name] for c in coded]
        constant = len(set(labels)) < 2 or len(set(levels)) < 2
        rows.append({
            "dimension": name,
            "n": len(examples),
            "spearman": float("nan") if constant else float(spearmanr(labels, levels).statistic),
            "exact": sum(a == b for a, b in zip(labels, levels)) / len(examples) if examples else float("nan"),
        })
    return pd.DataFrame(rows, columns=["dimension", "n", "spearman", "exact"])
