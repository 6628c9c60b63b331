"""Atomic output files and the provenance every output carries."""

import json
import os
import platform
import shutil
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import h5py

from . import __version__

_PACKAGES = (
    "torch", "transformers", "accelerate", "numpy", "h5py", "gguf", "safetensors", "scipy", "pandas",
    "statsmodels", "pingouin", "scikit-learn", "umap-learn", "matplotlib", "seaborn",
)


@contextmanager
def atomic_path(path):
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


def write_text(path, text):
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, data):
    """Write JSON atomically, keys in a stable order, so equal data gives equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(path, table) -> None:
    """Write a DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def read_json(path):
    return json.loads(Path(path).read_text())


@contextmanager
def atomic_h5(path):
    """Open a new HDF5 file for writing; it appears at `path` only once closed successfully."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as handle:
            yield handle


def set_attrs(node, attrs):
    """Store a dict as HDF5 attributes; nested values and None become JSON strings."""
    for key, value in attrs.items():
        if value is None or isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, sort_keys=True)
        node.attrs[key] = value


def versions():
    """Versions of Python, the platform and the packages that shape the numbers."""
    found = {"python": sys.version.split()[0], "platform": platform.platform(), "llm_introspection": __version__}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
