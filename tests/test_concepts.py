import copy

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, TINY_GEMMA3, TINY_LLAMA, load_tiny
from llm_introspection import __version__
from llm_introspection.injection.concepts import (
    concept_like_random_vectors, concept_prompt_ids, contrastive_vectors, last_token_activations, load_vectors,
    matched_random_vectors, mean_subtraction_vectors, mean_token_activations, save_vectors, sentence_ids,
)
from llm_introspection.injection.texts import load_concept_words, load_contrastive_pairs, load_neutral_sentences
from llm_introspection.errors import InputError
from llm_introspection.prompts import TEMPLATE_DATE
from llm_introspection.steering import Positions, steer

CONCEPTS = REPO / "resources/concepts/concepts.yaml"
PAIRS = REPO / "resources/concepts/contrastive_pairs.yaml"
SENTENCES = REPO / "resources/concepts/neutral_sentences.yaml"
ARCHITECTURES = {"llama": TINY_LLAMA, "gemma3": TINY_GEMMA3}
INDICES = [0, 2, 4]


@pytest.fixture(scope="module", params=ARCHITECTURES, ids=list(ARCHITECTURES))
def tiny(request, tokenizer_dir, tmp_path_factory):
    return load_tiny(tokenizer_dir, ARCHITECTURES[request.param], tmp_path_factory.mktemp(request.param))


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def base_requests(words, tokenizer):
    """Token ids of "Tell me about {word}" as a base model sees it: the word's token comes last."""
    return concept_prompt_ids(words, "Tell me about {word}", tokenizer, "base", "native", "m")


def planted(model, token_id, direction):
    """A copy of the model whose embedding row `token_id` is moved by `direction`."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.get_input_embeddings().weight[token_id] += direction
    return copied


# --- resources ----------------------------------------------------------------------------------

def test_resources_validate_with_the_documented_sizes():
    words = load_concept_words(CONCEPTS)
    assert len(words.concepts) == 50 and len(words.baseline) == 100
    assert not {w.lower() for w in words.concepts} & {w.lower() for w in words.baseline}
    assert {"Dust", "Xylophones", "Dirigibles", "Silver"} <= set(words.concepts)
    assert words.template == "Tell me about {word}"
    pairs = load_contrastive_pairs(PAIRS)
    assert len(pairs) == 50 and len({p.id for p in pairs}) == 50
    assert all(p.specific != p.generic for p in pairs)
    sentences = load_neutral_sentences(SENTENCES)
    assert len(sentences) == 100 and len({s.lower() for s in sentences}) == 100


def test_overlapping_words_and_bad_templates_are_named(tmp_path):
    data = yaml.safe_load(CONCEPTS.read_text())
    data["baseline_words"].append("snow")
    path = tmp_path / "concepts.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=rf"{path}: keys 'concepts' and 'baseline_words' together holds 'snow'"):
        load_concept_words(path)
    data = yaml.safe_load(CONCEPTS.read_text())
    data["template"] = "Tell me about it"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=r"key 'template'"):
        load_concept_words(path)


def test_duplicate_pair_ids_are_named(tmp_path):
    data = yaml.safe_load(PAIRS.read_text())
    data["pairs"][1]["id"] = data["pairs"][0]["id"]
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=r"pairs\.yaml: key 'pairs' \(ids\) holds 'violinist' twice"):
        load_contrastive_pairs(path)


def test_concept_prompts_use_the_chat_template_for_instruct_models(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    instruct = concept_prompt_ids(["Snow"], "Tell me about {word}", tokenizer, "instruct", "native", "m")[0]
    base = concept_prompt_ids(["Snow"], "Tell me about {word}", tokenizer, "base", "native", "m")[0]
    assert tokenizer.decode(base) == "Tell me about snow"
    text = tokenizer.decode(instruct)
    assert "<|im_start|>user" in text and "Tell me about snow" in text and text.endswith("assistant\n")


# --- vectors ------------------------------------------------------------------------------------

def test_mean_subtraction_recovers_a_planted_direction(tiny):
    """The word's last token carries +d in the embeddings: its vector is d (exactly at the embedding
    output, up to what the blocks add further up)."""
    model, tokenizer = tiny
    concept_ids = base_requests(["Dust", "Snow", "Milk"], tokenizer)
    baseline_ids = base_requests(["Desks", "Jackets", "Chairs", "Clouds"], tokenizer)
    before, _ = mean_subtraction_vectors(model, INDICES, concept_ids, baseline_ids, batch_size=2)
    direction = 1000 * torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    scale = getattr(model.get_input_embeddings(), "scalar_embed_scale", 1.0)  # Gemma scales embeddings
    snow = planted(model, concept_ids[1][-1], direction)
    after, _ = mean_subtraction_vectors(snow, INDICES, concept_ids, baseline_ids, batch_size=2)
    assert after.shape == (3, 3, model.config.hidden_size) and after.dtype == np.float32
    np.testing.assert_allclose(after[1, 0] - before[1, 0], scale * direction.numpy(), rtol=1e-4, atol=1e-3)
    for k in range(len(INDICES)):
        assert cosine(after[1, k], direction) > 0.99
    np.testing.assert_allclose(after[[0, 2], 0], before[[0, 2], 0], atol=1e-5)


def test_mean_subtraction_cancels_what_every_prompt_shares(tiny):
    model, tokenizer = tiny
    concept_ids = base_requests(["Oceans", "Bread"], tokenizer)
    baseline_ids = base_requests(["Desks", "Jackets", "Chairs"], tokenizer)
    plain, plain_baseline = mean_subtraction_vectors(model, [2], concept_ids, baseline_ids, batch_size=4)
    with steer(model, 2, torch.ones(model.config.hidden_size), 50.0, Positions.onward(0)):
        shifted, shifted_baseline = mean_subtraction_vectors(model, [2], concept_ids, baseline_ids, batch_size=4)
    np.testing.assert_allclose(shifted, plain, atol=1e-4)
    np.testing.assert_allclose(shifted_baseline, plain_baseline, atol=1e-4)
    activations = last_token_activations(model, [2], baseline_ids, batch_size=4)
    np.testing.assert_allclose(plain_baseline, activations - activations.mean(axis=0), atol=1e-5)


def test_last_token_activations_ignore_left_padding(tiny):
    model, tokenizer = tiny
    prompts = sentence_ids(["A much longer sentence than the other one.", "Short."], tokenizer)
    batched = last_token_activations(model, INDICES, prompts, batch_size=2)
    alone = np.concatenate([last_token_activations(model, INDICES, [p], batch_size=1) for p in prompts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_contrastive_vectors_average_tokens_without_the_attention_sink(tiny):
    model, tokenizer = tiny
    pair = load_contrastive_pairs(PAIRS)[0]
    specific, generic = sentence_ids([pair.specific], tokenizer), sentence_ids([pair.generic], tokenizer)
    before = contrastive_vectors(model, INDICES, specific, generic, batch_size=1)
    # planting on position 0 (a token both sentences start with) changes nothing at the embeddings
    assert specific[0][0] == generic[0][0] and specific[0].count(specific[0][0]) == 1
    direction = 1000 * torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    sink = contrastive_vectors(planted(model, specific[0][0], direction), INDICES, specific, generic, batch_size=1)
    np.testing.assert_allclose(sink[:, 0], before[:, 0], atol=1e-5)
    # planting on a token only the specific sentence holds makes the vector point along it
    token = specific[0][1]
    assert token not in generic[0]
    after = contrastive_vectors(planted(model, token, direction), INDICES, specific, generic, batch_size=1)
    for k in range(len(INDICES)):
        assert cosine(after[0, k], direction) > 0.99
    reference = mean_token_activations(model, [0], specific, 1) - mean_token_activations(model, [0], generic, 1)
    np.testing.assert_allclose(before[0, 0], reference[0, 0], atol=1e-6)


def test_mean_token_activations_need_more_than_the_sink(tiny):
    model, _ = tiny
    with pytest.raises(InputError, match="at least 2 tokens"):
        mean_token_activations(model, [1], [[5, 6], [7]], batch_size=2)


def test_random_vectors_match_norms_and_are_reproducible():
    vectors = np.random.default_rng(0).standard_normal((5, 3, 16)) * np.arange(1, 6)[:, None, None]
    random = matched_random_vectors(vectors, seed=7)
    assert random.shape == vectors.shape and random.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(random, axis=-1), np.linalg.norm(vectors, axis=-1), rtol=1e-5)
    np.testing.assert_array_equal(random, matched_random_vectors(vectors, seed=7))
    assert not np.allclose(random, matched_random_vectors(vectors, seed=8))
    assert max(abs(cosine(r, v)) for r, v in zip(random.reshape(-1, 16), vectors.reshape(-1, 16))) < 0.99


def test_concept_like_random_vectors_have_the_given_norms_and_live_in_the_span_of_word_vectors():
    """Draws from the baseline words' covariance, not an isotropic Gaussian: with word vectors in a
    5-dimensional subspace of R^32, every random vector lies in it."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((32, 5)))[0]
    baseline = rng.standard_normal((12, 5)) @ basis.T
    baseline -= baseline.mean(axis=0)
    norms = [1.0, 7.5, 30.0]
    random = concept_like_random_vectors(baseline, norms, seed=[3, 1])
    assert random.shape == (3, 32) and random.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(random, axis=-1), norms, rtol=1e-5)
    np.testing.assert_allclose(random - random @ basis @ basis.T, 0, atol=1e-4)
    np.testing.assert_array_equal(random, concept_like_random_vectors(baseline, norms, seed=[3, 1]))
    assert not np.allclose(random, concept_like_random_vectors(baseline, norms, seed=[3, 2]))
    isotropic = matched_random_vectors(random, seed=0)
    assert np.linalg.norm(isotropic - isotropic @ basis @ basis.T, axis=-1).min() > 0.5 * min(norms)


# --- files --------------------------------------------------------------------------------------

def test_vectors_round_trip_with_provenance(tmp_path):
    vectors = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    path = tmp_path / "vectors" / "m" / "layer_02.h5"
    record = {"name": "m", "revision": "random-seed-0", "n_layers": 4}
    save_vectors(
        path, vectors, ["Dust", "Snow", "Milk"], model=record, layer=2, method="random", seed=42,
        baseline_words=["Desks", "Chairs"], template="Tell me about {word}",
    )
    assert [p.name for p in path.parent.iterdir()] == ["layer_02.h5"]
    loaded = load_vectors(path)
    np.testing.assert_array_equal(loaded.vectors, vectors)
    assert loaded.names == ("Dust", "Snow", "Milk")
    np.testing.assert_array_equal(loaded.vector("Snow"), vectors[1])
    attrs = loaded.attrs
    assert attrs["model"] == record and attrs["layer"] == 2 and attrs["method"] == "random" and attrs["seed"] == 42
    assert attrs["baseline_words"] == ["Desks", "Chairs"] and attrs["template"] == "Tell me about {word}"
    assert attrs["versions"]["llm_introspection"] == __version__ and attrs["versions"]["torch"]
    assert loaded.baseline is None
    save_vectors(path, vectors, ["a", "b", "c"], model="m", layer=0, method="contrastive")
    assert load_vectors(path).attrs["seed"] is None
    save_vectors(path, vectors, ["a", "b", "c"], model="m", layer=0, method="mean_subtraction", baseline=vectors[:2])
    np.testing.assert_array_equal(load_vectors(path).baseline, vectors[:2])


def test_bad_vector_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="one of"):
        save_vectors(tmp_path / "v.h5", np.zeros((1, 4)), ["a"], model="m", layer=1, method="pca")
    with pytest.raises(ValueError, match="one row per name"):
        save_vectors(tmp_path / "v.h5", np.zeros((2, 4)), ["a"], model="m", layer=1, method="random")
    (tmp_path / "not.h5").write_text("plain text")
    with pytest.raises(InputError, match="not.h5 is unreadable"):
        load_vectors(tmp_path / "not.h5")


# --- the concept_vectors job ----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["mean_subtraction", "contrastive"])
def test_all_layers_in_one_pass_write_the_files_of_one_layer_at_a_time(tokenizer_dir, tmp_path, method):
    """run_concept_vectors captures every layer in the same passes; each file equals the file of a
    run with its layer alone, byte for byte (vectors, baseline vectors, mean norm, provenance)."""
    from conftest import tiny_spec
    from llm_introspection.injection.jobs import run_concept_vectors
    from llm_introspection.models import prepare_model
    from llm_introspection.storage import write_json

    manifest = prepare_model("tiny", tiny_spec(tokenizer_dir, TINY_LLAMA, "instruct"), tmp_path / "model")
    write_json(tmp_path / "manifest.json", manifest)
    settings = {"vector_method": method, "n_concepts": 3, "batch_size": 4}
    resources = {"concepts": str(CONCEPTS), "contrastive_pairs": str(PAIRS), "neutral_sentences": str(SENTENCES)}
    runtime = {"device": "cpu", "dtype": "float32"}
    fractions = [0.25, 0.5, 1.0]
    together = [tmp_path / f"all/layer{f}.h5" for f in fractions]
    date = TEMPLATE_DATE if method == "mean_subtraction" else None
    run_concept_vectors(tmp_path / "manifest.json", fractions, together, settings, resources, runtime, 2,
                        template_date=date)
    for fraction, path in zip(fractions, together):
        alone = tmp_path / f"alone/layer{fraction}.h5"
        run_concept_vectors(tmp_path / "manifest.json", [fraction], [alone], settings, resources, runtime, 2,
                            template_date=date)
        a, b = load_vectors(path), load_vectors(alone)
        assert a.attrs == b.attrs and a.attrs["layer_fraction"] == fraction
        np.testing.assert_array_equal(a.vectors, b.vectors)
        assert (a.baseline is None) == (method == "contrastive")
        if a.baseline is not None:
            np.testing.assert_array_equal(a.baseline, b.baseline)
        assert path.read_bytes() == alone.read_bytes()
    assert len({load_vectors(p).attrs["layer"] for p in together}) == 3
    assert len({load_vectors(p).attrs["mean_norm"] for p in together}) == 3
