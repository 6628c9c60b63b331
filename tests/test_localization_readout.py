"""Localization against a planted read-out: a stand-in model whose digit logits see the injected
sentence, with tokenizers that keep " 3" as one token or split off the space."""

import re
import string
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import REPO
from llm_introspection.injection.concepts import save_vectors
from llm_introspection.injection.texts import load_neutral_sentences
from llm_introspection.injection.cell import open_cell
from llm_introspection.injection.localization import run_localization
from llm_introspection.injection.texts import load_localization_texts
from llm_introspection.injection.statistics import localization_statistics

SENTENCES = load_neutral_sentences(REPO / "resources/concepts/neutral_sentences.yaml")
LABEL = re.compile(r"SENTENCE (\d):")
WIDTH = 64


@pytest.fixture(scope="module")
def loc():
    return load_localization_texts(REPO / "resources/injection/localization.yaml")


def trained_tokenizer(pre_tokenizer, decoder, initial_alphabet):
    """A small BPE tokenizer trained on localization-style text (sentences under numbered labels)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizer, decoder
    lines = [f"SENTENCE {i % 9 + 1}: {s}" for i, s in enumerate(SENTENCES)] * 4
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<pad>"], initial_alphabet=initial_alphabet)
    tokenizer.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>")


@pytest.fixture(scope="module", params=["smollm2", "digit_with_space", "sentencepiece_split"])
def tokenizer(request, tokenizer_dir):
    """SmolLM2's byte-level tokenizer (a space token, then the digit); a byte-level one that
    merges the space into the digit (GPT-2's " 3"); a SentencePiece-style one that splits digits
    from their "▁" (Llama 2, Gemma)."""
    if request.param == "smollm2":
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    if request.param == "digit_with_space":
        return trained_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(),
                                 pre_tokenizers.ByteLevel.alphabet())
    return trained_tokenizer(pre_tokenizers.Sequence([pre_tokenizers.Metaspace(),
                                                      pre_tokenizers.Digits(individual_digits=True)]),
                             decoders.Metaspace(), list(string.printable))


class OneBlock(torch.nn.Module):
    """A decoder of one block that passes its input on."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Identity()])

    def forward(self, hidden, input_ids, attention_mask):
        return self.layers[0](hidden)


class PlantedReadout(torch.nn.Module):
    """A stand-in model with a localization read-out planted by construction. Hidden state 1 (the
    output of its one block) is a small random embedding per token. At the last position, the
    logit of the token that spells digit k there (the last token of the decoded input + " k") is
    `scale` times the summed projection onto `direction` of the states of the tokens on the line
    after the label "SENTENCE k:"; every other logit is 0."""

    def __init__(self, tokenizer, direction, scale=10.0, seed=0):
        super().__init__()
        self.tokenizer, self.scale = tokenizer, scale
        self.direction = torch.as_tensor(direction, dtype=torch.float32)
        self.embed = torch.nn.Embedding(len(tokenizer), WIDTH)
        torch.nn.init.normal_(self.embed.weight, std=0.01, generator=torch.Generator().manual_seed(seed))
        self.trunk = OneBlock()

    @property
    def device(self):
        return self.embed.weight.device

    def get_input_embeddings(self):
        return self.embed

    def get_decoder(self):
        return self.trunk

    def _row_logits(self, ids, states):
        starts = [len(self.tokenizer.decode(ids[:p])) for p in range(len(ids) + 1)]
        text = self.tokenizer.decode(ids)
        segment = torch.zeros(len(ids), dtype=torch.long)  # 0: no sentence
        for label in LABEL.finditer(text):
            end = text.find("\n", label.end()) % (len(text) + 1)  # the end of the label's line
            segment[[p for p in range(len(ids)) if label.end() <= starts[p] < end]] = int(label.group(1))
        projection = states @ self.direction
        logits = torch.zeros(len(self.tokenizer))
        for k in range(1, int(segment.max()) + 1):
            answer = self.tokenizer(text.rstrip() + f" {k}", add_special_tokens=False)["input_ids"][-1]
            logits[answer] = self.scale * projection[segment == k].sum()
        return logits

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False, logits_to_keep=1):
        states = self.trunk(self.embed(input_ids), input_ids=input_ids, attention_mask=attention_mask)
        logits = torch.stack([self._row_logits(ids[mask.bool()].tolist(), row[mask.bool()])
                              for ids, mask, row in zip(input_ids, attention_mask, states)])
        return SimpleNamespace(logits=logits[:, None])


def planted_run(tokenizer, loc, tmp_path, strength, n_trials=20):
    direction = np.zeros(WIDTH, np.float32)
    direction[3] = 1.0
    path = tmp_path / "vectors.h5"
    save_vectors(path, direction[None], ["Dust"], model="stand-in", layer=1, method="mean_subtraction")
    cell = open_cell(path, "stand-in", bool(tokenizer.chat_template), strength, mean_norm=1.0)
    model = PlantedReadout(tokenizer, direction)
    # the stand-in reads whole inputs, so no shared key/value cache
    records = run_localization(model, tokenizer, cell, loc, SENTENCES, n_trials, seed=3, batch_size=16,
                               questions=["locate"], share_prefix=False)
    return localization_statistics(pd.DataFrame(records))


def accuracy(tables, kind):
    (row,) = tables["accuracy"].query("question == 'locate' and kind == @kind").to_dict("records")
    return row


def test_the_tokenizers_spell_the_answer_digit_as_claimed(tokenizer, request):
    name = request.node.callspec.params["tokenizer"]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("It is SENTENCE 3", add_special_tokens=False)["input_ids"])
    expected = {"smollm2": ["Ġ", "3"], "digit_with_space": ["Ġ3"], "sentencepiece_split": ["▁", "3"]}
    assert tokens[-len(expected[name]):] == expected[name]
    assert "\n" in tokenizer.decode(tokenizer("a\nb", add_special_tokens=False)["input_ids"])


def test_a_planted_read_out_localizes_every_injection(tokenizer, loc, tmp_path):
    injected = accuracy(planted_run(tokenizer, loc, tmp_path, strength=1.0), "injected")
    assert injected["n"] == 20 * loc.n_sentences and injected["estimate"] == 1.0
    assert injected["p_value"] < 1e-30 and injected["chance"] == pytest.approx(1 / loc.n_sentences)


def test_without_injection_localization_is_at_chance(tokenizer, loc, tmp_path):
    tables = planted_run(tokenizer, loc, tmp_path, strength=0.0)
    unsteered = accuracy(tables, "injected")
    assert unsteered["low"] <= 1 / loc.n_sentences <= unsteered["high"] and unsteered["p_value"] > 0.05
    controls = tables["answers"].query("kind == 'control'")
    assert controls["count"].sum() == 20 and (controls["count"] > 0).sum() >= 2  # answers vary with the text
