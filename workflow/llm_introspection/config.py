"""Read YAML and validate it against a JSON schema, with errors that name the key.

Free of torch imports: the Snakefile imports it at parse time.
"""

from pathlib import Path

import jsonschema
import yaml

from .errors import InputError


def read_yaml(path):
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


def validate(data, schema_path, what):
    """Validate `data` in place (defaults filled in); raise InputError naming `what` and the key."""
    validator = _validator_with_defaults(read_yaml(schema_path))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"key '{_key_path(e)}': {e.message}" for e in errors]
        raise InputError(f"{what} is invalid:\n  " + "\n  ".join(lines))
    return data
