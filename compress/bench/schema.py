"""The bench report's JSON Schema (schema.json) and a validator for the part of JSON Schema it uses.

The schema documents every field of bench.json. `validate_report` checks a
report against it before anything is written, so a report that breaks the
documented format fails loudly at the source. The validator covers the
keywords schema.json uses (type, const, enum, required, properties,
additionalProperties, items, minItems, minimum, maximum, $ref to #/$defs) and
refuses any other, so the schema cannot silently grow a keyword nobody checks;
where the `jsonschema` package is installed the tests also validate with it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("schema.json")

_TYPES = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}
_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs"}
_KNOWN = _ANNOTATIONS | {"type", "const", "enum", "required", "properties", "additionalProperties", "items",
                         "minItems", "minimum", "maximum", "$ref"}


class SchemaError(ValueError):
    """A report does not match schema.json; the message names the path and the problem."""


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate(instance: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """Every violation as 'path: problem' (empty list: valid)."""
    root = schema or load_schema()
    problems: list[str] = []
    _check(instance, root, root, "$", problems)
    return problems


def validate_report(report: dict[str, Any]) -> None:
    problems = validate(report)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise SchemaError(f"the bench report does not match compress/bench/schema.json: {shown}")


def _resolve(ref: str, root: dict) -> dict:
    if not ref.startswith("#/"):
        raise SchemaError(f"only local references are supported, got {ref}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check(x: Any, schema: dict, root: dict, path: str, problems: list[str]) -> None:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise SchemaError(f"schema keyword(s) {sorted(unknown)} at {path} are not supported by this validator")
    if "$ref" in schema:
        _check(x, _resolve(schema["$ref"], root), root, path, problems)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](x) for t in types):
            problems.append(f"{path}: expected {' or '.join(types)}, got {type(x).__name__}")
            return
    if "const" in schema and x != schema["const"]:
        problems.append(f"{path}: must be {schema['const']!r}, got {x!r}")
    if "enum" in schema and x not in schema["enum"]:
        problems.append(f"{path}: must be one of {schema['enum']}, got {x!r}")
    if _TYPES["number"](x):
        if "minimum" in schema and x < schema["minimum"]:
            problems.append(f"{path}: {x} is below the minimum {schema['minimum']}")
        if "maximum" in schema and x > schema["maximum"]:
            problems.append(f"{path}: {x} is above the maximum {schema['maximum']}")
    if isinstance(x, dict):
        for key in schema.get("required", []):
            if key not in x:
                problems.append(f"{path}: missing required key '{key}'")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in x.items():
            if key in props:
                _check(value, props[key], root, f"{path}.{key}", problems)
            elif extra is False:
                problems.append(f"{path}: unexpected key '{key}'")
            elif isinstance(extra, dict):
                _check(value, extra, root, f"{path}.{key}", problems)
    if isinstance(x, list):
        if "minItems" in schema and len(x) < schema["minItems"]:
            problems.append(f"{path}: needs at least {schema['minItems']} item(s), has {len(x)}")
        if "items" in schema:
            for i, item in enumerate(x):
                _check(item, schema["items"], root, f"{path}[{i}]", problems)
