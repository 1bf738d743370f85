"""Operator start-up: settings, clients, webhook server, leader election, feature detection;
while this replica leads (`lead`): the webhook configurations, and the resync loop and coverage
audit over every profile - or, sharded (PERFPILOT_SHARDING), on every replica over its share."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import kopf

from perfpilot_operator import metrics as prom
from perfpilot_operator.clients import kube as kube_client
from perfpilot_operator.clients.agents import AgentClients
from perfpilot_operator.pki import ReplicaPKI
from perfpilot_operator.handlers import indexes, profiles
from perfpilot_operator.leader import Leadership, LeaseElector, always_leader
from perfpilot_operator.logic import resize
from perfpilot_operator.logic.lease import LeaseTimings
from perfpilot_operator.logic.shards import Ownership
from perfpilot_operator.runtime import Runtime
from perfpilot_operator.settings import Settings
from perfpilot_operator.shards import MemberLeases
from perfpilot_operator.webhook_keeper import Keeper
from perfpilot_operator.webhook_server import ThreadedWebhookServer

NATIVE_SIDECAR_MINOR = 29   # SidecarContainers is on by default from 1.29


@kopf.on.startup(id="startup")  # type: ignore[arg-type]  # kopf-kwargs
async def startup(settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger,
                  profiles_by_namespace: Any, pods_by_namespace: Any, hpas_by_namespace: Any,
                  refusals_by_namespace: Any, replicaset_owners: Any, **_: Any) -> None:
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
    rt.kopf_settings = settings
    rt.refusals = refusals_by_namespace     # kopf keeps it current; every profile pass reads it
    rt.replicaset_owners = replicaset_owners   # the coverage audit's workload of each pod
    memo.runtime = rt
    # Opted-in pods and ReplicaSets only, filtered by the API server; plus the coverage audit.
    indexes.filter_watches(settings)
    rt.pods = indexes.CoveredPods(pods_by_namespace, api)

    settings.admission.server = ThreadedWebhookServer(
        addr=cfg.webhook_host, port=cfg.webhook_port, host=cfg.webhook_url_host,
        certfile=str(certs.cert), pkeyfile=str(certs.key), cafile=str(certs.ca),
        context=pki.context)    # re-issued certificates: ReplicaPKI hands connections a new one
    settings.admission.managed = None   # the chart (or the leader, locally) renders them
    me = cfg.leader_identity or f"{socket.gethostname()}:{cfg.webhook_port}"
    if cfg.leader_election:
        rt.leadership = Leadership(identity=me, namespace=cfg.namespace, lease=cfg.leader_lease)
        elector = LeaseElector(api, rt.leadership, LeaseTimings())
        memo.elector = elector
        memo.election_task = asyncio.create_task(elector.run(), name="perfpilot-election")
    else:
        rt.leadership = always_leader(me)
    if cfg.sharding:
        # Every replica reconciles its share of the profiles; the leader keeps the webhooks.
        timings = LeaseTimings()
        rt.shards = Ownership(me=me, grace=timings.duration)
        members = MemberLeases(api, rt.shards, namespace=cfg.namespace, group=cfg.leader_lease,
                               timings=timings)
        memo.members = members
        memo.members_task = asyncio.create_task(members.run(), name="perfpilot-shard-members")
        memo.shard_task = asyncio.create_task(
            _control_loops(rt, settings, profiles_by_namespace, rt.pods, hpas_by_namespace),
            name="perfpilot-shard")
    # Only the leader keeps the webhook configurations (and, unsharded, runs the periodic
    # pass); every replica serves the webhooks (kopf keeps the indexes current on all of them).
    memo.leader_task = asyncio.create_task(
        lead(rt, settings, profiles_by_namespace, rt.pods, hpas_by_namespace),
        name="perfpilot-leader")
    logger.info(f"perfpilot operator ready: Kubernetes 1.{minor}, native sidecars "
                f"{'on' if native else 'off'}, in-place resize {'on' if rt.resize else 'off'}, "
                f"webhooks on {cfg.webhook_host}:{cfg.webhook_port}, leader election "
                + (f"by lease {cfg.namespace}/{cfg.leader_lease} as {me}"
                   if cfg.leader_election else "off")
                + (", profiles sharded over the replicas (member leases labelled "
                   f"perfpilot.io/member-of={cfg.leader_lease})" if cfg.sharding else ""))


async def lead(rt: Runtime, settings: kopf.OperatorSettings, profiles_by_namespace: Any,
               pods_by_namespace: Any, hpas_by_namespace: Any) -> None:
    """While this replica leads: the resync loop and the webhook keeper; stopped at once when
    it stops leading. Level-triggered: a new leader's first pass reconciles every profile from
    what the cluster and the sidecars say, so a spec change made while nobody led is not lost."""
    ld: Leadership = rt.leadership
    keeper = Keeper(rt)
    while True:
        await ld.elected.wait()
        tasks = []
        if rt.shards is None:
            tasks.append(asyncio.create_task(_control_loops(
                rt, settings, profiles_by_namespace, pods_by_namespace, hpas_by_namespace),
                name="perfpilot-control-loops"))
        if rt.settings.register_webhooks:
            tasks.append(asyncio.create_task(_keep_webhooks(keeper, rt.settings.resync_interval),
                                             name="perfpilot-webhooks"))
        try:
            while ld.is_leader:
                ld.changed.clear()
                await ld.changed.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _control_loops(rt: Runtime, settings: kopf.OperatorSettings, profiles_by_namespace: Any,
                         pods_by_namespace: Any, hpas_by_namespace: Any) -> None:
    """The resync loop and the coverage audit over the profiles this replica acts for
    (`rt.acts_for`), until cancelled; then everything learnt is forgotten: the next term (or
    owner) starts from the status and what the sidecars report."""
    tasks = [asyncio.create_task(profiles.resync_loop(
        rt, settings, profiles_by_namespace, pods_by_namespace, hpas_by_namespace),
        name="perfpilot-resync"),
        asyncio.create_task(indexes.audit_loop(
            rt.pods, profiles_by_namespace, tick=rt.settings.resync_interval,
            interval=rt.settings.audit_interval, wanted=rt.acts_for),
            name="perfpilot-coverage-audit")]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for namespace, name in list(rt.profiles):
            profiles.forget_profile_state(rt, namespace, name)
        prom.PROFILES_OWNED.labels(rt.leadership.identity).set(0)


async def _keep_webhooks(keeper: Keeper, interval: float) -> None:
    while True:
        await keeper.run_once()
        await asyncio.sleep(interval)


@kopf.on.cleanup(id="cleanup")
async def cleanup(memo: Any, **_: Any) -> None:
    tasks = [t for t in (getattr(memo, name, None) for name in (
        "leader_task", "shard_task", "members_task", "election_task", "pki_task"))
             if t is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    elector: LeaseElector | None = getattr(memo, "elector", None)
    if elector is not None:
        await elector.release()     # the next replica takes over at its next poll
    members: MemberLeases | None = getattr(memo, "members", None)
    if members is not None:
        await members.release()     # the others take this replica's share after the handoff
    rt: Runtime | None = getattr(memo, "runtime", None)
    if rt is not None:
        await rt.agents.close()
