"""The leader keeps perfpilot's two webhook configurations as rendered (logic/webhooks.py).

Changed behind its back (caBundle, failurePolicy, selectors, clientConfig): patched back, by
name, within one resync, in every mode. Deleted: re-created where RBAC allows it (the local
mode: an operator out of the cluster with admin credentials registers them by URL). The chart
grants no `create` on webhook configurations (RBAC cannot limit create by name, and whoever may
create one may rewrite every pod of the cluster), so there the deletion is reported loudly
instead: an ERROR log naming the fix, a Warning Event on the leader Lease and the metric
perfpilot_operator_webhook_configuration_present{name}=0, until `helm upgrade`/`helm rollback`
puts it back (the next resync then patches in the caBundle).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from perfpilot_operator import metrics as prom
from perfpilot_operator.logic import webhooks
from perfpilot_operator.runtime import Runtime
from perfpilot_operator.settings import Settings

log = logging.getLogger("perfpilot_operator.webhooks")
REMIND_S = 300.0   # a missing configuration is logged again at ERROR this often


def desired(cfg: Settings, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The two configurations this operator serves, as the chart renders them (plus caBundle)."""
    def client(path: str) -> dict[str, Any]:
        return webhooks.client_config(path=path, ca_bundle=ca_bundle,
                                      url_host=cfg.webhook_url_host, port=cfg.webhook_url_port or cfg.webhook_port,
                                      service=cfg.webhook_service)
    return [
        webhooks.mutating_configuration(
            operator_namespace=cfg.namespace, failure_policy=cfg.failure_policy,
            exclude_namespaces=cfg.exclude_namespaces, namespace_labels=cfg.namespace_labels,
            name=cfg.mutating_webhook, client=client(webhooks.POD_HANDLER_ID)),
        webhooks.validating_configuration(
            failure_policy=cfg.failure_policy, namespace_labels=cfg.namespace_labels,
            name=cfg.validating_webhook, client=client(webhooks.PROFILE_HANDLER_ID)),
    ]


@dataclass
class Keeper:
    rt: Runtime
    seen: set[str] = field(default_factory=set)          # found present at least once
    missing_since: dict[str, float] = field(default_factory=dict)
    reminded: dict[str, float] = field(default_factory=dict)

    async def run_once(self) -> None:
        ca = self.rt.ca_bundle     # kept current by ReplicaPKI (a rotated CA)
        for body in desired(self.rt.settings, ca):
            try:
                await self._keep(body)
            except Exception as e:  # noqa: BLE001 - the next resync tries again
                log.warning(f"cannot check {body['kind']} {body['metadata']['name']}: {e}")

    async def _keep(self, body: dict[str, Any]) -> None:
        kind, name = body["kind"], body["metadata"]["name"]
        current = await self.rt.kube.read_webhook_configuration(kind, name)
        if current is None:
            prom.WEBHOOK_CONFIGURATION_PRESENT.labels(name).set(0)
            await self._missing(body)
            return
        self.seen.add(name)
        if name in self.missing_since:
            took = time.monotonic() - self.missing_since.pop(name)
            self.reminded.pop(name, None)
            log.info(f"{kind} {name} is back after {took:.1f}s")
        prom.WEBHOOK_CONFIGURATION_PRESENT.labels(name).set(1)
        changes = webhooks.drift(current, body)
        if not changes:
            return
        await self.rt.kube.patch_webhook_configuration(
            kind, name, webhooks.restore_patch(current, body))
        prom.WEBHOOK_CONFIGURATION_RESTORES.labels(name, "patched").inc()
        log.warning(f"{kind} {name} was changed behind the operator's back; patched back: "
                    + "; ".join(changes[:5]))

    async def _missing(self, body: dict[str, Any]) -> None:
        kind, name = body["kind"], body["metadata"]["name"]
        now = time.monotonic()
        first = name not in self.missing_since
        self.missing_since.setdefault(name, now)
        try:
            await self.rt.kube.create_webhook_configuration(body)
        except ApiException as e:
            if e.status != 403:
                raise
        else:
            took = now - self.missing_since.pop(name)
            prom.WEBHOOK_CONFIGURATION_PRESENT.labels(name).set(1)
            prom.WEBHOOK_CONFIGURATION_RESTORES.labels(name, "created").inc()
            if name in self.seen:
                log.warning(f"{kind} {name} was deleted; re-created it {took:.1f}s after this "
                            f"replica first saw it missing")
            else:
                log.info(f"{kind} {name} registered")
            self.seen.add(name)
            return
        # Least privilege: this ServiceAccount may not create webhook configurations.
        message = (f"{kind} {name} was deleted: opted-in pods get no sidecar and PerfProfiles "
                   f"are not validated. The operator may not re-create it (its RBAC grants no "
                   f"create on webhook configurations); restore it with `helm upgrade --install "
                   f"<release> <chart> -n {self.rt.settings.namespace} --reuse-values` or "
                   f"`helm rollback <release> -n {self.rt.settings.namespace}`")
        if first or now - self.reminded.get(name, 0.0) >= REMIND_S:
            log.error(message)
            self.reminded[name] = now
        if first:
            ld = self.rt.leadership
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": ld.lease or "perfpilot", "namespace":
                                  ld.namespace or self.rt.settings.namespace}}
            await self.rt.kube.post_event(lease, type_="Warning",
                                          reason="WebhookConfigurationMissing", message=message)
