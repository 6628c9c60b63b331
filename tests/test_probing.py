"""Probes and embeddings on planted and null data, pooling on hand-written activation files."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold, cross_val_score

from llm_introspection.errors import InputError
from llm_introspection.records import weight_noise_name
from llm_introspection.study.identity import identity_probes, pair_analysis
from llm_introspection.study.layers import held_out_layer
from llm_introspection.study.probe_summary import identity_summary
from llm_introspection.study.probing import (
    activation_layouts, embed, grouped_splits, make_probe, pooled_activations, probe, shuffled_labels,
)
from llm_introspection.study.tasks import NO_PAIR, TABLE_COLUMNS, probe_tasks


def prompt_set(seed, n_prompts=20, reps=5, d=20, offset_sd=0.5):
    """Completions of `n_prompts` prompts: noise plus a random offset per prompt."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i:02d}" for i in range(n_prompts)], reps)
    offsets = rng.normal(0, offset_sd, (n_prompts, d))
    features = rng.normal(size=(n_prompts * reps, d)) + np.repeat(offsets, reps, axis=0)
    return features, groups, rng


def majority_by_hand(labels, splits):
    accuracies = []
    for train, test in splits:
        values, counts = np.unique(labels[train], return_counts=True)
        accuracies.append(np.mean(labels[test] == values[np.argmax(counts)]))
    return np.mean(accuracies)


# --- probe ---------------------------------------------------------------------------------------

def test_planted_direction_is_decoded_and_controls_stay_at_chance():
    features, groups, rng = prompt_set(0, reps=6)
    labels = (rng.random(len(features)) < 0.65).astype(int)  # varies within prompts, unbalanced
    features[:, 0] += 4.0 * labels
    result = probe(features, labels, groups, n_permutations=20)

    assert result["estimable"] and result["n"] == 120 and result["n_groups"] == 20 and result["n_splits"] == 5
    assert len(result["fold_accuracies"]) == 5
    assert result["accuracy"] == pytest.approx(np.mean(result["fold_accuracies"]))
    assert result["accuracy"] >= 0.9 and result["balanced_accuracy"] >= 0.85
    splits = grouped_splits(labels, groups)
    assert result["majority_baseline"] == pytest.approx(majority_by_hand(labels, splits))
    assert 0.4 <= result["shuffled_control"] <= 0.75
    assert result["p_value"] == pytest.approx(1 / 21)  # no shuffled accuracy reached the real one


def test_leak_grouped_folds_stay_at_chance_where_ungrouped_folds_read_prompt_identity():
    """Only prompt identity is decodable; the label is a prompt's. Ungrouped folds (the original
    study's) put repetitions of a prompt on both sides and score high; grouped folds do not."""
    grouped, naive = [], []
    for seed in range(3):
        features, groups, rng = prompt_set(seed, d=50, offset_sd=3.0)
        prompt_labels = rng.permutation(np.repeat([0, 1], 10))
        labels = prompt_labels[np.unique(groups, return_inverse=True)[1]]
        grouped.append(probe(features, labels, groups, seed=seed, n_permutations=5)["accuracy"])
        naive.append(cross_val_score(
            make_probe(), features, labels, cv=StratifiedKFold(5, shuffle=True, random_state=seed)).mean())
    assert np.mean(grouped) <= 0.7
    assert np.mean(naive) >= 0.9
    assert np.mean(naive) - np.mean(grouped) >= 0.3


@pytest.mark.parametrize("sizes, n_labels, n_splits", [
    ([5] * 20, 2, 5),               # the study's shape
    ([1, 2, 3, 4, 5, 6, 7, 8], 3, 5),  # unequal groups, 3 classes
    ([3, 3, 3], 2, 5),              # fewer groups than folds: 3 folds
    ([1, 1, 1, 1], 2, 4),           # StratifiedGroupKFold refuses: GroupKFold
])
def test_folds_never_split_a_group(sizes, n_labels, n_splits):
    groups = np.repeat(np.arange(len(sizes)), sizes)
    labels = np.arange(len(groups)) % n_labels
    splits = grouped_splits(labels, groups, n_splits)
    assert len(splits) == min(n_splits, len(sizes))
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested) == list(range(len(groups)))  # every completion tested exactly once
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert len(np.unique(labels[train])) > 1


def test_shuffled_labels_move_whole_cells():
    groups = np.repeat(["a", "b", "c", "d"], 3)
    per_prompt = np.repeat([0, 0, 1, 1], 3)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        permuted = shuffled_labels(per_prompt, groups, rng)
        assert all(len(set(permuted[groups == g])) == 1 for g in "abcd")  # a prompt's label moves with it
        assert sorted(permuted) == sorted(per_prompt)
        seen.add(tuple(permuted))
    assert len(seen) > 1
    within = np.tile([0, 0, 1], 4)  # labels varying within prompts: (prompt, label) cells
    permuted = shuffled_labels(within, groups, rng)
    assert all(permuted[i] == permuted[i + 1] for i in range(0, 12, 3))


@pytest.mark.parametrize("labels, groups, reason", [
    ([1, 1, 1, 1], ["a", "a", "b", "b"], "one class"),
    ([0, 1, 0, 1], ["a", "a", "a", "a"], "fewer than 2 groups"),
    ([0, 0, 1], ["a", "b", "c"], "no grouped split"),  # holding out c leaves one class
])
def test_probe_not_estimable_gives_a_reason(labels, groups, reason):
    result = probe(np.ones((len(labels), 3)), labels, groups, n_permutations=5)
    assert result["estimable"] is False and reason in result["reason"]
    assert result["n"] == len(labels)


# --- tasks ---------------------------------------------------------------------------------------

def synthetic_study(seed=0, d=8, reps=2):
    """Pooled features and meta of family A (base + instruct) and family B (instruct), one layout."""
    rng = np.random.default_rng(seed)
    models = [("a-base", "a", "base"), ("a-instruct", "a", "instruct"), ("b-instruct", "b", "instruct")]
    types = ["unconstrained", "self_reference", "structured_novelty", "topic_control"]
    rows = [
        {"model": m, "family": f, "size_b": 1.0, "variant": v, "frame": "native", "condition": "native",
         "hidden_size": d, "n_layers": 4, "prompt_id": f"{t}_{i:02d}", "prompt_type": t, "rep": r, "seed": 42 + r}
        for m, f, v in models for t in types for i in (1, 2) for r in range(reps)
    ]
    meta = pd.DataFrame(rows)
    shift = 3.0 * (meta["variant"] == "instruct").to_numpy()[:, None]
    features = {h: (rng.normal(size=(len(meta), d)) + shift).astype(np.float32) for h in (0, 4)}
    return features, meta


def test_probe_tasks_runs_every_defined_task():
    features, meta = synthetic_study()
    labels = meta[["model", "prompt_id", "rep"]].assign(
        keyword_self_reference=np.random.default_rng(1).integers(0, 4, len(meta)))
    table, selection = probe_tasks(features, meta, labels.iloc[:-1], n_permutations=5)  # one completion unlabelled

    assert list(table.columns) == list(TABLE_COLUMNS)
    text_only = table["task"] == "self_reference_text_only"
    assert table[~text_only]["estimable"].all()
    assert "no completion tokens" in table.loc[text_only, "reason"].item()  # none were given
    subsets = table.groupby("task")["subset"].unique()
    # family b's instruct model has no base: it is paired with nobody, never pooled with family a
    assert list(subsets["base_vs_instruct"]) == ["pair=a-base/a-instruct"]
    assert len(selection) == 1 + 3 + 3  # one held-out layer selection per task and subset
    assert sorted(subsets["prompt_type"]) == ["model=a-base", "model=a-instruct", "model=b-instruct"]
    assert len(subsets["self_reference_content"]) == 3
    variant = table[table["task"] == "base_vs_instruct"]
    assert (variant["accuracy"] >= 0.9).all() and list(variant["hidden_state_index"][:2]) == [0, 4]
    assert list(variant["layer_fraction"][:2]) == [0.0, 1.0]
    tested = table.dropna(subset=["p_value"])
    assert len(tested) == len(table) - 1 and (tested["p_holm"] >= tested["p_value"] - 1e-12).all()
    self_reference = table[table["task"] == "self_reference_content"]
    assert sorted(self_reference["n"].unique()) == [15, 16]


def test_probe_tasks_without_data_says_why():
    features, meta = synthetic_study()
    only_instruct = meta["variant"] == "instruct"
    table, _ = probe_tasks({h: x[only_instruct] for h, x in features.items()},
                           meta[only_instruct].reset_index(drop=True), n_permutations=5)
    missing = table[~table["estimable"].astype(bool)].set_index("task")["reason"]
    assert missing["base_vs_instruct"] == NO_PAIR
    assert "extra_labels" in missing["self_reference_content"]
    assert table[table["task"] == "prompt_type"]["estimable"].all()
    with pytest.raises(InputError, match="rep"):
        probe_tasks(features, meta, meta[["model", "prompt_id"]].assign(code=1))


def test_shared_frame_probe_sees_only_identical_input_text():
    """Planted: the native instruct rows differ from base by their chat template (a big shift),
    the shared-frame twin not at all: the native probe decodes the variant, the shared one cannot."""
    features, meta = synthetic_study(reps=3)
    base = meta[meta["model"] == "a-base"]
    twin = base.assign(model="a-instruct-base-frame", variant="instruct", frame="base", condition="shared_frame")
    meta = pd.concat([meta, twin], ignore_index=True)
    rng = np.random.default_rng(7)
    features = {h: np.concatenate([x, x[base.index] + 0.01 * rng.normal(size=(len(base), x.shape[1]))]).astype(np.float32)
                for h, x in features.items()}
    table, _ = probe_tasks(features, meta, n_permutations=20)
    variant = table[table["task"] == "base_vs_instruct"].set_index(["subset", "hidden_state_index"])
    pair = "pair=a-base/a-instruct"
    assert sorted(variant.index.unique("subset")) == [pair, "shared_frame: pair=a-base/a-instruct-base-frame"]
    assert (variant.loc[pair, "accuracy"] >= 0.9).all()
    shared = variant.loc["shared_frame: pair=a-base/a-instruct-base-frame"]
    assert (shared["n"] == 2 * len(base)).all()  # base and twin only: no native instruct rows
    assert (shared["accuracy"] <= 0.75).all() and (shared["p_value"] > 0.05).all()


# --- pooling -------------------------------------------------------------------------------------

def write_activations(path, prompt_states, rep_states, name="m", hidden_size=None, skip=(), family="fam", variant="base"):
    """An activation file in the workflow's layout; `skip` leaves out groups or attributes."""
    layers, _, d = prompt_states.shape
    indices = [0, 2, 4][:layers]
    model = {"name": name, "family": family, "size_b": 0.1, "variant": variant, "frame": "native",
             "hidden_size": hidden_size or d, "n_layers": 4}
    with h5py.File(path, "w") as h5:
        attrs = {"model": json.dumps(model), "prompt_id": "self_reference_01", "prompt_type": "self_reference",
                 "hidden_state_indices": json.dumps(indices), "layer_fractions": json.dumps([0, 0.5, 1]),
                 "storage_dtype": "float16", "attention_sink_position": 0}
        for key, value in attrs.items():
            if key not in skip:
                h5.attrs[key] = value
        if "prompt" not in skip:
            h5.create_group("prompt").create_dataset("hidden_states", data=prompt_states.astype(np.float16))
        for rep, states in enumerate(rep_states):
            group = h5.create_group(f"rep_{rep:02d}")
            group.attrs.update({"rep": rep, "seed": 42 + rep, "stop_reason": "eos"})
            group.create_dataset("hidden_states", data=states.astype(np.float16))
    return path


@pytest.fixture
def states():
    rng = np.random.default_rng(0)
    prompt = rng.normal(size=(3, 5, 4)).astype(np.float16)
    prompt[:, 0] = 1000.0  # the attention sink
    return prompt, [rng.normal(size=(3, n, 4)).astype(np.float16) for n in (2, 7)]


def test_pooling_means_completions_and_excludes_the_sink(tmp_path, states):
    prompt, reps = states
    path = write_activations(tmp_path / "a.h5", prompt, reps)
    features, meta = pooled_activations([path])
    assert sorted(features) == [0, 2, 4] and features[2].dtype == np.float32
    for layer, index in enumerate([0, 2, 4]):
        expected = [r[layer].astype(np.float64).mean(axis=0) for r in reps]
        np.testing.assert_allclose(features[index], expected, rtol=1e-6)
    assert meta[["rep", "seed", "variant", "hidden_size", "prompt_type"]].values.tolist() == [
        [0, 42, "base", 4, "self_reference"], [1, 43, "base", 4, "self_reference"]]

    with_prompt, _ = pooled_activations([path], pooling="prompt_and_completion")
    for layer, index in enumerate([0, 2, 4]):
        expected = [np.concatenate([prompt[layer, 1:], r[layer]]).astype(np.float64).mean(axis=0) for r in reps]
        np.testing.assert_allclose(with_prompt[index], expected, rtol=1e-6)
    assert np.abs(with_prompt[0]).max() < 10  # the sink (1000) is not in the mean
    before, _ = pooled_activations([path], pooling="last_prompt")
    for layer, index in enumerate([0, 2, 4]):  # every rep: the prompt's last position
        np.testing.assert_allclose(before[index], [prompt[layer, -1].astype(np.float64)] * 2, rtol=1e-6)


def test_pooling_names_the_file_at_fault(tmp_path, states):
    prompt, reps = states
    good = write_activations(tmp_path / "good.h5", prompt, reps)
    no_prompt = write_activations(tmp_path / "no_prompt.h5", prompt, reps, skip=("prompt",))
    pooled_activations([good, no_prompt])  # the prompt group is read only by poolings that use the prompt
    with pytest.raises(InputError, match="no_prompt.h5.*prompt/hidden_states"):
        pooled_activations([good, no_prompt], pooling="last_prompt")
    with pytest.raises(InputError, match="no_model.h5.*'model'"):
        pooled_activations([write_activations(tmp_path / "no_model.h5", prompt, reps, skip=("model",))])
    wide = write_activations(tmp_path / "wide.h5", np.ones((3, 5, 6)), [np.ones((3, 2, 6))], name="w")
    with pytest.raises(InputError, match="wide.h5.*layout"):
        pooled_activations([good, wide])
    assert sorted(map(len, activation_layouts([good, no_prompt, wide]).values())) == [1, 2]


# --- embeddings ----------------------------------------------------------------------------------

def test_pca_embedding_shape_and_determinism():
    x = np.random.default_rng(0).normal(size=(30, 10))
    coords = embed(x, "pca")
    assert coords.shape == (30, 2)
    np.testing.assert_array_equal(coords, embed(x, "pca"))
    with pytest.raises(InputError, match="2 points"):
        embed(x[:1], "pca")
    with pytest.raises(InputError, match="unknown"):
        embed(x, "tsne")


def test_umap_embedding_is_reproducible_and_needs_four_points():
    x = np.random.default_rng(0).normal(size=(40, 10))
    coords = embed(x, "umap", seed=3)
    assert coords.shape == (40, 2)
    np.testing.assert_array_equal(coords, embed(x, "umap", seed=3))
    assert embed(x[:4], "umap").shape == (4, 2)  # n_neighbors shrinks to n - 1
    with pytest.raises(InputError, match="at least 4 points, got 3"):
        embed(x[:3], "umap")


# --- identity, text baseline, layer selection ----------------------------------------------------

def identity_study(seed=0, n_prompts=12, reps=3, d=12):
    """A pair whose weights are readable but whose texts are not: every text (prompt x rep x
    writer) is a draw from the same distribution, each reader adds its own offset. Rows: every
    reader (base, instruct, the noisy base) of every writer's text, as the traces give them."""
    rng = np.random.default_rng(seed)
    base, instruct, noisy = "p-base", "p-instruct", weight_noise_name("p-base")
    offsets = {base: np.zeros(d), instruct: 3.0 * rng.normal(size=d), noisy: 3.0 * rng.normal(size=d)}
    topics = rng.normal(size=(n_prompts, d))
    texts = {(p, r, w): topics[p] + rng.normal(size=d) for p in range(n_prompts) for r in range(reps) for w in (base, instruct)}
    reads = [(reader, writer) for reader in (base, instruct) for writer in (base, instruct)] + [(noisy, base)]
    rows, vectors = [], []
    for reader, writer in reads:
        for (p, r, w), text in texts.items():
            if w == writer:
                rows.append({"model": reader, "generator": writer, "family": "p", "size_b": 1.0,
                             "variant": "instruct" if reader == instruct else "base", "frame": "native",
                             "condition": "native", "hidden_size": d, "n_layers": 2, "prompt_id": f"q{p:02d}",
                             "prompt_type": "unconstrained", "rep": r})
                vectors.append(text + offsets[reader] + 0.1 * rng.normal(size=d))
    meta = pd.DataFrame(rows)
    return {1: np.array(vectors, dtype=np.float32)}, meta, base, instruct


def test_identical_text_generator_probe_is_at_chance_where_the_old_design_reads_identity():
    features, meta, base, instruct = identity_study()
    native = (meta["model"] == meta["generator"]).to_numpy()
    old, _ = probe_tasks({h: x[native] for h, x in features.items()}, meta[native].reset_index(drop=True), n_permutations=20)
    old = old[old["task"] == "base_vs_instruct"]
    assert old["subset"].tolist() == [f"pair={base}/{instruct}"] and old["accuracy"].item() >= 0.85

    table, selection = identity_probes(features, meta, base, instruct, n_permutations=20)
    rows = table.set_index(["task", "subset"])
    generator = rows.loc["identical_text_generator"]
    assert sorted(generator.index) == [f"pair={base}/{instruct}, reader={m}" for m in (base, instruct)]
    assert (generator["accuracy"] <= 0.7).all() and (generator["p_value"] > 0.05).all()
    # on identical text the reader is still read, and so is a noisy copy of the base: identity, not content
    assert (rows.loc["identical_text_reader", "accuracy"] >= 0.85).all()
    assert rows.loc[("weight_noise_calibration", f"pair={base}/{instruct}, text={base}"), "accuracy"] >= 0.85
    assert set(selection["task"]) == {"identical_text_reader", "identical_text_generator", "weight_noise_calibration"}


def test_identity_tasks_without_a_pair_say_why(tmp_path, states):
    prompt, reps = states
    paths = [write_activations(tmp_path / f"{name}.h5", prompt, reps, name=name, family=family, variant=variant)
             for name, family, variant in (("g-base", "gemma3", "base"), ("s-instruct", "smollm2", "instruct"))]
    table, selection, direction, pairs = pair_analysis(paths, [], [], pd.DataFrame(columns=["model", "prompt_id", "rep", "code"]))
    assert pairs == [] and direction == []
    assert sorted(table["task"]) == ["identical_text_generator", "identical_text_reader", "weight_noise_calibration"]
    assert (~table["estimable"].astype(bool)).all() and (table["reason"] == NO_PAIR).all()
    summary = identity_summary(table, selection, direction, pairs)
    for key in ("identical_text", "weight_difference_calibration", "direction_content"):
        assert summary[key].startswith("not estimable: no base/instruct pair")
    # one pair member's trace missing: the subsets that need it say so
    features, meta, base, instruct = identity_study()
    no_cross = (meta["model"] == meta["generator"]).to_numpy()
    table, _ = identity_probes({h: x[no_cross] for h, x in features.items()}, meta[no_cross].reset_index(drop=True),
                               base, instruct, n_permutations=2)
    missing = table[~table["estimable"].astype(bool)].set_index("subset")["reason"]
    assert len(missing) == len(table) == 5  # text=both holds both readers but not on the same texts
    assert "same texts" in missing[f"pair={base}/{instruct}, text=both"]


def lexical_study(seed=0, n_prompts=12, reps=4, d=16, vocab=40, length=12):
    """Completions of random token ids; the label is lexical (token 0, 'I', occurs); activations
    are the mean embedding of the completion's tokens."""
    rng = np.random.default_rng(seed)
    embedding = rng.normal(size=(vocab, d))
    rows, tokens, pooled = [], [], []
    for p in range(n_prompts):
        for r in range(reps):
            ids = rng.integers(1, vocab, length)
            ids[:4] = 0 if rng.random() < 0.5 else ids[:4]
            rows.append({"model": "m", "family": "f", "size_b": 1.0, "variant": "instruct", "frame": "native",
                         "condition": "native", "hidden_size": d, "n_layers": 2, "prompt_id": f"p{p:02d}",
                         "prompt_type": "self_reference", "rep": r})
            tokens.append(" ".join(map(str, ids)))
            pooled.append(embedding[ids].mean(axis=0))
    meta = pd.DataFrame(rows)
    labels = meta[["model", "prompt_id", "rep"]].assign(code=[2 * ("0" in t.split()) for t in tokens])
    return {1: np.array(pooled, dtype=np.float32)}, meta, labels, np.array(tokens)


def test_text_only_baseline_matches_the_activation_probe_when_the_label_is_lexical():
    features, meta, labels, tokens = lexical_study()
    table, _ = probe_tasks(features, meta, labels, tokens=tokens, pre_generation=features, n_permutations=2)
    accuracy = table.set_index("task")["accuracy"]
    assert accuracy["self_reference_text_only"] >= 0.9 and accuracy["self_reference_content"] >= 0.85
    assert abs(accuracy["self_reference_text_only"] - accuracy["self_reference_content"]) <= 0.1
    assert table.set_index("task").loc["self_reference_text_only", "hidden_state_index"] != 1  # no layer: NaN
    shuffled = rng_shuffle(tokens)  # tokens of other completions: the baseline has nothing to read
    table, _ = probe_tasks(features, meta, labels, tokens=shuffled, n_permutations=2)
    assert table.set_index("task").loc["self_reference_text_only", "accuracy"] <= 0.7


def rng_shuffle(values, seed=0):
    return np.random.default_rng(seed).permutation(values)


def layered(seed, n_layers, signal_at=None, n_prompts=16, reps=4, d=10):
    """Noise at every layer, labels varying within prompts; a planted direction at `signal_at`."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_prompts), reps)
    labels = rng.integers(0, 2, n_prompts * reps)
    features = {h: rng.normal(size=(len(groups), d)) for h in range(n_layers)}
    if signal_at is not None:
        features[signal_at][:, 0] += 3.0 * labels
    return features, labels, groups


def test_held_out_layer_selection_finds_the_planted_layer_and_is_not_optimistic_on_noise():
    result = held_out_layer(*layered(0, 6, signal_at=3))
    assert result["selected_index_a"] == result["selected_index_b"] == 3 and result["held_out_accuracy"] >= 0.85
    held, best = [], []
    for seed in range(4):  # no signal anywhere: the max over 12 layers is optimistic, held-out is not
        features, labels, groups = layered(seed, 12)
        held.append(held_out_layer(features, labels, groups, n_splits=3, seed=seed)["held_out_accuracy"])
        best.append(max(probe(x, labels, groups, n_splits=3, seed=seed, n_permutations=1)["accuracy"]
                        for x in features.values()))
    assert np.mean(held) <= 0.6 and np.mean(best) - np.mean(held) >= 0.08
    assert held_out_layer({0: np.ones((4, 2))}, [0, 1, 0, 1], [0, 0, 1, 1])["estimable"] is False
