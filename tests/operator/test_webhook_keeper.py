"""The leader keeps its webhook configurations: drift is patched back, a deletion re-created
where RBAC allows, else reported (log naming the fix, Event, metric)."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from perfpilot_operator import metrics as prom
from perfpilot_operator.clients.agents import AgentClients, ClientIdentity
from perfpilot_operator.leader import Leadership
from perfpilot_operator.logic import webhooks
from perfpilot_operator.runtime import Runtime
from perfpilot_operator.settings import Settings
from perfpilot_operator.webhook_keeper import Keeper, desired

CFG = Settings(webhook_service="perfpilot-system/perfpilot", namespace="perfpilot-system")


def stored(body: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns: the object plus server-set metadata."""
    out = copy.deepcopy(body)
    out["metadata"].update(resourceVersion="41", uid="u", generation=1)
    return out


def test_a_stored_configuration_equal_to_its_rendering_has_no_drift() -> None:
    for body in desired(CFG, b"CA"):
        assert webhooks.drift(stored(body), body) == []


@pytest.mark.parametrize("edit, expect", [
    (lambda w: w.update(failurePolicy="Ignore"), "failurePolicy: 'Ignore' -> 'Fail'"),
    (lambda w: w["clientConfig"].update(caBundle="b3RoZXI="), "caBundle: not the operator's CA"),
    (lambda w: w.update(objectSelector={}), "objectSelector"),
    (lambda w: w["namespaceSelector"].pop("matchExpressions"), "namespaceSelector"),
    (lambda w: w["clientConfig"]["service"].update(port=1), "clientConfig"),
    (lambda w: w.update(matchConditions=[{"name": "x", "expression": "false"}]),
     "matchConditions"),
])
def test_drift_names_the_changed_field(edit: Any, expect: str) -> None:
    body = desired(CFG, b"CA")[0]
    current = stored(body)
    edit(current["webhooks"][0])
    changes = webhooks.drift(current, body)
    assert len(changes) >= 1 and any(expect in c for c in changes), changes
    patch = webhooks.restore_patch(current, body)
    assert patch == [{"op": "test", "path": "/metadata/resourceVersion", "value": "41"},
                     {"op": "replace", "path": "/webhooks", "value": body["webhooks"]}]


def test_an_added_webhook_is_drift() -> None:
    body = desired(CFG, b"CA")[1]
    current = stored(body)
    current["webhooks"].append({**current["webhooks"][0], "name": "evil.example.com"})
    assert webhooks.drift(current, body) == [
        "webhooks[evil.example.com]: added behind the operator's back"]


def test_refusal_names_say_what_is_down() -> None:
    """The API server's refusal quotes the webhook's name and URL (path) when nobody answers."""
    mutating, validating = desired(CFG, b"CA")
    hook = mutating["webhooks"][0]
    assert "sidecar-injector" in hook["name"]
    assert hook["clientConfig"]["service"]["path"] == \
        "/perfpilot-sidecar-injector-unavailable-check-operator-pods"
    assert "profile-validator-unavailable" in validating["webhooks"][0]["clientConfig"][
        "service"]["path"]
    local = desired(Settings(webhook_url_port=12345, webhook_port=1), b"CA")[0]
    assert local["webhooks"][0]["clientConfig"]["url"].startswith("https://127.0.0.1:12345/")


class FakeKube:
    def __init__(self, may_create: bool) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.may_create = may_create
        self.patches: list[tuple[str, list[dict[str, Any]]]] = []
        self.events: list[tuple[dict[str, Any], str, str, str]] = []

    async def read_webhook_configuration(self, kind: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get(name)
        return copy.deepcopy(obj) if obj else None

    async def create_webhook_configuration(self, body: dict[str, Any]) -> None:
        if not self.may_create:
            raise ApiException(status=403, reason="Forbidden")
        self.objects[body["metadata"]["name"]] = stored(body)

    async def patch_webhook_configuration(self, kind: str, name: str,
                                          patch: list[dict[str, Any]]) -> None:
        self.patches.append((name, patch))
        self.objects[name]["webhooks"] = patch[1]["value"]

    async def post_event(self, obj: dict[str, Any], *, type_: str, reason: str,
                         message: str) -> None:
        self.events.append((obj, type_, reason, message))


def runtime(kube: FakeKube) -> Runtime:
    rt = Runtime(settings=CFG, agents=AgentClients(ClientIdentity(b"", b"")), kube=kube,
                 ca_bundle=b"CA")
    rt.leadership = Leadership(identity="me", namespace="perfpilot-system",
                               lease="perfpilot-operator")
    return rt


def present(name: str) -> float:
    return float(prom.WEBHOOK_CONFIGURATION_PRESENT.labels(name)._value.get())  # noqa: SLF001


def test_drift_is_patched_back_and_deletion_recreated_where_allowed() -> None:
    kube = FakeKube(may_create=True)
    keeper = Keeper(runtime(kube))
    asyncio.run(keeper.run_once())
    assert set(kube.objects) == {CFG.mutating_webhook, CFG.validating_webhook}
    asyncio.run(keeper.run_once())
    assert kube.patches == []                      # as rendered: nothing to do
    kube.objects[CFG.mutating_webhook]["webhooks"][0]["failurePolicy"] = "Ignore"
    del kube.objects[CFG.validating_webhook]
    asyncio.run(keeper.run_once())
    assert kube.objects[CFG.mutating_webhook]["webhooks"][0]["failurePolicy"] == "Fail"
    assert CFG.validating_webhook in kube.objects
    assert present(CFG.validating_webhook) == 1 and kube.events == []


def test_deletion_without_create_rights_is_reported_loudly(caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    kube = FakeKube(may_create=False)
    for body in desired(CFG, b"CA"):
        kube.objects[body["metadata"]["name"]] = stored(body)
    keeper = Keeper(runtime(kube))
    del kube.objects[CFG.mutating_webhook]
    with caplog.at_level(logging.ERROR, logger="perfpilot_operator.webhooks"):
        asyncio.run(keeper.run_once())
        asyncio.run(keeper.run_once())            # once, not every resync
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "helm upgrade --install" in errors[0] and \
        "helm rollback" in errors[0] and CFG.mutating_webhook in errors[0]
    assert present(CFG.mutating_webhook) == 0
    [(obj, type_, reason, _)] = kube.events
    assert (obj["kind"], obj["metadata"]["name"], type_, reason) == (
        "Lease", "perfpilot-operator", "Warning", "WebhookConfigurationMissing")
    # Restored by Helm (without caBundle): the next pass patches the CA in.
    body = desired(CFG, b"")[0]
    kube.objects[CFG.mutating_webhook] = stored(body)
    asyncio.run(keeper.run_once())
    assert present(CFG.mutating_webhook) == 1
    assert kube.objects[CFG.mutating_webhook]["webhooks"] == desired(CFG, b"CA")[0]["webhooks"]
