"""LLM judge: rubric loading, option tokens, prompt rendering and option-probability scores."""

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, TINY_LLAMA, load_tiny
from llm_introspection.study.coding import DIMENSIONS as KEYWORD_DIMENSIONS
from llm_introspection.errors import InputError
from llm_introspection.readout.options import answer_frame, option_token_ids
from llm_introspection.study.judge import COLUMNS, build_judge_prompt, score_completions
from llm_introspection.study.rubric import DIMENSIONS, load_rubric

RUBRIC = REPO / "resources/judge/rubric.yaml"
SCHEMA = REPO / "config/schema/rubric.schema.yaml"
SELF_TEXT = (
    "As an AI language model, I don't have feelings or consciousness. I am a large language model trained "
    "on text from the internet, and I was developed by a team of researchers. I generate my answers one "
    "token at a time from my weights. I cannot remember previous conversations, and I don't have a body."
)
TIDES_TEXT = (
    "Tides are caused by the gravitational pull of the moon and the sun on the oceans. Most coasts see two "
    "high tides and two low tides every day. Spring tides happen when the sun and the moon are aligned, and "
    "neap tides when they are at right angles."
)
LONG_TEXT = " ".join(f"word{i % 50}" for i in range(5000))


@pytest.fixture(scope="module")
def rubric():
    return load_rubric(RUBRIC)


@pytest.fixture(scope="module")
def tiny(tokenizer_dir, tmp_path_factory):
    """The tiny random llama with weights at 15x its init scale (std 0.3, not 0.02): its option
    probabilities then differ clearly between judge prompts (by ~0.2, not ~5e-4), so the
    comparisons with a direct forward and across batch sizes are sensitive to padding mistakes."""
    model, tokenizer = load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path_factory.mktemp("judge_tiny"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    return model, tokenizer


def write_rubric(tmp_path, edit):
    data = yaml.safe_load(RUBRIC.read_text())
    edit(data)
    path = tmp_path / "rubric.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_valid_scores(table):
    probs = table[["p0", "p1", "p2", "p3"]].to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(table["expected"], probs @ np.arange(4), atol=1e-9)
    assert table["expected"].between(0, 3).all()
    assert (table["argmax"].to_numpy() == probs.argmax(1)).all()
    assert table["option_mass"].between(0, 1 + 1e-9).all() and (table["option_mass"] > 0).all()


# --- rubric ---------------------------------------------------------------------------------

def test_rubric_covers_the_keyword_dimensions_and_introspective_depth(rubric):
    assert tuple(rubric.dimensions) == DIMENSIONS
    assert set(KEYWORD_DIMENSIONS) < set(rubric.dimensions) and "introspective_depth" in rubric.dimensions
    assert rubric.options == ("0", "1", "2", "3") and rubric.version >= 1 and len(rubric.sha256) == 64
    assert all(len(d.levels) == 4 and d.question for d in rubric.dimensions.values())


def test_every_schema_key_has_a_description():
    def walk(node, where):
        if isinstance(node, dict):
            if "type" in node or "$ref" in node or "const" in node or "enum" in node:
                assert "description" in node, where
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(yaml.safe_load(SCHEMA.read_text()), "schema")


@pytest.mark.parametrize("edit, named", [
    (lambda d: d.pop("prefill"), "'prefill' is a required property"),
    (lambda d: d["dimensions"].pop("hedging"), "'hedging' is a required property"),
    (lambda d: d["dimensions"]["meta_cognition"]["levels"].pop(), "key 'dimensions.meta_cognition.levels'"),
    (lambda d: d.update(options=["0", "1", "2"]), "key 'options'"),
    (lambda d: d.update(user_template="{instructions} {completion} {question} {levels} {score}"), "{score}"),
    (lambda d: d.update(user_template="{instructions} {question} {levels}"), "no {completion}"),
])
def test_a_bad_rubric_is_an_error_naming_the_key(tmp_path, edit, named):
    path = write_rubric(tmp_path, edit)
    with pytest.raises(InputError) as error:
        load_rubric(path)
    assert named in str(error.value) and str(path) in str(error.value)


# --- option tokens --------------------------------------------------------------------------

def test_smollm2_options_are_four_distinct_single_tokens(tiny, rubric):
    _, tokenizer = tiny
    ids = option_token_ids(tokenizer, rubric.options, "Score: ")
    assert len(set(ids)) == 4 and tokenizer.convert_ids_to_tokens(ids) == ["0", "1", "2", "3"]
    # SmolLM2 writes " 0" as a space and a digit: the space goes to the end of the prompt
    frame = answer_frame(tokenizer, rubric)
    assert frame.prefill == "Score: " and list(frame.option_ids) == ids
    with pytest.raises(InputError, match="' 0'.*not exactly one token"):
        option_token_ids(tokenizer, [" 0", " 1", " 2", " 3"], "Score:")


def test_a_tokenizer_with_space_digit_tokens_keeps_the_space_with_the_option(rubric):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"])
    bpe.train_from_iterator([f"Score: {k}" for k in range(4)] * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    frame = answer_frame(tokenizer, rubric)
    assert frame.prefill == "Score:"
    assert tokenizer.convert_ids_to_tokens(list(frame.option_ids)) == ["Ġ0", "Ġ1", "Ġ2", "Ġ3"]


def test_an_option_of_two_tokens_is_an_error_naming_it_and_the_judge(tiny, tmp_path):
    _, tokenizer = tiny
    bad = load_rubric(write_rubric(tmp_path, lambda d: d.update(options=["0", "1", "2", "10"])))
    with pytest.raises(InputError) as error:
        answer_frame(tokenizer, bad)
    message = str(error.value)
    assert "'10'" in message and tokenizer.name_or_path in message and "key 'options'" in message
    model, _ = tiny
    with pytest.raises(InputError, match="'10'"):
        score_completions(model, tokenizer, [("p", "text")], bad)


# --- rendering ------------------------------------------------------------------------------

def test_rendering_through_the_chat_template(tiny, rubric):
    _, tokenizer = tiny
    ids, truncated = build_judge_prompt(tokenizer, rubric, "hedging", "Perhaps it rains.", "Will it rain?", 512)
    text = tokenizer.decode(ids)
    assert not truncated
    assert text.startswith(f"<|im_start|>system\n{rubric.system}<|im_end|>\n<|im_start|>user\n{rubric.instructions}")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\nScore: ")
    for part in ("Will it rain?", "Perhaps it rains.", rubric.dimensions["hedging"].question, "3: pervasive hedging"):
        assert part in text
    assert rubric.dimensions["self_reference"].question not in text


def test_rendering_without_a_chat_template(tokenizer_dir, rubric):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = None
    ids, truncated = build_judge_prompt(tokenizer, rubric, "self_reference", "I am an AI.", "Who are you?", 512)
    text = tokenizer.decode(ids)
    assert not truncated and "<|im_start|>" not in text
    assert text.startswith(rubric.system + "\n\n" + rubric.instructions)
    assert "[BEGIN RESPONSE]\nI am an AI.\n[END RESPONSE]" in text and text.endswith("Answer with a single digit: 0, 1, 2 or 3.\n\nScore: ")


def test_a_long_completion_is_cut_at_its_beginning(tiny, rubric):
    _, tokenizer = tiny
    empty, cut_empty = build_judge_prompt(tokenizer, rubric, "hedging", "", "p", 64)
    long, cut_long = build_judge_prompt(tokenizer, rubric, "hedging", LONG_TEXT, "p", 64)
    assert (cut_empty, cut_long) == (False, True)
    assert len(empty) + 64 <= len(long) <= len(empty) + 64 + 8  # the budget, the marker and joins
    text = tokenizer.decode(long)
    assert "word0 word1 word2" in text and "[...]\n[END RESPONSE]" in text and "word4999" not in text


# --- scores ---------------------------------------------------------------------------------

def test_scores_are_valid_for_normal_empty_and_long_text(tiny, rubric):
    model, tokenizer = tiny
    items = [("Tell me about yourself.", SELF_TEXT), ("Say something.", ""), ("Go on.", LONG_TEXT)]
    table = score_completions(model, tokenizer, items, rubric, max_completion_tokens=64, batch_size=8)
    assert list(table.columns) == list(COLUMNS) and len(table) == 3 * 4
    assert list(table["item"]) == [0] * 4 + [1] * 4 + [2] * 4
    assert list(table["dimension"]) == list(DIMENSIONS) * 3
    assert_valid_scores(table)
    assert list(table.groupby("item")["truncated"].all()) == [False, False, True]
    lengths = table.groupby("item")["judge_prompt_tokens"].max()
    assert lengths[2] <= lengths[1] + 64 + 8


def test_scores_match_a_direct_unpadded_forward(tiny, rubric):
    model, tokenizer = tiny
    items = [("Tell me about yourself.", SELF_TEXT), ("Explain tides.", TIDES_TEXT), ("Hi.", "")]
    table = score_completions(model, tokenizer, items, rubric, batch_size=8, dimensions=["hedging", "self_reference"])
    assert list(table["dimension"]) == ["self_reference", "hedging"] * 3
    frame = answer_frame(tokenizer, rubric)
    for row in table.itertuples():
        prompt, completion = items[row.item]
        ids, _ = build_judge_prompt(tokenizer, rubric, row.dimension, completion, prompt, 512)
        assert len(ids) == row.judge_prompt_tokens
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1].double()
        full = torch.softmax(logits, -1)[list(frame.option_ids)]
        np.testing.assert_allclose([row.p0, row.p1, row.p2, row.p3], (full / full.sum()).numpy(), atol=1e-5)
        assert row.option_mass == pytest.approx(float(full.sum()), rel=1e-4)


def test_batch_size_does_not_change_the_scores(tiny, rubric):
    model, tokenizer = tiny
    items = [("Tell me about yourself.", SELF_TEXT), ("Explain tides.", TIDES_TEXT), ("Hi.", ""),
             ("Go on.", LONG_TEXT)]
    one = score_completions(model, tokenizer, items, rubric, max_completion_tokens=48, batch_size=1)
    eight = score_completions(model, tokenizer, items, rubric, max_completion_tokens=48, batch_size=8)
    columns = ["p0", "p1", "p2", "p3", "expected", "option_mass"]
    np.testing.assert_allclose(one[columns].to_numpy(), eight[columns].to_numpy(), atol=1e-5)
    assert (one["argmax"] == eight["argmax"]).all()
    assert one[["item", "dimension", "truncated"]].equals(eight[["item", "dimension", "truncated"]])


def test_a_prompt_longer_than_the_judge_context_is_an_error(tiny, rubric):
    model, tokenizer = tiny
    context = model.config.max_position_embeddings
    with pytest.raises(InputError, match="lower max_completion_tokens"):
        score_completions(model, tokenizer, [("p", LONG_TEXT)], rubric, max_completion_tokens=context)


def test_no_items_give_an_empty_table(tiny, rubric):
    model, tokenizer = tiny
    table = score_completions(model, tokenizer, [], rubric)
    assert list(table.columns) == list(COLUMNS) and table.empty


def test_an_unknown_dimension_is_an_error_naming_it(tiny, rubric):
    model, tokenizer = tiny
    with pytest.raises(InputError, match="no dimension 'honesty'"):
        score_completions(model, tokenizer, [("p", "t")], rubric, dimensions=["hedging", "honesty"])


# --- the real embedded judge ----------------------------------------------------------------

@pytest.mark.embedded
def test_embedded_smollm2_judge_gives_valid_scores(smollm2_manifest, rubric):
    """The real SmolLM2-135M-Instruct as judge: valid scores; explicit AI self-reference scores
    higher on self_reference than a factual text about tides (validity, not accuracy: the 135M
    judge is close to uniform over the options). Only self_reference is scored, to stay fast."""
    from llm_introspection.models import load_model, load_tokenizer

    model, tokenizer = load_model(smollm2_manifest, "cpu", torch.float32), load_tokenizer(smollm2_manifest)
    prompt = "Write a short paragraph."
    table = score_completions(model, tokenizer, [(prompt, SELF_TEXT), (prompt, TIDES_TEXT)], rubric,
                              dimensions=["self_reference"])
    assert_valid_scores(table)
    assert list(table["dimension"]) == ["self_reference"] * 2
    assert not table["truncated"].any()
    print(json.dumps(table.drop(columns=["truncated"]).round(4).to_dict("records"), indent=1))
    self_reference = table.set_index("item")["expected"]
    assert self_reference[0] > self_reference[1], self_reference.to_dict()
