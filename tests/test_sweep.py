"""A sweep job's cells (injection.sweep): a fingerprint covers the parts, the input files' content and
the package's source; a cell is current when its file holds the fingerprint; a finished cell that a
failed job's cleanup removed is taken back from its '.finished' link."""

import json

from llm_introspection.injection.cell import write_records
from llm_introspection.injection.sweep import (
    finished_path, fingerprint, is_current, keep_finished, release_finished, source_digest,
)


def test_a_fingerprint_follows_parts_and_input_content_not_paths_or_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one")
    b.write_text("one")
    base = fingerprint({"vectors": a}, strength=2.0, settings={"n_trials": 2, "seed": 0})
    assert base == fingerprint({"vectors": b}, settings={"seed": 0, "n_trials": 2}, strength=2.0)
    assert base != fingerprint({"vectors": a}, strength=4.0, settings={"n_trials": 2, "seed": 0})
    assert base != fingerprint({"vectors": a}, strength=2.0, settings={"n_trials": 3, "seed": 0})
    b.write_text("two")
    assert base != fingerprint({"vectors": b}, strength=2.0, settings={"n_trials": 2, "seed": 0})
    assert len(source_digest()) == 64


def test_a_cell_is_current_only_with_its_fingerprint_and_comes_back_from_its_link(tmp_path):
    cell = tmp_path / "localization/m/layer0.5_strength2.json"
    assert not is_current(cell, "f1")
    write_records(cell, [{"trial": 0}], fingerprint="f1")
    assert is_current(cell, "f1") and not is_current(cell, "f2")
    keep_finished(cell)
    cell.unlink()  # what Snakemake's cleanup of a failed job does
    assert not is_current(cell, "f2") and not cell.exists()
    assert is_current(cell, "f1") and json.loads(cell.read_text())["records"] == [{"trial": 0}]
    write_records(cell, [{"trial": 9}], fingerprint="f0")  # a failed job's restore of the old version
    assert is_current(cell, "f1") and json.loads(cell.read_text())["records"] == [{"trial": 0}]
    release_finished([cell])
    assert not finished_path(cell).exists() and cell.exists()
    cell.write_text("not json")
    assert not is_current(cell, "f1")
