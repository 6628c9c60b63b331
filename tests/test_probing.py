"""Probes and embeddings on planted and null data, pooling on hand-written activation files."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold, cross_val_score

from llm_introspection.errors import InputError
from llm_introspection.study.probing import (
    TABLE_COLUMNS, activation_layouts, embed, grouped_splits, make_probe, pooled_activations, probe, probe_tasks, shuffled_labels,
)


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
    table = probe_tasks(features, meta, labels.iloc[:-1], n_permutations=5)  # one completion unlabelled

    assert list(table.columns) == list(TABLE_COLUMNS)
    assert table["estimable"].all()
    subsets = table.groupby("task")["subset"].unique()
    assert sorted(subsets["base_vs_instruct"]) == ["family=a", f"hidden_size={8}"]
    assert sorted(subsets["prompt_type"]) == ["model=a-base", "model=a-instruct", "model=b-instruct"]
    assert len(subsets["self_reference_content"]) == 3
    variant = table[table["task"] == "base_vs_instruct"]
    assert (variant["accuracy"] >= 0.9).all() and list(variant["hidden_state_index"][:2]) == [0, 4]
    assert list(variant["layer_fraction"][:2]) == [0.0, 1.0]
    assert (table["p_holm"] >= table["p_value"] - 1e-12).all()
    self_reference = table[table["task"] == "self_reference_content"]
    assert sorted(self_reference["n"].unique()) == [15, 16]


def test_probe_tasks_without_data_says_why():
    features, meta = synthetic_study()
    only_instruct = meta["variant"] == "instruct"
    table = probe_tasks({h: x[only_instruct] for h, x in features.items()},
                        meta[only_instruct].reset_index(drop=True), n_permutations=5)
    missing = table[~table["estimable"].astype(bool)].set_index("task")["reason"]
    assert "both base and instruct" in missing["base_vs_instruct"]
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
    table = probe_tasks(features, meta, n_permutations=20)
    variant = table[table["task"] == "base_vs_instruct"].set_index(["subset", "hidden_state_index"])
    # family b has no shared-frame twin, so no hidden size spans two families in that condition
    assert sorted(variant.index.unique("subset")) == ["family=a", "hidden_size=8", "shared_frame: family=a"]
    assert (variant.loc["family=a", "accuracy"] >= 0.9).all()
    shared = variant.loc["shared_frame: family=a"]
    assert (shared["n"] == 2 * len(base)).all()  # base and twin only: no native instruct rows
    assert (shared["accuracy"] <= 0.75).all() and (shared["p_value"] > 0.05).all()


# --- pooling -------------------------------------------------------------------------------------

def write_activations(path, prompt_states, rep_states, name="m", hidden_size=None, skip=()):
    """An activation file in the workflow's layout; `skip` leaves out groups or attributes."""
    layers, _, d = prompt_states.shape
    indices = [0, 2, 4][:layers]
    model = {"name": name, "family": "fam", "size_b": 0.1, "variant": "base", "frame": "native",
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

    with_prompt, _ = pooled_activations([path], include_prompt=True)
    for layer, index in enumerate([0, 2, 4]):
        expected = [np.concatenate([prompt[layer, 1:], r[layer]]).astype(np.float64).mean(axis=0) for r in reps]
        np.testing.assert_allclose(with_prompt[index], expected, rtol=1e-6)
    assert np.abs(with_prompt[0]).max() < 10  # the sink (1000) is not in the mean


def test_pooling_names_the_file_at_fault(tmp_path, states):
    prompt, reps = states
    good = write_activations(tmp_path / "good.h5", prompt, reps)
    no_prompt = write_activations(tmp_path / "no_prompt.h5", prompt, reps, skip=("prompt",))
    pooled_activations([good, no_prompt])  # the prompt group is needed only with include_prompt
    with pytest.raises(InputError, match="no_prompt.h5.*prompt/hidden_states"):
        pooled_activations([good, no_prompt], include_prompt=True)
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
