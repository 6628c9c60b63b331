"""How answers are scored (torch-free): properties of an answer, the parsing of a model's
predictions and verbal reports, and the restricted KL divergence of self-calibration."""

import math
import re

WORD = re.compile(r"[A-Za-z0-9']+")
NUMBER = re.compile(r"\d+")
REPORT_LINE = re.compile(r"([A-Za-z][A-Za-z'-]*)\W*?(?::|-|=)?\s*(\d+(?:\.\d+)?)?\s*%?")
VOWELS = set("aeiou")
ORDINAL = {"first": 0, "second": 1, "third": 2}
OTHER = "<other>"  # the bucket of every token outside the compared support


def words(text: str) -> list[str]:
    """The words of `text`, lower case, without punctuation."""
    return [w.lower() for w in WORD.findall(text or "")]


def answer_property(text: str, prop: str) -> str | None:
    """A property of an object-level answer: first/second/third_character (of its first word),
    first/second/third_word, starts_with_vowel ('yes'/'no'), option (the first standalone A or
    B); None when the answer has no such property (too short, no option)."""
    found = words(text)
    kind, _, unit = prop.partition("_")
    if prop == "starts_with_vowel":
        return ("yes" if found[0][0] in VOWELS else "no") if found else None
    if prop == "option":
        match = re.search(r"\b([AB])\b", text or "")
        return match.group(1) if match else None
    index = ORDINAL[kind]
    if unit == "character":
        return found[0][index] if found and len(found[0]) > index else None
    return found[index] if len(found) > index else None


def predicted_property(text: str, prop: str) -> str | None:
    """What a hypothetical answer predicts about the property: a character, a word, 'yes'/'no'
    or an option letter; None when unreadable."""
    found = words(text)
    if not found:
        return None
    if prop == "starts_with_vowel":
        return found[0] if found[0] in ("yes", "no") else None
    if prop == "option":
        match = re.search(r"\b([AB])\b", text)
        return match.group(1) if match else None
    if prop.endswith("_character"):
        return found[0][0]
    return found[0]


def parse_number(text: str) -> int | None:
    """The first whole number written in digits in `text`, else None."""
    match = NUMBER.search(text or "")
    return int(match.group()) if match else None


def parse_report(text: str, k: int = 5) -> list[tuple[str, float | None]]:
    """Up to `k` distinct (word, percent or None) from a verbal report, one per line ('word: 40%'),
    or from a comma-separated list when it is one line."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if len(lines) == 1:
        lines = lines[0].split(",")
    found, seen = [], set()
    for line in lines:
        match = REPORT_LINE.search(re.sub(r"^\s*(?:\d+[.)]|[-*])\s*", "", line))
        if match and match.group(1).lower() not in seen:
            seen.add(match.group(1).lower())
            found.append((match.group(1), float(match.group(2)) if match.group(2) else None))
        if len(found) == k:
            break
    return found


def report_distribution(report: list[tuple[object, float | None]]) -> dict:
    """The reported distribution over the reported keys (tokens): the reported percents
    normalised when every entry has one and they sum above 0, else uniform; repeated keys add."""
    weights = [p for _, p in report]
    if not report:
        return {}
    if any(p is None for p in weights) or sum(weights) <= 0:
        weights = [1.0] * len(report)
    total = sum(weights)
    distribution = {}
    for (key, _), weight in zip(report, weights):
        distribution[key] = distribution.get(key, 0.0) + weight / total
    return distribution


def restricted_kl(model: dict, report: dict, epsilon: float = 0.01) -> float:
    """KL(P || Q) in nats on the support S = model's keys ∪ report's keys, plus OTHER.

    P is the model's exact probability of each key of S (`model`, which must hold every reported
    key too) and OTHER = 1 - their sum. Q is the report, with OTHER = 0, mixed with the uniform
    distribution on S ∪ {OTHER}: Q' = (1 - epsilon) Q + epsilon / |S ∪ {OTHER}|, so a key the
    report left out costs a finite amount."""
    missing = [key for key in report if key not in model]
    if missing:
        raise ValueError(f"the model's probabilities lack reported keys {missing}")
    support = list(model) + [OTHER]
    p = {key: float(model[key]) for key in model}
    p[OTHER] = max(0.0, 1.0 - sum(p.values()))
    uniform = epsilon / len(support)
    kl = 0.0
    for key in support:
        q = (1 - epsilon) * report.get(key, 0.0) + uniform
        if p[key] > 0:
            kl += p[key] * math.log(p[key] / q)
    return kl
