"""Read YAML and validate it against a JSON schema, with errors that name the key.

Free of torch imports: the Snakefile imports it at parse time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import InputError

# The JSON schemas of the config and of every resource file: config/schema/ of this repository.
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "config" / "schema"


def schema_path(name: str) -> Path:
    """The schema of one kind of file: config/schema/<name>.schema.yaml."""
    return SCHEMA_DIR / f"{name}.schema.yaml"


def read_yaml(path: Path | str) -> object:
    """Parse a YAML file, or raise InputError naming it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML: {error}") from None


def _key_path(error):
    path = ".".join(str(part) for part in error.absolute_path)
    return path or "(top level)"


def _validator_with_defaults(schema):
    """A Draft 2020-12 validator that also fills in the schema's defaults."""
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, subschema["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    extended = jsonschema.validators.extend(base, {"properties": set_defaults})
    return extended(schema)


def validate(data: Any, schema: Path | str, what: str) -> Any:
    """Validate `data` in place (defaults filled in) against a schema file or the schema of that
    name (schema_path); raise InputError naming `what` and the key."""
    path = schema if isinstance(schema, Path) or "/" in str(schema) else schema_path(schema)
    validator = _validator_with_defaults(read_yaml(path))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"key '{_key_path(e)}': {e.message}" for e in errors]
        raise InputError(f"{what} is invalid:\n  " + "\n  ".join(lines))
    return data


def read_resource(path: Path | str, schema: str, what: str) -> tuple[Path, dict, str]:
    """A resource file validated against its own schema: its path, data and sha256."""
    path = Path(path)
    data = validate(read_yaml(path), schema, f"{what} {path}")
    return path, data, hashlib.sha256(path.read_bytes()).hexdigest()
