"""Strict JSON schemas for kubeconform, made here because this machine cannot download them.

Built-in kinds come from the Kubernetes OpenAPI spec (swagger.json of the pinned version, copied
by scripts/ensure-peers.sh), custom kinds from their CRDs' openAPIV3Schema. Both are converted the
way kubeconform's own openapi2jsonschema does for its "-standalone-strict" schemas: every object
that lists its properties refuses others, int-or-string and quantities take either form, and each
file stands alone (the definitions it references are copied in). Files are named as kubeconform's
`{{ .ResourceKind }}{{ .KindSuffix }}.json` template expects.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REF = "#/definitions/"
INT_OR_STRING: dict[str, Any] = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY: dict[str, Any] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
# The template kubeconform is given: its own variables, filled per resource.
LOCATION = "{{ .ResourceKind }}{{ .KindSuffix }}.json"


def file_name(api_version: str, kind: str) -> str:
    """kubeconform's name for a kind's schema (registry.go: kind, first label of group, version)."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0].lower()}-{version.lower()}" if group else f"-{version.lower()}"
    return f"{kind.lower()}{suffix}.json"


def _strict(node: Any, *, crd: bool) -> Any:
    """Deep-convert one OpenAPI schema node to a strict JSON schema node."""
    if isinstance(node, list):
        return [_strict(n, crd=crd) for n in node]
    if not isinstance(node, dict):
        return node
    if crd and node.get("x-kubernetes-int-or-string"):
        return {**INT_OR_STRING, **{k: v for k, v in node.items() if k in ("description",)}}
    if node.get("format") == "int-or-string":
        return dict(INT_OR_STRING)
    out = {k: _strict(v, crd=crd) for k, v in node.items()}
    if "properties" in node and "additionalProperties" not in node and \
            not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if crd and node.get("nullable") and isinstance(node.get("type"), str):
        out["type"] = [node["type"], "null"]
    return out


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF):
            yield ref[len(REF):]
        for v in node.values():
            yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def builtin_schemas(swagger: Path, out: Path) -> int:
    """Write a standalone strict schema for every kind the spec defines; returns how many."""
    definitions: dict[str, Any] = json.loads(swagger.read_text())["definitions"]
    converted = {name: dict(QUANTITY) if name.endswith(".api.resource.Quantity")
                 else _strict(d, crd=False) for name, d in definitions.items()}
    written = 0
    for name, d in definitions.items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            needed, todo = set(), [name]
            while todo:
                n = todo.pop()
                if n not in needed:
                    needed.add(n)
                    todo.extend(_refs(converted[n]))
            schema = {**converted[name], "definitions": {n: converted[n] for n in sorted(needed)}}
            (out / file_name(api_version, gvk["kind"])).write_text(json.dumps(schema))
            written += 1
    return written


def crd_schemas(crd: dict[str, Any], out: Path) -> list[str]:
    """Write one strict schema per served version of a CRD; returns the file names."""
    spec = crd["spec"]
    names = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]), crd=True)
        props = schema.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
        schema.setdefault("additionalProperties", False)
        name = file_name(f"{spec['group']}/{version['name']}", spec["names"]["kind"])
        (out / name).write_text(json.dumps(schema))
        names.append(name)
    return names
