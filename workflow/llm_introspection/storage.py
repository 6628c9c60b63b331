"""Atomic output files and the provenance every output carries."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import pandas as pd

from . import __version__
from .errors import InputError

_PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "numpy", "h5py", "gguf", "safetensors", "scipy", "pandas",
    "statsmodels", "pingouin", "scikit-learn", "umap-learn", "matplotlib", "seaborn",
)


# The rule that writes each kind of workflow file, by the start of its path (first match wins).
_PRODUCERS = (
    ("results/models/", "prepare_model"),
    ("results/generations/", "generate"),
    ("results/entropy/", "generate"),
    ("results/activations/", "trace"),
    ("results/coding/keyword/", "code_keywords"),
    ("results/judge/", "judge"),
    ("results/injection/vectors/", "concept_vectors"),
    ("results/injection/detection_graded/", "grade_injection"),
    ("results/injection/", "inject_{experiment}"),  # one rule per experiment: results/injection/<experiment>/
    ("results/statistics/content_statistics.csv", "content_statistics"),
    ("results/statistics/mixed_effects.json", "content_statistics"),
    ("results/statistics/scaling_statistics.json", "content_statistics"),
    ("results/statistics/entropy_", "entropy_statistics"),
    ("results/statistics/agreement_statistics.json", "agreement_statistics"),
    ("results/statistics/probing_statistics.json", "probes"),
    ("results/probing/probes.csv", "probes"),
    ("results/probing/embeddings.csv", "embeddings"),
    ("results/statistics/injection_", "injection_statistics"),
    ("results/finetune/", "finetune"),  # a variant's data/ folder: detection_data (see producer)
)


def producer(path: Path | str) -> tuple[str, str] | None:
    """The rule that writes a workflow file and the output to force to rebuild it (a prepared
    model's files: its manifest), from the file's path; None for a file no rule writes."""
    match = re.search(r"(?:^|/)(results/.*)$", Path(path).as_posix())
    if match is None:
        return None
    target = match.group(1)
    for prefix, rule in _PRODUCERS:
        if target.startswith(prefix):
            if rule == "prepare_model":
                target = "/".join(target.split("/")[:3]) + "/manifest.json"
            if rule == "finetune" and target.split("/")[4:5] == ["data"]:
                rule = "detection_data"
            if "{experiment}" in rule:
                rule = rule.format(experiment=target.split("/")[2])
            return rule, target
    return None


def unreadable(path: Path | str, error: Exception) -> InputError:
    """The error for a file that cannot be decoded: it names the file and, for a workflow output,
    the command (and rule) that rebuilds it."""
    message = f"{path} is unreadable (truncated or corrupt: {type(error).__name__}: {error})"
    found = producer(path)
    if found:
        rule, target = found
        message += f": rebuild it with `snakemake --forcerun {target}` (rule {rule})"
    return InputError(message)


def remove_stale_temporaries(paths: Iterable[Path | str]) -> list[Path]:
    """Remove the '.tmp-PID-name' leftovers that killed jobs left of these outputs; return them."""
    removed = []
    for path in map(Path, paths):
        pattern = re.compile(r"\.tmp-\d+-" + re.escape(path.name))
        if not path.parent.is_dir():
            continue
        for stale in path.parent.iterdir():
            if pattern.fullmatch(stale.name):
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
                removed.append(stale)
    return removed


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path (file or directory) beside `path`; rename it to `path` on success.

    A crash or kill leaves at most a '.tmp-*' file, never a file at `path` that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


def write_text(path: Path | str, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, data: Any) -> None:
    """Write JSON atomically, keys in a stable order, so equal data gives equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(path: Path | str, table: pd.DataFrame) -> None:
    """Write a DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def read_json(path: Path | str) -> Any:
    """Parse a JSON file; one that does not decode raises `unreadable`."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise unreadable(path, error) from None


def read_csv(path: Path | str) -> pd.DataFrame:
    """Read a CSV file; one that does not parse raises `unreadable`."""
    try:
        return pd.read_csv(path)
    except ValueError as error:  # ParserError, EmptyDataError, UnicodeDecodeError
        raise unreadable(path, error) from None


@contextmanager
def open_h5(path: Path | str) -> Iterator[h5py.File]:
    """Open an HDF5 file to read; one that does not open or read raises `unreadable`."""
    try:
        with h5py.File(path, "r") as handle:
            yield handle
    except OSError as error:  # h5py's error for a truncated or corrupt file or dataset
        raise unreadable(path, error) from None


@contextmanager
def atomic_h5(path: Path | str) -> Iterator[h5py.File]:
    """Open a new HDF5 file for writing; it appears at `path` only once closed successfully."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as handle:
            yield handle


def set_attrs(node: h5py.Group | h5py.Dataset, attrs: Mapping[str, Any]) -> None:
    """Store a dict as HDF5 attributes; nested values and None become JSON strings."""
    for key, value in attrs.items():
        if value is None or isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, sort_keys=True)
        node.attrs[key] = value


def versions() -> dict[str, str | None]:
    """Versions of Python, the platform and the packages that shape the numbers."""
    found = {"python": sys.version.split()[0], "platform": platform.platform(), "llm_introspection": __version__}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
