"""The CRD, the operator's conversion and the sidecar's validation agree with perfpilot_contract.

Every min, max, default and enum of the live-config part of crds/perfprofile.yaml is walked
through the operator's conversion (configure_request, and the PERFPILOT_CONFIG a new pod starts
with) into the sidecar's validation: accepted at the bounds, refused just outside with the field
named (by the schema here, and by the sidecar). CEL bounds of durations are read from the rules'
text and compared with the contract; the API server's verdict on them is in e2e/test_crd.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.errors import InvalidArgument
from perfpilot_agent.liveconfig import merge_proto, proto_from_dict
from perfpilot_contract import limits as L
from perfpilot_contract.durations import format_ns, parse_ns
from perfpilot_contract.liveconfig import LiveConfig
from perfpilot_contract.sharedcache import SecretRef
from perfpilot_operator.logic.desired import configure_request
from perfpilot_operator.logic.injection import initial_config

from crd_schema_walk import apply_defaults, load_crd, resolve, validate, version_schema

SCHEMA = version_schema(load_crd())
CHART_CRD = Path(__file__).resolve().parents[2] / "charts" / "perfpilot" / "crds" / "perfprofile.yaml"
BASE: dict[str, Any] = {"apiVersion": "perfpilot.io/v1alpha1", "kind": "PerfProfile",
                        "metadata": {"name": "p"}, "spec": {"selector": {"matchLabels": {"app": "a"}}}}
_CEL_BOUND = re.compile(r"duration\(self\) (>=|<=) duration\('([^']+)'\)")


def _known() -> frozenset[str]:
    return frozenset(L.KERNEL_NAMES)


SHARED_URL = "redis://redis.cache.svc:6379/0"
TLS_URL = "rediss://redis.cache.svc:6380/0"


def _doc(fields: dict[str, Any]) -> dict[str, Any]:
    """A profile setting `fields` (dotted paths; a cache.shared field brings the required url along)."""
    doc = copy.deepcopy(BASE)
    for path, value in fields.items():
        *parents, name = path.split(".")
        node = doc["spec"]
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    shared = doc["spec"].get("cache", {}).get("shared")
    if shared is not None:
        shared.setdefault("url", SHARED_URL)
    return doc


def _sidecar(fields: dict[str, Any]) -> LiveConfig:
    """kubectl apply (schema + defaults) -> operator's Configure -> sidecar; and the new-pod path."""
    doc = _doc(fields)
    errors = validate(doc, SCHEMA)
    assert not errors, errors
    spec = apply_defaults(doc, SCHEMA)["spec"]
    via_configure = merge_proto(LiveConfig(), configure_request(spec, 7).config, _known)
    via_env = merge_proto(LiveConfig(), proto_from_dict(json.loads(initial_config(spec))), _known)
    assert via_configure == via_env
    return via_configure


def _refused(fields: dict[str, Any], path: str) -> None:
    """The sidecar refuses it naming `path` (on both paths: Configure and PERFPILOT_CONFIG)."""
    spec = _doc(fields)["spec"]
    with pytest.raises(InvalidArgument, match=re.escape(path)):
        merge_proto(LiveConfig(), configure_request(spec, 7).config, _known)
    with pytest.raises(InvalidArgument, match=re.escape(path)):
        merge_proto(LiveConfig(), proto_from_dict(json.loads(initial_config(spec))), _known)


def _node(limit: L.Limit) -> dict[str, Any]:
    node: dict[str, Any] | None = resolve(SCHEMA, f"spec.{limit.path}")
    assert node is not None, f"spec.{limit.path} missing from the CRD"
    return node


def _cel_bounds(node: dict[str, Any]) -> tuple[int, int | None]:
    lo, hi = 0, None  # the duration pattern admits no sign: 0s is the floor without a rule
    for rule in node.get("x-kubernetes-validations", []):
        for op, text in _CEL_BOUND.findall(rule["rule"]):
            if op == ">=":
                lo = parse_ns(text)
            else:
                hi = parse_ns(text)
        if _CEL_BOUND.search(rule["rule"]):
            assert "must be between" in rule["messageExpression"]
    return lo, hi


def _value(limit: L.Limit, v: int) -> Any:
    return format_ns(v) if limit.kind == "duration" else v


def _read(cfg: LiveConfig, limit: L.Limit) -> Any:
    node: Any = cfg
    for part in limit.path.split("."):
        node = getattr(node, re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), part))
    return node


NUMERIC = [lim for lim in L.LIMITS if lim.kind in ("int", "duration")]


# ---------------------------------------------------------------- the CRD states the contract
def test_chart_crd_is_the_same_file() -> None:
    assert CHART_CRD.read_bytes() == (Path(__file__).resolve().parents[2] / "crds" / "perfprofile.yaml").read_bytes()


def _leaves(path: str, node: dict[str, Any]) -> set[str]:
    """The leaf fields under `path` (objects with properties are walked, e.g. cache.l1)."""
    props = node.get("properties")
    if node.get("type") != "object" or not props:
        return {path}
    return {leaf for name, sub in props.items() for leaf in _leaves(f"{path}.{name}", sub)}


def test_every_live_field_of_the_crd_is_in_the_contract() -> None:
    crd_fields = {leaf for section in L.SECTIONS
                  for leaf in _leaves(section, resolve(SCHEMA, f"spec.{section}") or {})}
    assert crd_fields == set(L.BY_PATH) | set(L.TEXT_BY_PATH)


@pytest.mark.parametrize("text", L.TEXTS, ids=lambda t: t.path)
def test_crd_patterns_are_the_contracts(text: L.Text) -> None:
    node = resolve(SCHEMA, f"spec.{text.path}")
    assert node is not None and (node["pattern"], node["maxLength"]) == (text.pattern, text.max_length)


@pytest.mark.parametrize("text", L.TEXTS, ids=lambda t: t.path)
def test_string_fields_refused_naming_the_field(text: L.Text) -> None:
    """A value the CRD pattern refuses is refused by the sidecar too, naming the field."""
    bad = "Bad Value!" if text is not L.SHARED_URL else "http://x"
    fields: dict[str, Any] = {text.path: bad}
    ref, _, leaf = text.path.rpartition(".")
    if ref.endswith("Secret"):  # credentialsSecret, tls.caSecret: {name, key}, the other one valid
        fields = {ref: {"name": "redis-auth", "key": "password", leaf: bad}, "cache.shared.url": TLS_URL}
    assert any(e.startswith(f"spec.{text.path}:") for e in validate(_doc(fields), SCHEMA))
    _refused(fields, text.path)
    too_long = {text.path: "a" * (text.max_length + 1)} if not ref.endswith("Secret") else None
    if too_long is not None and text is not L.SHARED_URL:
        _refused(too_long, text.path)


def test_shared_tier_end_to_end() -> None:
    """A full cache.shared walks through; credentials appear only as a Secret reference."""
    cfg = _sidecar({"cache.shared": {"url": "rediss://redis-0.redis:6380/3", "keyPrefix": "agent:",
                                     "username": "perfpilot", "timeout": "20ms", "maxPendingWrites": 5,
                                     "credentialsSecret": {"name": "redis-auth", "key": "password"}}})
    shared = cfg.cache.shared
    assert shared is not None and shared.endpoint() == (True, "redis-0.redis", 6380, 3)
    assert (shared.key_prefix, shared.username, shared.timeout, shared.max_pending_writes) == ("agent:", "perfpilot", 0.02, 5)
    assert shared.credentials is not None and shared.credentials.name == "redis-auth"
    assert shared.ca_secret is None
    assert _sidecar({"cache.ttl": "1m"}).cache.shared is None  # absent: off
    tls = _sidecar({"cache.shared": {"url": TLS_URL, "tls": {"caSecret": {"name": "redis-tls", "key": "ca.crt"}}}})
    assert tls.cache.shared is not None and tls.cache.shared.ca_secret == SecretRef("redis-tls", "ca.crt")
    assert _sidecar({"cache.shared": {"url": TLS_URL, "tls": {}}}).cache.shared.ca_secret is None  # type: ignore[union-attr]


def test_a_ca_secret_needs_a_tls_url() -> None:
    """Refused by the sidecar, and by the API server's CEL rule (e2e/test_crd.py runs it), naming
    cache.shared.tls.caSecret."""
    rule = next(r for r in resolve(SCHEMA, "spec.cache.shared")["x-kubernetes-validations"]
                if "caSecret" in r["rule"])
    assert (rule["fieldPath"], rule["message"]) == (
        ".tls.caSecret", "cache.shared.tls.caSecret needs a rediss:// cache.shared.url (TLS)")
    fields = {"cache.shared": {"url": SHARED_URL, "tls": {"caSecret": {"name": "redis-tls", "key": "ca.crt"}}}}
    _refused(fields, "cache.shared.tls.caSecret needs a rediss:// cache.shared.url (TLS), got redis://")
    with pytest.raises(InvalidArgument, match=re.escape("cache.shared.tls must be {caSecret:")):
        merge_proto(LiveConfig(), proto_from_dict({"cache": {"shared": {"url": TLS_URL, "tls": {"ca": "x"}}}}), _known)


def test_shared_url_with_credentials_is_refused_without_echoing_them() -> None:
    fields = {"cache.shared.url": "redis://user:hunter2@redis:6379"}
    assert any(e.startswith("spec.cache.shared.url:") for e in validate(_doc(fields), SCHEMA))
    with pytest.raises(InvalidArgument, match="cache.shared.url must not carry credentials") as info:
        merge_proto(LiveConfig(), configure_request(_doc(fields)["spec"], 7).config, _known)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("limit", NUMERIC, ids=lambda lim: lim.path)
def test_crd_bounds_and_defaults_are_the_contracts(limit: L.Limit) -> None:
    node = _node(limit)
    if limit.kind == "int":
        assert (node["minimum"], node["maximum"]) == (limit.lo, limit.hi)
    else:
        assert _cel_bounds(node) == (limit.lo, limit.hi)
    if limit.schema_default:
        assert node["default"] == _value(limit, limit.number)
    else:
        assert "default" not in node, f"{limit.path}: a schema default would take part in the pair's CEL rule"


def test_kernels_warm_is_an_enum_of_the_known_kernels() -> None:
    node = _node(L.KERNELS_WARM)
    assert node["items"]["enum"] == list(L.KERNEL_NAMES)
    assert node["maxItems"] == L.MAX_WARM and node["x-kubernetes-list-type"] == "set"
    assert node["default"] == [] and _node(L.KERNELS_PARALLEL)["default"] is L.KERNELS_PARALLEL.default


def test_kernel_registry_is_keyed_by_the_contracts_names() -> None:
    from perfpilot_agent.kernels import registry

    assert tuple(registry.KERNELS) == L.KERNEL_NAMES


def test_pair_rules_compare_only_fields_the_user_set() -> None:
    rules = {rule["rule"] for sub in ("pools", "heartbeat")
             for rule in (resolve(SCHEMA, f"spec.{sub}") or {}).get("x-kubernetes-validations", [])}
    assert any(r.startswith("!has(self.batchSize) || !has(self.maxQueue) ||") for r in rules)
    assert any(r.startswith("!has(self.interval) || !has(self.timeout) ||") for r in rules)


# ---------------------------------------------------------------- walking the bounds through
@pytest.mark.parametrize("limit", NUMERIC, ids=lambda lim: lim.path)
def test_bounds_are_accepted_end_to_end(limit: L.Limit) -> None:
    for v in (limit.lo, limit.hi):
        cfg = _sidecar({limit.path: _value(limit, v)})
        got = _read(cfg, limit)
        assert got == (v / 1e9 if limit.kind == "duration" else v), (limit.path, v)


@pytest.mark.parametrize("limit", NUMERIC, ids=lambda lim: lim.path)
def test_just_outside_is_refused_naming_the_field(limit: L.Limit) -> None:
    step = 1  # one integer, or one nanosecond
    outside = [limit.hi + step] + ([limit.lo - step] if limit.lo > 0 or limit.kind == "int" else [])
    for v in outside:
        fields = {limit.path: _value(limit, v)}
        if limit.kind == "int":  # the schema itself refuses it, naming the field
            assert any(e.startswith(f"spec.{limit.path}:") for e in validate(_doc(fields), SCHEMA))
        else:  # the CEL rule's bound (compared above); the schema pattern refuses any sign
            lo, hi = _cel_bounds(_node(limit))
            assert not lo <= parse_ns(fields[limit.path]) <= (hi if hi is not None else v)
        _refused(fields, limit.path)
    if limit.kind == "duration":  # negative: the CRD's pattern refuses it; the sidecar too
        assert validate(_doc({limit.path: "-1s"}), SCHEMA)
        _refused({limit.path: "-1s"}, limit.path)


def test_defaults_are_the_contracts_end_to_end() -> None:
    assert _sidecar({}) == LiveConfig()
    for section in L.SECTIONS:  # an empty section is sent whole, with the defaults
        assert configure_request({section: {}}, 1).config.HasField(section)


@pytest.mark.parametrize("name", L.KERNEL_NAMES)
def test_each_known_kernel_is_accepted(name: str) -> None:
    assert _sidecar({"kernels.warm": [name]}).kernels.warm == (name,)


def test_all_kernels_at_once_and_unknown_refused_naming_the_known_ones() -> None:
    assert _sidecar({"kernels.warm": list(L.KERNEL_NAMES)}).kernels.warm == L.KERNEL_NAMES
    errors = validate(_doc({"kernels.warm": ["cosine_topk", "nope"]}), SCHEMA)
    assert any(e.startswith("spec.kernels.warm[1]:") and all(k in e for k in L.KERNEL_NAMES) for e in errors)
    with pytest.raises(InvalidArgument, match=r"kernels.warm\[1\]: unknown kernel 'nope'; known: "
                                              + ", ".join(L.KERNEL_NAMES)):
        merge_proto(LiveConfig(), configure_request(_doc({"kernels.warm": ["cosine_topk", "nope"]})["spec"], 1).config,
                    _known)


# ---------------------------------------------------------------- the cases
def test_caching_off_is_accepted() -> None:
    cfg = _sidecar({"cache.ttl": "0s", "cache.maxEntries": 0})
    assert (cfg.cache.ttl, cfg.cache.max_entries) == (0.0, 0)


def test_max_queue_alone_is_accepted_with_a_fitting_batch_size() -> None:
    cfg = _sidecar({"pools.maxQueue": 64})
    assert (cfg.pools.max_queue, cfg.pools.batch_size) == (64, 64)
    cfg = _sidecar({"pools.batchSize": 5000})
    assert (cfg.pools.max_queue, cfg.pools.batch_size) == (5000, 5000)


def test_heartbeat_member_alone_is_accepted_with_a_fitting_partner() -> None:
    cfg = _sidecar({"heartbeat.interval": "150ms"})
    assert (cfg.heartbeat.interval, cfg.heartbeat.timeout) == (0.15, 0.075)
    cfg = _sidecar({"heartbeat.timeout": "1m"})
    assert (cfg.heartbeat.interval, cfg.heartbeat.timeout) == (120.0, 60.0)


def test_both_members_set_are_checked_and_named() -> None:
    _refused({"pools.maxQueue": 64, "pools.batchSize": 65}, "pools.batchSize (65) must be <= pools.maxQueue (64)")
    _refused({"heartbeat.interval": "1s", "heartbeat.timeout": "1s"},
             "heartbeat.timeout (1s) must be shorter than heartbeat.interval (1s)")


# ---------------------------------------------------------------- property: defaults never invalidate
def _field_values(limit: L.Limit) -> st.SearchStrategy[Any]:
    return st.integers(limit.lo, limit.hi).map(lambda v: _value(limit, v))


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={lim.path: _field_values(lim) for lim in NUMERIC}))
def test_any_profile_the_crd_accepts_is_accepted_by_the_sidecar(fields: dict[str, Any]) -> None:
    """Fields within their bounds, pair rules holding where both members are set (what the CRD's
    CEL checks): whatever the user left unset, the sidecar accepts it and keeps what was set."""
    def both(a: str, b: str) -> bool:
        return a in fields and b in fields

    if both("pools.batchSize", "pools.maxQueue") and fields["pools.batchSize"] > fields["pools.maxQueue"]:
        fields["pools.batchSize"] = fields["pools.maxQueue"]
    if both("heartbeat.timeout", "heartbeat.interval") and \
            parse_ns(fields["heartbeat.timeout"]) >= parse_ns(fields["heartbeat.interval"]):
        del fields["heartbeat.timeout"]
    cfg = _sidecar(fields)
    for path, value in fields.items():
        got = _read(cfg, L.BY_PATH[path])
        assert got == (parse_ns(value) / 1e9 if isinstance(value, str) else value), path


def test_configure_message_uses_well_formed_durations() -> None:
    msg: pb.AgentConfig = configure_request(_doc({"pools.batchWait": "1.5ms", "cache.ttl": "90s"})["spec"], 1).config
    assert (msg.pools.batch_wait.seconds, msg.pools.batch_wait.nanos) == (0, 1_500_000)
    assert (msg.cache.ttl.seconds, msg.cache.ttl.nanos) == (90, 0)
