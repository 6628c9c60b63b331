"""A sweep job's cells: which of its per-cell files are still current, so that one job per
(experiment, model) loads the model once and computes only the cells that are missing or stale.

The rules declare every cell file as an output flagged update(): Snakemake then leaves existing
cells in place when the job reruns (a new strength or layer, a changed key), and the job skips each
cell whose stored fingerprint equals the one it would write. A fingerprint covers everything a cell
is computed from: the job's settings and runtime, the content of its input files (manifest, vector
or response file, resource files) and the package's source. A finished cell is also copied under
'.finished/' beside it: Snakemake removes the outputs of a failed job, and the next run takes
back the finished cells whose fingerprint still matches; a successful job removes its copies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from ..storage import atomic_path, read_json

PACKAGE = Path(__file__).resolve().parents[1]
FINISHED = ".finished"
# Sources that never run in a sweep job: the study's analyses (but the rubric loader and the coding
# dimensions it reads), the report, the injection statistics.
NOT_IN_CELLS = ("study/", "report/", "injection/statistics.py")
IN_CELLS = ("study/rubric.py", "study/coding.py", "study/__init__.py")


@cache
def source_digest() -> str:
    """sha256 over the package's Python sources (relative path and bytes) that a sweep job can run:
    code that could change a cell's records (all but NOT_IN_CELLS)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name.startswith(NOT_IN_CELLS) and name not in IN_CELLS:
            continue
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def file_digest(path: Path | str) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(inputs: dict, **parts: Any) -> str:
    """The fingerprint of one cell: sha256 of its parts (JSON, keys sorted), the digests of its
    input files (name -> path) and the package's source digest."""
    data = {"parts": parts, "inputs": {name: file_digest(path) for name, path in sorted(inputs.items())},
            "source": source_digest()}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def finished_path(path: Path | str) -> Path:
    """Where a finished cell is kept beside its output: <folder>/.finished/<name>."""
    path = Path(path)
    return path.parent / FINISHED / path.name


def _stored_fingerprint(path: Path) -> str | None:
    try:
        return read_json(path).get("fingerprint")
    except Exception:  # an unreadable or foreign file is not current
        return None


def is_current(path: Path | str, expected: str) -> bool:
    """Whether the cell file at `path` holds fingerprint `expected`; a missing or stale one is taken
    back from its finished copy when that holds it (a failed job's cleanup removed or restored it)."""
    path = Path(path)
    if path.exists() and _stored_fingerprint(path) == expected:
        return True
    kept = finished_path(path)
    if kept.exists() and _stored_fingerprint(kept) == expected:
        with atomic_path(path) as tmp:
            shutil.copyfile(kept, tmp)
        return True
    return False


def keep_finished(path: Path | str) -> None:
    """Copy a just-written cell under '.finished/' (atomically), so that a failure of the job loses
    it not. A copy, not a link: Snakemake restores a failed job's updated outputs by writing the
    backup into the file, which would reach a link's content too."""
    kept = finished_path(path)
    kept.parent.mkdir(exist_ok=True)
    with atomic_path(kept) as tmp:
        shutil.copyfile(path, tmp)


def release_finished(paths: Iterable[Path | str]) -> None:
    """Remove the finished links of a job's cells once the job has succeeded."""
    for path in paths:
        finished_path(path).unlink(missing_ok=True)
