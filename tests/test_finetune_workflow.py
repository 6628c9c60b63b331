"""Introspection finetuning in the workflow: a dry run plans detection data -> finetune -> the LoRA
model's prepare_model -> every experiment on it, and a bad LoRA source fails at parse time."""

import pytest

from conftest import TINY_STUDY, merged, planned, snakemake, write_study

pytestmark = pytest.mark.workflow

LORA_MODEL = {"family": "llama", "size_b": 1.0e-5, "variant": "instruct",
              "source": {"kind": "lora", "base": "tiny-instruct", "adapter": {"variant": "original"}}}
FINETUNE = {
    "models": {"tiny-ft": LORA_MODEL},
    "finetune": {"variants": {"original": {}, "neutral": {"question": "choose", "answers": "red_blue"}},
                 "n_examples": {"train": 8, "validation": 4, "heldout": 4}, "epochs": 1},
    "injection": {"models": ["tiny-ft"], "experiments": ["detection_logits"], "strengths": [2]},
}


def test_a_dry_run_plans_detection_data_finetune_and_the_lora_model_everywhere(tokenizer_dir, tmp_path):
    write_study(tmp_path, merged(TINY_STUDY, FINETUNE), tokenizer_dir)
    jobs = planned(snakemake(tmp_path, "--dry-run"))
    # finetune.models is empty: only the variant a LoRA source names is trained
    assert sorted(j for j in jobs if j[0] in ("detection_data", "finetune")) == [
        ("detection_data", "model=tiny-instruct, variant=original"),
        ("finetune", "model=tiny-instruct, variant=original"),
    ]
    for rule in ("prepare_model", "generate", "trace", "judge", "code_keywords", "concept_vectors",
                 "inject_detection_logits"):
        assert any(r == rule and "model=tiny-ft" in w for r, w in jobs), rule
    assert not any("tiny-ft-base-frame" in w for _, w in jobs)  # a LoRA variant has no shared-frame twin
    # finetuning every variant of the base model adds the other variant's jobs; the self-knowledge study
    # of the LoRA model reads its detection data (and its base on the same data), nothing else's
    write_study(tmp_path, merged(TINY_STUDY, FINETUNE), finetune={"models": ["tiny-instruct"]},
                selfknowledge={"models": ["tiny-ft"], "evaluations": ["answer_shift", "detection"]})
    jobs = planned(snakemake(tmp_path, "--dry-run"))
    trained = {j for j in jobs if j[0] in ("detection_data", "finetune")}
    assert trained == {(rule, f"model=tiny-instruct, variant={v}") for rule in ("detection_data", "finetune")
                       for v in ("original", "neutral")}
    assert sorted(w for r, w in jobs if r == "selfknowledge") == [
        f"evaluation={e}, model={m}" for e in ("answer_shift", "detection") for m in ("tiny-ft", "tiny-instruct")]


@pytest.mark.parametrize(("change", "message"), [
    ({"models": {"tiny-ft": {"source": {"base": "ghost"}}}},
     "model tiny-ft: config key 'models.tiny-ft.source.base': 'ghost' is not one of the models"),
    # (a missing adapter variant and a variant's unknown answer pair: unit tests in test_finetune.py)
    ({"finetune": {"models": ["tiny-ft"]}}, "config key 'finetune.models': 'tiny-ft' is not one of the models that"),
])
def test_a_bad_finetune_config_fails_at_parse_time_naming_the_key(tokenizer_dir, tmp_path, change, message):
    write_study(tmp_path, merged(merged(TINY_STUDY, FINETUNE), change), tokenizer_dir)
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0 and message in result.stdout + result.stderr, result.stderr[-2000:]
