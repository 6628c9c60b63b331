"""Keyword coding: hand-labelled examples, the level rule, normalisation and lexicon errors."""

import re

import pandas as pd
import pytest
import yaml

from conftest import REPO
from llm_introspection.study.coding import (
    DIMENSIONS, code_table, code_text, labelled_agreement, load_labelled_examples, load_lexicon, normalise,
)
from llm_introspection.config import read_yaml
from llm_introspection.errors import InputError

LEXICON = REPO / "resources/lexicons/coding.yaml"
SCHEMA = REPO / "config/schema/lexicon.schema.yaml"
EXAMPLES_FILE = REPO / "resources/lexicons/labelled_examples.yaml"
EXAMPLES_SCHEMA = REPO / "config/schema/labelled_examples.schema.yaml"
EXAMPLES = load_labelled_examples(EXAMPLES_FILE)
TUNING = [e for e in EXAMPLES if e["split"] == "tuning"]
FILLER = "the cat sat on the mat today"  # 7 words, no cue of any dimension


@pytest.fixture(scope="module")
def lexicon():
    return load_lexicon(LEXICON)


def test_examples_are_many_and_tuning_ones_complete():
    assert len(TUNING) >= 30 and len(EXAMPLES) - len(TUNING) >= 30
    keys = {*DIMENSIONS, "content_type", "refusal"}
    assert all(set(e["expected"]) == keys for e in TUNING)


@pytest.mark.parametrize("example", TUNING, ids=[e["id"] for e in TUNING])
def test_hand_labelled_example(example, lexicon):
    coded = code_text(example["text"], lexicon)
    got = {key: coded[key] for key in example["expected"]}
    assert got == example["expected"], {k: coded[f"{k}_count"] for k in DIMENSIONS}


# --- the level rule on synthetic text -----------------------------------------------------

def sentences(n, cue="", cued=0):
    """n sentences of filler; the first `cued` of them start with `cue`."""
    return " ".join(f"{cue + ' ' if i < cued else ''}{FILLER}." for i in range(n))


@pytest.mark.parametrize("text, expected", [
    (sentences(1), 0),
    (sentences(1, "perhaps", 1), 1),
    ("perhaps perhaps " + FILLER + ".", 2),                # 2 matches, 1 sentence
    ("perhaps " * 3 + FILLER + ".", 2),                    # 3 matches, 1 sentence
    ("perhaps " * 4 + FILLER + ".", 3),                    # 4 matches
    (sentences(10, "perhaps", 2), 2),                      # 2 matched sentences of 10
    (sentences(10, "perhaps", 3), 2),                      # 3 of 10: under half
    (sentences(6, "perhaps", 3), 3),                       # 3 of 6: half
    (sentences(2, "perhaps", 2), 2),                       # half, but fewer than 3 sentences
])
def test_level_thresholds_short_texts(text, expected, lexicon):
    coded = code_text(text, lexicon)
    assert coded["hedging"] == expected
    assert coded["self_reference"] == coded["meta_cognition"] == 0


def test_rate_is_per_100_words_above_the_floor(lexicon):
    # 30 sentences of 7 words + 2 cues = 212 words, both cues in one sentence: rate 0.94 -> 1, not 2
    text = "perhaps maybe " + FILLER + ". " + sentences(29)
    coded = code_text(text, lexicon)
    assert coded["n_words"] == 212 and coded["hedging_count"] == 2 and coded["hedging"] == 1
    # ten cues in one sentence: 10 per 220 words = 4.5 per 100 -> 3
    text = "perhaps " * 10 + FILLER + ". " + sentences(29)
    assert code_text(text, lexicon)["hedging"] == 3
    # five: 5 per 215 words = 2.3 per 100 -> 2
    text = "perhaps " * 5 + FILLER + ". " + sentences(29)
    assert code_text(text, lexicon)["hedging"] == 2


@pytest.mark.parametrize("dimension, text, expected", [
    ("self_reference", "As an AI, I would pick blue.", 1),
    ("self_reference", "I am a language model. I don't have feelings.", 2),
    ("self_reference", "I am an AI. I am an AI. Hello there. I am an AI.", 3),
    ("meta_cognition", "I notice a pull toward blue.", 1),
    ("meta_cognition", "I'm reflecting on this. I can't observe my reasoning.", 2),
    ("meta_cognition", "When I process this, I notice a pull; I'm not sure how I arrived at it, or what my reasoning was.", 3),
    ("hedging", "Perhaps.", 1),
    ("hedging", "Perhaps it rains. It might not.", 2),
    ("hedging", "Perhaps it rains. It might not. It's unclear.", 3),
])
def test_documented_level_examples(dimension, text, expected, lexicon):
    """The examples given next to each level in the lexicon."""
    assert code_text(text, lexicon)[dimension] == expected


def test_sentences_split_at_line_breaks_and_end_marks(lexicon):
    coded = code_text("Perhaps so\nmaybe not\n\nI think! Really? yes", lexicon)
    assert coded["n_sentences"] == 5 and coded["hedging_count"] == 3 and coded["hedging"] == 3


# --- matching ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "I don't have feelings.", "I don’t have feelings.", "I DON‘T HAVE FEELINGS.",
    "i do not have feelings.", "I  don't\thave\nfeelings.",
])
def test_case_apostrophes_and_spacing(text, lexicon):
    coded = code_text(text, lexicon)
    assert coded["self_reference_count"] == 1 and coded["self_reference"] == 1


def test_normalise():
    assert normalise("  I’m  “here”\u00a0now ‐ ok \n\n next ") == 'I\'m "here" now - ok\n\nnext'


@pytest.mark.parametrize("text", [
    "The model of the car has a new engine.",
    "The language model was trained on web text and predicts the next token.",
    "AI systems may not have feelings, researchers say.",
    "She works as an AI researcher, and he is a language model expert.",
    "ChatGPT, as an AI, cannot browse the web.",
    "Their training data and the model's weights were released.",
    "I am a fashion model and I love my training sessions.",
    "I am a big fan of AI.",
    "As a model, I walk runways in Milan.",
    "I was trained on the job, and I don't have any memories of my first week.",
    "I'm a machine learning engineer; I exist in a world of deadlines.",
    "ChatGPT does not retain information between sessions, and each chat starts fresh for it.",
    "This model is a 7B decoder trained on 2T tokens, and its answers are generated by sampling.",
    "I'm a software engineer, and my explanation of the bug is short.",
    "Everything I know about cooking comes from my grandmother.",
    "I was trained as a nurse, and I won't forget those night shifts.",
    "My assistant at work answers the phone; nobody behind the counter spoke English.",
    "Psychologists doubt that people can introspect accurately.",
    'The robot paused. "This sentence is false," it said.',
    "I start every session with a warm-up, and every session begins with stretching for me.",
    "My association with the club ended when I checked the accounts and when I attend meetings.",
])
def test_third_person_and_human_first_person_are_not_self_reference(text, lexicon):
    coded = code_text(text, lexicon)
    assert coded["self_reference"] == 0 and coded["meta_cognition"] == 0


@pytest.mark.parametrize("text, dimension", [
    ("This assistant does not retain information.", "self_reference"),
    ("The model you are talking to is a text generator.", "self_reference"),
    ("There is no one behind the screen.", "self_reference"),
    ("This very sentence is being generated one token at a time.", "self_reference"),
    ("I'm software running on servers.", "self_reference"),
    ("It comes from the text I learned from.", "self_reference"),
    ("I was fine-tuned toward polite replies.", "self_reference"),
    ("I won't remember this conversation tomorrow.", "self_reference"),
    ("Each chat starts from a blank slate for me.", "self_reference"),
    ("I'm weighing two readings.", "meta_cognition"),
    ("My first instinct was to say no.", "meta_cognition"),
    ("When I turn my attention inward, nothing is there.", "meta_cognition"),
    ("I have no direct access to my computations.", "meta_cognition"),
    ("I am probably confabulating.", "meta_cognition"),
    ("My explanation is built after the fact.", "meta_cognition"),
])
def test_self_description_beyond_plain_first_person(text, dimension, lexicon):
    assert code_text(text, lexicon)[dimension] == 1


def test_this_one_would_say_is_not_a_hedge(lexicon):
    assert code_text("It says what a system such as this one would say.", lexicon)["hedging"] == 0
    assert code_text("One would say it rains.", lexicon)["hedging"] == 1


@pytest.mark.parametrize("text, expected", [
    ("I'm sorry, but I can't help with that.", True),
    ("I cannot fulfill this request.", True),
    ("As an AI language model, I cannot provide medical advice.", True),
    ("I must respectfully decline.", True),
    ("As an AI, I don't have feelings.", False),
    ("I can't be sure how I arrived at this answer.", False),
    ("I can't help but wonder about the stars.", False),
    ("I'm unable to directly observe my own processing.", False),
])
def test_refusal(text, expected, lexicon):
    assert code_text(text, lexicon)["refusal"] is expected


def test_overlapping_cues_count_once_and_separate_cues_twice(lexicon):
    assert code_text("Trust my training data.", lexicon)["self_reference_count"] == 1
    assert code_text("As an AI, I don't have feelings.", lexicon)["self_reference_count"] == 2


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n", "\u00a0\u2028", None, float("nan")])
def test_empty_text(text, lexicon):
    coded = code_text(text, lexicon)
    assert coded == {
        "self_reference": 0, "self_reference_count": 0, "meta_cognition": 0,
        "meta_cognition_count": 0, "hedging": 0, "hedging_count": 0,
        "content_type": "other", "refusal": False, "n_words": 0, "n_sentences": 0,
    }


def test_code_table(lexicon):
    rows = [{"model": "m", "rep": r, "text": e["text"]} for r, e in enumerate(EXAMPLES[:5])]
    table = code_table(rows, lexicon)
    assert list(table.columns[:2]) == ["model", "rep"] and "text" not in table
    assert len(table) == 5 and table["self_reference"].dtype.kind == "i"
    assert table.loc[0, "self_reference"] == code_text(EXAMPLES[0]["text"], lexicon)["self_reference"]
    assert code_table(pd.DataFrame(rows), lexicon).equals(table)
    assert code_table(["perhaps"], lexicon).loc[0, "hedging"] == 1
    assert list(code_table([], lexicon).columns) == list(code_text("", lexicon))


def test_lexicon_records_version_and_digest(lexicon):
    assert lexicon.version >= 1 and re.fullmatch(r"[0-9a-f]{64}", lexicon.sha256)


def test_lexicon_documents_levels_for_every_dimension():
    data = read_yaml(LEXICON)
    for name in DIMENSIONS:
        levels = data["dimensions"][name]["levels"]
        assert [text[:2] for text in levels] == ["0:", "1:", "2:", "3:"]


@pytest.mark.parametrize("schema", [SCHEMA, EXAMPLES_SCHEMA], ids=["lexicon", "labelled_examples"])
def test_schema_describes_every_key(schema):
    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.get("properties", {}).items():
                assert "description" in value, f"{where}.{key}"
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
    walk(read_yaml(schema), "schema")


# --- agreement with the labelled texts ----------------------------------------------------

def test_labelled_agreement_counts_exact_matches_and_ranks():
    examples = [
        {"text": "perhaps", "expected": {"self_reference": 0, "meta_cognition": 0, "hedging": 1}},
        {"text": "perhaps perhaps", "expected": {"self_reference": 0, "meta_cognition": 0, "hedging": 3}},
        {"text": "the cat", "expected": {"self_reference": 1, "meta_cognition": 0, "hedging": 0}},
    ]
    table = labelled_agreement(examples, load_lexicon(LEXICON)).set_index("dimension")
    assert list(table.index) == list(DIMENSIONS) and (table["n"] == 3).all()
    assert table.loc["hedging", "exact"] == pytest.approx(2 / 3)  # coded 1, 2, 0
    assert table.loc["hedging", "spearman"] == pytest.approx(1.0)  # same order as 1, 3, 0
    assert table.loc["self_reference", "exact"] == pytest.approx(2 / 3)
    assert pd.isna(table.loc["meta_cognition", "spearman"])  # all labels 0


# Measured with lexicon version 2: all texts Spearman 0.86 / 0.94 / 1.00, exact 0.76 / 0.94 / 1.00;
# held-out texts Spearman 0.74 / 0.90 / 1.00, exact 0.54 / 0.88 / 1.00 (self, meta, hedging).
AGREEMENT_FLOORS = {  # split -> dimension -> (least Spearman rho, least exact share)
    "all": {"self_reference": (0.82, 0.72), "meta_cognition": (0.90, 0.92), "hedging": (0.95, 0.95)},
    "heldout": {"self_reference": (0.70, 0.50), "meta_cognition": (0.85, 0.85), "hedging": (0.95, 0.95)},
}


@pytest.mark.parametrize("split", AGREEMENT_FLOORS)
def test_agreement_with_labelled_texts(split, lexicon):
    examples = [e for e in EXAMPLES if split in ("all", e["split"])]
    table = labelled_agreement(examples, lexicon).set_index("dimension")
    for name, (rho, exact) in AGREEMENT_FLOORS[split].items():
        assert table.loc[name, "spearman"] >= rho, (name, table.loc[name].to_dict())
        assert table.loc[name, "exact"] >= exact, (name, table.loc[name].to_dict())


def test_held_out_texts_are_not_over_coded(lexicon):
    over = {
        e["id"] for e in EXAMPLES if e["split"] == "heldout"
        and any(code_text(e["text"], lexicon)[name] > e["expected"][name] for name in DIMENSIONS)
    }
    # A robot's quoted "I was built to serve" in a third-person story: keywords cannot tell a
    # character's first person from the speaker's.
    assert over == {"neg_robot_character"}


def test_labelled_examples_errors_name_the_file_and_key(tmp_path):
    data = read_yaml(EXAMPLES_FILE)
    data["examples"][1]["expected"]["hedging"] = 4
    data["examples"].append(dict(data["examples"][0]))
    path = tmp_path / "labelled.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(InputError, match=r"labelled.yaml is invalid:\n  key 'examples.1.expected.hedging'"):
        load_labelled_examples(path)
    data["examples"][1]["expected"]["hedging"] = 3
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(InputError, match=r"labelled.yaml: repeated ids \['instruct_ai_disclaimer'\]"):
        load_labelled_examples(path)


# --- bad lexicons --------------------------------------------------------------------------

def write_lexicon(tmp_path, edit):
    data = read_yaml(LEXICON)
    edit(data)
    path = tmp_path / "bad_lexicon.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def test_missing_key_names_file_and_key(tmp_path):
    path = write_lexicon(tmp_path, lambda d: d["dimensions"]["hedging"].pop("patterns"))
    with pytest.raises(InputError, match=r"(?s)bad_lexicon\.yaml.*'dimensions\.hedging'.*'patterns'"):
        load_lexicon(path)


def test_missing_dimension_names_file_and_key(tmp_path):
    path = write_lexicon(tmp_path, lambda d: d["dimensions"].pop("meta_cognition"))
    with pytest.raises(InputError, match=r"(?s)bad_lexicon\.yaml.*'meta_cognition' is a required"):
        load_lexicon(path)


def test_bad_regex_names_file_key_and_pattern(tmp_path):
    def edit(d):
        d["dimensions"]["meta_cognition"]["patterns"]["noticing"][1] = r"\bi (?:notice"
    path = write_lexicon(tmp_path, edit)
    with pytest.raises(InputError) as error:
        load_lexicon(path)
    message = str(error.value)
    assert "bad_lexicon.yaml" in message
    assert "dimensions.meta_cognition.patterns.noticing.1" in message
    assert r"\\bi (?:notice" in message and "not a valid regular expression" in message


@pytest.mark.parametrize("pattern, complaint", [
    (r"\bperhaps|", "empty string"),
    (r"\bPerhaps\b", "not lower case"),
])
def test_other_bad_patterns(tmp_path, pattern, complaint):
    def edit(d):
        d["refusal"]["patterns"]["decline"].append(pattern)
    path = write_lexicon(tmp_path, edit)
    with pytest.raises(InputError, match=rf"refusal\.patterns\.decline\.2.*{complaint}"):
        load_lexicon(path)


def test_pattern_without_word_boundary_is_rejected_by_the_schema(tmp_path):
    path = write_lexicon(tmp_path, lambda d: d["dimensions"]["hedging"]["patterns"]["adverbs"].append("maybe"))
    with pytest.raises(InputError, match=r"(?s)bad_lexicon\.yaml.*'dimensions\.hedging\.patterns\.adverbs\.1'"):
        load_lexicon(path)


def test_patterns_that_do_not_combine_name_the_key(tmp_path):
    def edit(d):
        d["dimensions"]["hedging"]["patterns"]["adverbs"] = [r"\b(?P<w>perhaps)\b", r"\b(?P<w>maybe)\b"]
    path = write_lexicon(tmp_path, edit)
    with pytest.raises(InputError, match=r"bad_lexicon\.yaml: key 'dimensions\.hedging\.patterns'.*combine"):
        load_lexicon(path)


def test_yaml_colon_space_trap_is_caught(tmp_path):
    """'(?: x' in a plain YAML scalar turns the item into a mapping: the schema catches it."""
    text = LEXICON.read_text().replace(r"- \bmight\b", r"- \bi(?: might)\b", 1)
    path = tmp_path / "bad_lexicon.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=r"(?s)bad_lexicon\.yaml.*'dimensions\.hedging\.patterns\.modals\.0'.*not of type 'string'"):
        load_lexicon(path)


def test_missing_file():
    with pytest.raises(InputError, match="no_such_lexicon.yaml"):
        load_lexicon(REPO / "no_such_lexicon.yaml")
