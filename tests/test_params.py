"""A job's params are exactly the config keys it reads, in canonical form: a key reruns only the
jobs that read it, and the same config with its keys in another order plans nothing."""

import yaml

from conftest import REPO, snakemake, write_study
from test_injection_workflow import RESOURCES
from test_workflow import planned, tiny_models

CELL = "results/injection/localization/tiny-instruct/layer0.5_strength2.json"
TARGETS = ["results/generations/tiny-base/self_reference_01.json", CELL]
INJECTION = {"models": ["tiny-instruct"], "experiments": ["localization"], "layer_fractions": [0.5], "strengths": [2],
             "n_concepts": 3, "n_trials": 2, "n_sentences": 3,
             "resources": {key: str(REPO / "resources" / path) for key, path in RESOURCES.items()}}


def test_key_order_and_unread_keys_rerun_nothing(tokenizer_dir, tmp_path):
    config_path = write_study(tmp_path, tiny_models(tokenizer_dir), injection=INJECTION)
    snakemake(tmp_path, *TARGETS)
    config = yaml.safe_load(config_path.read_text())

    config_path.write_text(yaml.safe_dump(config, sort_keys=True, default_flow_style=True, width=60))
    assert planned(snakemake(tmp_path, "--dry-run", *TARGETS)) == []

    config["injection"]["n_trials"] = 3  # read by localization cells, not by concept vectors
    config["probing"]["n_permutations"] = 7  # read by probes only
    config_path.write_text(yaml.safe_dump(config, sort_keys=True))
    assert planned(snakemake(tmp_path, "--dry-run", *TARGETS)) == [
        ("inject", "experiment=localization, model=tiny-instruct, layer=0.5, strength=2")]
