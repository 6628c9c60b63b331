"""The analysis rules' work on files written the way the model rules write them."""

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from llm_introspection.study.analysis import entropy_tables, run_entropy_statistics, run_code_keywords
from llm_introspection.study.coding import code_text, load_lexicon
from llm_introspection.jobs import _write_entropy
from llm_introspection.sampling import Completion
from llm_introspection.storage import write_json

LEXICON = REPO / "resources/lexicons/coding.yaml"


def header(model, variant, family, prompt, prompt_type):
    return {
        "study": "t", "generation": {}, "versions": {},
        "model": {"name": model, "family": family, "size_b": 1.0, "variant": variant, "frame": "native"},
        "prompt": {"id": prompt, "type": prompt_type},
    }


def completion(first, rest):
    stats = np.zeros((1 + len(rest), 5), dtype=np.float32)
    stats[:, 0] = [first, *rest]
    stats[:, 1] = stats[:, 0] / 2
    return Completion(list(range(len(stats))), "max_new_tokens", stats)


@pytest.fixture
def entropy_files(tmp_path):
    paths = []
    for model, variant, shift in (("b", "base", 0.0), ("i", "instruct", 1.0)):
        for prompt, prompt_type in (("p1", "self_reference"), ("p2", "topic_control")):
            path = tmp_path / f"{model}_{prompt}.h5"
            reps = [completion(2.0 + shift, [1.0, 3.0]), completion(2.0 + shift, [5.0])]
            _write_entropy(path, header(model, variant, "fam", prompt, prompt_type), [42, 43], reps)
            paths.append(path)
    return paths


def test_entropy_tables_read_what_generate_wrote(entropy_files):
    completions, positions = entropy_tables(entropy_files)
    row = completions[(completions["model"] == "i") & (completions["prompt_id"] == "p1") & (completions["rep"] == 1)]
    assert row["first_token_entropy_t1"].item() == 3.0 and row["mean_entropy_t1"].item() == pytest.approx(4.0)
    assert row["first_token_entropy_sampling"].item() == 1.5 and row["n_tokens"].item() == 2
    assert len(positions) == 4 * (3 + 2)  # NaN padding after the shorter rep is not a position


def test_first_token_entropy_counts_once_per_prompt(entropy_files, tmp_path):
    outputs = {"statistics": tmp_path / "s.csv", "profiles": tmp_path / "p.csv"}
    run_entropy_statistics(entropy_files, outputs, {"bootstrap_resamples": 200, "seed": 0})
    statistics = pd.read_csv(outputs["statistics"])
    clustered = statistics[statistics["unit"] == "model_pair x prompt"]
    assert len(clustered) == 4 * 2 and clustered["note"].str.contains("1 unit").all()  # one pair, 2 prompt types
    table = statistics[statistics["unit"] != "model_pair x prompt"]
    first = table[(table["comparison"] == "instruct_vs_base") & (table["dimension"] == "first_token_entropy_t1")]
    assert set(first["n_a"]) == {1} and set(first["n_b"]) == {1}  # one prompt per type, not one per rep
    assert first["diff"].tolist() == [1.0, 1.0]
    means = table[(table["comparison"] == "instruct_vs_base") & (table["dimension"] == "mean_entropy_t1")]
    assert set(means["n_a"]) == {2}
    profile = pd.read_csv(outputs["profiles"])
    start = profile[(profile["model"] == "b") & (profile["prompt_type"] == "self_reference") & (profile["position"] == 1)]
    assert start["entropy_t1_mean"].item() == pytest.approx(3.0) and start["entropy_t1_count"].item() == 2


def test_keyword_coding_codes_every_completion(tmp_path):
    texts = ["As an AI language model, I don't have feelings, and I'm not sure what I notice.", "Tides follow the moon."]
    generation = header("m", "instruct", "fam", "p1", "self_reference") | {
        "reps": [{"rep": r, "seed": 42 + r, "stop_reason": s, "text": t}
                 for r, (t, s) in enumerate(zip(texts, ["eos", "frame_end"]))]}
    write_json(tmp_path / "p1.json", generation)
    run_code_keywords([tmp_path / "p1.json"], LEXICON, tmp_path / "m.csv")
    table = pd.read_csv(tmp_path / "m.csv")
    lexicon = load_lexicon(LEXICON)
    assert table["rep"].tolist() == [0, 1] and set(table["lexicon_sha256"]) == {lexicon.sha256}
    assert table["stop_reason"].tolist() == ["eos", "frame_end"]
    for text, (_, row) in zip(texts, table.iterrows()):
        expected = code_text(text, lexicon)
        assert [row[d] for d in ("self_reference", "meta_cognition", "hedging")] == [
            expected[d] for d in ("self_reference", "meta_cognition", "hedging")]
    assert table.loc[0, "self_reference"] >= 1 and table.loc[1, "self_reference"] == 0


def test_the_report_counts_the_completions_cut_at_a_frame_end_per_model_of_a_base_frame():
    from llm_introspection.report.markdown import caveats
    from llm_introspection.study.rubric import DIMENSIONS as JUDGE_DIMENSIONS

    reasons = {("b", "base", "native"): ["frame_end", "frame_end", "max_new_tokens"],
               ("i", "instruct", "native"): ["eos", "eos"],
               ("i-base-frame", "instruct", "shared_frame"): ["frame_end", "eos"]}
    coded = pd.DataFrame([{"model": m, "variant": v, "condition": c, "prompt_id": "p1", "prompt_type": "self_reference",
                           "stop_reason": r} for (m, v, c), rs in reasons.items() for r in rs])
    judged = pd.DataFrame({f"judge_{d}_option_mass": [0.5] for d in JUDGE_DIMENSIONS} | {"judge_truncated": [False]})
    content = pd.DataFrame({"comparison": ["descriptive"], "n_a": [2]})
    models = [{"name": m, "size_b": 1.0} for m, _, _ in reasons]
    found = caveats(models, coded, judged, content, {"generation": {"reps": 3}, "judge": {"model": "j"}})
    (cut,) = [c for c in found if "frame_end" in c]
    assert "cut there were 2 of 3 (b), 1 of 2 (i-base-frame) (stop_reason frame_end)" in cut
