"""The JSON Schema of ``graphlens.json`` (``graphlens.schema.json``, shipped with the package).

``validate_manifest`` checks a manifest against it (needs ``jsonschema``: the ``dev`` extra; without it
nothing is checked); ``field_table`` renders the top-level fields as the README's Markdown table.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from graphlens.errors import BundleError

SCHEMA_FILE = "graphlens.schema.json"


@lru_cache(maxsize=1)
def load_schema() -> dict:
    return json.loads(resources.files(__name__).joinpath(SCHEMA_FILE).read_text())


def validate_manifest(manifest: dict, where: str = "manifest") -> bool:
    """Raise BundleError naming the first field that breaks the schema; False when jsonschema is absent."""
    try:
        import jsonschema
    except ImportError:
        return False
    document = json.loads(json.dumps(manifest))  # as a reader sees it (tuples → lists)
    validator = jsonschema.Draft202012Validator(load_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BundleError(f"{where} breaks graphlens.schema.json at {path}: {error.message[:300]}")
    return True


def field_table() -> str:
    """The manifest's top-level fields and their descriptions, as a Markdown table."""
    schema = load_schema()
    required = set(schema["required"])
    rows = ["| field | required | meaning |", "| --- | --- | --- |"]
    for name, spec in schema["properties"].items():
        rows.append(f"| `{name}` | {'yes' if name in required else ''} | {spec['description']} |")
    return "\n".join(rows)
