"""The few Kubernetes API calls the operator makes outside kopf's own watches/patches.

The official client is synchronous; calls run in a thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from perfpilot_operator.logic.coverage import RESTARTED_AT


def load() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.version_api = client.VersionApi(api)
        self.apps = client.AppsV1Api(api)

    async def server_minor(self) -> int:
        info = await asyncio.to_thread(self.version_api.get_code)
        return int("".join(ch for ch in info.minor if ch.isdigit()) or 0)

    async def resize_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """PATCH pods/<name>/resize (strategic merge): new requests/limits, no restart."""
        await asyncio.to_thread(self.core.patch_namespaced_pod_resize, name, namespace, patch)

    async def prometheus_rules_available(self) -> bool:
        """Whether the cluster serves monitoring.coreos.com/v1 PrometheusRules."""
        def run() -> bool:
            try:
                res = self.custom.get_api_resources("monitoring.coreos.com", "v1")
            except ApiException as e:
                if e.status == 404:
                    return False
                raise
            return any(r.name == "prometheusrules" for r in (res.resources or []))
        return await asyncio.to_thread(run)

    async def apply_prometheus_rule(self, obj: dict[str, Any]) -> str:
        """Create or update the object; returns "created", "updated" or "unchanged"."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        args = ("monitoring.coreos.com", "v1", ns, "prometheusrules")

        def run() -> str:
            try:
                self.custom.create_namespaced_custom_object(*args, obj)
                return "created"
            except ApiException as e:
                if e.status != 409:
                    raise
            current = cast(dict[str, Any], self.custom.get_namespaced_custom_object(*args, name))
            if (current.get("spec") == obj["spec"]
                    and current["metadata"].get("labels") == obj["metadata"]["labels"]):
                return "unchanged"
            body = {**obj, "metadata": {**obj["metadata"],
                                        "resourceVersion": current["metadata"]["resourceVersion"]}}
            self.custom.replace_namespaced_custom_object(*args, name, body)
            return "updated"
        return await asyncio.to_thread(run)

    async def delete_prometheus_rule(self, namespace: str, name: str) -> bool:
        def run() -> bool:
            try:
                self.custom.delete_namespaced_custom_object(
                    "monitoring.coreos.com", "v1", namespace, "prometheusrules", name)
                return True
            except ApiException as e:
                if e.status != 404:
                    raise
                return False
        return await asyncio.to_thread(run)

    async def list_profiles(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """PerfProfiles with status, read live: of one namespace for the webhook's fallback (kopf's
        index may not yet have seen a profile applied a moment before its workload), of the
        whole cluster for the resync loop's one read per pass."""
        def run() -> list[dict[str, Any]]:
            if namespace is None:
                out = self.custom.list_cluster_custom_object(
                    "perfpilot.io", "v1alpha1", "perfprofiles")
            else:
                out = self.custom.list_namespaced_custom_object(
                    "perfpilot.io", "v1alpha1", namespace, "perfprofiles")
            return list(cast(dict[str, Any], out).get("items", []))
        return await asyncio.to_thread(run)

    async def patch_profile_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource (as kopf patches it); a profile gone meanwhile is fine."""
        def run() -> None:
            try:
                self.custom.patch_namespaced_custom_object_status(
                    "perfpilot.io", "v1alpha1", namespace, "perfprofiles", name, {"status": status})
            except ApiException as e:
                if e.status != 404:
                    raise
        await asyncio.to_thread(run)

    async def post_event(self, obj: Mapping[str, Any], *, type_: str, reason: str,
                         message: str) -> None:
        """A core/v1 Event on `obj`, as kopf posts them (`kubectl describe` lists it). Posted
        here rather than with kopf.event because kopf's event queue exists only inside its
        per-object handler tasks, and the resync loop is not one."""
        meta = obj.get("metadata", {})
        now = datetime.datetime.now(datetime.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta.get('name')}.",
                                         namespace=meta.get("namespace")),
            involved_object=client.V1ObjectReference(
                api_version=obj.get("apiVersion", "perfpilot.io/v1alpha1"),
                kind=obj.get("kind", "PerfProfile"), name=meta.get("name"),
                namespace=meta.get("namespace"), uid=meta.get("uid")),
            type=type_, reason=reason, message=message[:1024], count=1,
            first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="perfpilot-operator"),
            reporting_component="perfpilot-operator",
            reporting_instance=os.environ.get("HOSTNAME", "perfpilot-operator"))

        def run() -> None:
            try:
                self.core.create_namespaced_event(meta.get("namespace"), body)
            except ApiException as e:
                if e.status not in (403, 404):  # the namespace is going away: nothing to tell
                    raise
        await asyncio.to_thread(run)

    async def restart_deployment(self, namespace: str, name: str) -> None:
        """What `kubectl rollout restart deployment/<name>` does: a new pod-template annotation,
        so the Deployment replaces its pods at its own pace (maxSurge/maxUnavailable)."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"spec": {"template": {"metadata": {"annotations": {
            RESTARTED_AT: now}}}}}
        await asyncio.to_thread(self.apps.patch_namespaced_deployment, name, namespace, patch)

    def _webhook_calls(self, kind: str) -> tuple[Any, Any, Any]:
        """(read, create, patch) of a Mutating- or ValidatingWebhookConfiguration."""
        a = self.admission
        if kind == "MutatingWebhookConfiguration":
            return (a.read_mutating_webhook_configuration, a.create_mutating_webhook_configuration,
                    a.patch_mutating_webhook_configuration)
        return (a.read_validating_webhook_configuration, a.create_validating_webhook_configuration,
                a.patch_validating_webhook_configuration)

    async def read_webhook_configuration(self, kind: str, name: str) -> dict[str, Any] | None:
        """The stored configuration as the API returns it (camelCase), None when absent."""
        read = self._webhook_calls(kind)[0]

        def run() -> dict[str, Any] | None:
            try:
                obj = read(name)
            except ApiException as e:
                if e.status == 404:
                    return None
                raise
            return cast(dict[str, Any], self.api.sanitize_for_serialization(obj))
        return await asyncio.to_thread(run)

    async def create_webhook_configuration(self, body: dict[str, Any]) -> None:
        """Only where RBAC allows it (local mode, admin credentials): the chart grants no
        create on webhook configurations, since RBAC cannot limit create by name."""
        model = (client.V1MutatingWebhookConfiguration if body["kind"] ==
                 "MutatingWebhookConfiguration" else client.V1ValidatingWebhookConfiguration)
        await asyncio.to_thread(self._webhook_calls(body["kind"])[1], model.from_dict(body))

    async def patch_webhook_configuration(self, kind: str, name: str,
                                          json_patch: list[dict[str, Any]]) -> None:
        patch = self._webhook_calls(kind)[2]

        def run() -> None:
            patch(name, json_patch, _content_type="application/json-patch+json")
        await asyncio.to_thread(run)


_APPS_KINDS = {"Deployment": "deployment", "StatefulSet": "stateful_set",
               "ReplicaSet": "replica_set"}


class ScaleClient:
    """The scale subresource of a profile's target (apps/v1 kinds, or any CR with /scale)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def _call(self, verb: str, namespace: str, target: dict[str, Any], *args: Any) -> Any:
        kind, name = target["kind"], target["name"]
        group_version = target.get("apiVersion", "apps/v1")
        if group_version == "apps/v1" and kind in _APPS_KINDS:
            fn = getattr(self.apps, f"{verb}_namespaced_{_APPS_KINDS[kind]}_scale")
            return fn(name, namespace, *args)
        group, _, version = group_version.rpartition("/")
        plural = kind.lower() + "s"
        fn = getattr(self.custom, f"{verb}_namespaced_custom_object_scale")
        return fn(group, version, namespace, plural, name, *args)

    async def replicas(self, namespace: str, target: dict[str, Any]) -> int:
        scale = await asyncio.to_thread(self._call, "read", namespace, target)
        spec = scale.spec if hasattr(scale, "spec") else scale.get("spec", {})
        value = spec.replicas if hasattr(spec, "replicas") else spec.get("replicas", 0)
        return int(value or 0)

    async def set_replicas(self, namespace: str, target: dict[str, Any], replicas: int) -> None:
        await asyncio.to_thread(self._call, "patch", namespace, target,
                                {"spec": {"replicas": replicas}})
