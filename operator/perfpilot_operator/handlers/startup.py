"""Operator start-up: settings, clients, webhook server and registrations, feature detection."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from perfpilot_operator import metrics as prom
from perfpilot_operator.clients import kube as kube_client
from perfpilot_operator.clients.agents import AgentClients
from perfpilot_operator.pki import ReplicaPKI
from perfpilot_operator.handlers import profiles
from perfpilot_operator.logic import resize, webhooks
from perfpilot_operator.runtime import Runtime
from perfpilot_operator.settings import Settings

NATIVE_SIDECAR_MINOR = 29   # SidecarContainers is on by default from 1.29


@kopf.on.startup(id="startup")  # type: ignore[arg-type]  # kopf-kwargs
async def startup(settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger,
                  profiles_by_namespace: Any, pods_by_namespace: Any, hpas_by_namespace: Any,
                  refusals_by_namespace: Any, **_: Any) -> None:
    cfg: Settings = getattr(memo, "settings", None) or Settings.from_env()
    # Watches never go blind: server-side timeouts plus kopf's inactivity detector.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.persistence.finalizer = "perfpilot.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="perfpilot.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="perfpilot.io", key="last-handled-configuration")
    settings.posting.level = logging.INFO

    api = kube_client.load()
    kube = kube_client.Kube(api)
    minor = await kube.server_minor()
    native = {"true": True, "false": False}.get(cfg.native_sidecar,
                                                 minor >= NATIVE_SIDECAR_MINOR)
    names = [cfg.webhook_url_host]
    if cfg.webhook_service:
        ns, svc = cfg.webhook_service.split("/", 1)
        names = [f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local", svc, *names]
    # The CA is shared by every replica (a Secret in cfg.namespace); this replica's serving and
    # client certificates are issued from it, so all replicas serve under one caBundle.
    pki = ReplicaPKI(kube.core, cfg.namespace, cfg.cert_dir, names)
    certs = await pki.start()
    rt = Runtime(settings=cfg, agents=AgentClients(pki.client_identity(), timeout=cfg.rpc_timeout),
                 kube=kube,
                 scale=kube_client.ScaleClient(api), native_sidecar=native,
                 resize=minor >= resize.RESIZE_MIN_MINOR,
                 ca_bundle=pki.ca_bundle)

    def certificates_changed(p: ReplicaPKI) -> None:     # a rotated CA or re-issued certificates
        rt.ca_bundle = p.ca_bundle
        rt.agents.use(p.client_identity())
    pki.listeners.append(certificates_changed)
    memo.pki_task = asyncio.create_task(pki.run(), name="perfpilot-certificates")
    if cfg.metrics_port >= 0:
        try:
            prom.serve(cfg.metrics_port, cfg.metrics_host)
        except OSError as e:
            raise kopf.PermanentError(
                f"cannot serve /metrics on {cfg.metrics_host}:{cfg.metrics_port}: {e.strerror}; "
                f"set PERFPILOT_METRICS_PORT to a free port (-1 turns it off)") from e
    rt.refusals = refusals_by_namespace     # kopf keeps it current; every profile pass reads it
    memo.runtime = rt

    settings.admission.server = kopf.WebhookServer(
        addr=cfg.webhook_host, port=cfg.webhook_port, host=cfg.webhook_url_host,
        certfile=str(certs.cert), pkeyfile=str(certs.key), cafile=str(certs.ca),
        context=pki.context)    # ReplicaPKI reloads it with re-issued certificates
    settings.admission.managed = None   # we render the configurations (namespaceSelector)
    if cfg.register_webhooks:
        def client(path: str) -> dict[str, Any]:
            return webhooks.client_config(path=path, ca_bundle=rt.ca_bundle,
                                          url_host=cfg.webhook_url_host,
                                          port=cfg.webhook_port, service=cfg.webhook_service)
        await kube.apply_webhooks(
            webhooks.mutating_configuration(operator_namespace=cfg.namespace,
                                            failure_policy=cfg.failure_policy,
                                            exclude_namespaces=cfg.exclude_namespaces,
                                            client=client(webhooks.POD_HANDLER_ID)),
            webhooks.validating_configuration(failure_policy=cfg.failure_policy,
                                              client=client(webhooks.PROFILE_HANDLER_ID)))
    # The periodic pass over every profile (kopf keeps the indexes current meanwhile).
    memo.resync_task = asyncio.create_task(
        profiles.resync_loop(rt, settings, profiles_by_namespace, pods_by_namespace,
                             hpas_by_namespace),
        name="perfpilot-resync")
    logger.info(f"perfpilot operator ready: Kubernetes 1.{minor}, native sidecars "
                f"{'on' if native else 'off'}, in-place resize {'on' if rt.resize else 'off'}, webhooks on {cfg.webhook_host}:{cfg.webhook_port}")


@kopf.on.cleanup(id="cleanup")
async def cleanup(memo: Any, **_: Any) -> None:
    for name in ("resync_task", "pki_task"):
        task: asyncio.Task[None] | None = getattr(memo, name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    rt: Runtime | None = getattr(memo, "runtime", None)
    if rt is not None:
        await rt.agents.close()
