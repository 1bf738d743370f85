"""A small, pure walker for the PerfProfile CRD's OpenAPI schema (no cluster, pyyaml only).

It knows the subset of structural-schema keywords the CRD uses: type, properties,
additionalProperties, items, required, enum, minimum/maximum (+ exclusive), minLength/maxLength,
pattern, minItems/maxItems, maxProperties, default, x-kubernetes-int-or-string,
x-kubernetes-preserve-unknown-fields and x-kubernetes-list-type (set / map). CEL rules are not
evaluated here (the e2e suite proves them on the real API server).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "perfprofile.yaml"

Schema = dict[str, Any]


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    (crd,) = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    return crd


def version_schema(crd: dict[str, Any], version: str = "v1alpha1") -> Schema:
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return v["schema"]["openAPIV3Schema"]


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Yield (path, subschema) for every node: `spec.alerts[]`, `spec.selector.matchLabels{}`."""
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")


def properties(schema: Schema) -> Iterator[tuple[str, Schema]]:
    """Only the named properties (what `kubectl explain` lists as FIELDS)."""
    for path, sub in walk(schema):
        if path and not path.endswith(("[]", "{}")):
            yield path, sub


def resolve(schema: Schema, path: str) -> Schema | None:
    """The subschema at a dotted path such as `status.pods.selected` or `spec.alerts[].name`."""
    node: Schema | None = schema
    for part in re.findall(r"[^.\[\]]+|\[\]", path):
        if node is None:
            return None
        if part == "[]":
            node = node.get("items")
        else:
            node = (node.get("properties") or {}).get(part)
    return node


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def _type_ok(value: Any, schema: Schema) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    t = schema.get("type")
    if t is None:
        return True
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[t])


def validate(value: Any, schema: Schema, path: str = "") -> list[str]:
    """Structural errors of `value` against `schema`, as `path: message` strings."""
    where = path or "<root>"
    if not _type_ok(value, schema):
        kind = "integer,string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        return [f"{where}: must be of type {kind}, got {type(value).__name__}"]
    errs: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{where}: unsupported value {value!r}, supported {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            lo = schema["minimum"]
            if value < lo or (schema.get("exclusiveMinimum") and value == lo):
                errs.append(f"{where}: {value} below minimum {lo}")
        if "maximum" in schema:
            hi = schema["maximum"]
            if value > hi or (schema.get("exclusiveMaximum") and value == hi):
                errs.append(f"{where}: {value} above maximum {hi}")
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)):
            errs.append(f"{where}: longer than {schema['maxLength']}")
        if len(value) < schema.get("minLength", 0):
            errs.append(f"{where}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errs.append(f"{where}: more than {schema['maxItems']} items")
        lt = schema.get("x-kubernetes-list-type")
        if lt == "set" and len({repr(v) for v in value}) != len(value):
            errs.append(f"{where}: duplicate items in a set")
        if lt == "map":
            keys = [tuple(i.get(k) for k in schema["x-kubernetes-list-map-keys"]) for i in value]
            if len(set(keys)) != len(keys):
                errs.append(f"{where}: duplicate map keys {keys}")
        for i, item in enumerate(value):
            errs += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        if len(value) > schema.get("maxProperties", len(value)):
            errs.append(f"{where}: more than {schema['maxProperties']} properties")
        for req in schema.get("required", []):
            if req not in value:
                errs.append(f"{path + '.' if path else ''}{req}: required")
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            sub_path = f"{path}.{k}" if path else k
            if k in props:
                errs += validate(v, props[k], sub_path)
            elif isinstance(extra, dict):
                errs += validate(v, extra, sub_path)
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and path != "metadata":
                errs.append(f"{sub_path}: unknown field")
    return errs


def apply_defaults(value: Any, schema: Schema) -> Any:
    """The API server's defaulting: fill `default` of absent properties, recursively."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(value[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for k in value:
                value[k] = apply_defaults(value[k], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(v, schema["items"]) for v in value]
    return value


def cel_rules(schema: Schema) -> Iterator[tuple[str, Schema, dict[str, Any]]]:
    """(path, subschema, rule) for every x-kubernetes-validations entry."""
    for path, sub in walk(schema):
        for rule in sub.get("x-kubernetes-validations", []):
            yield path, sub, rule
