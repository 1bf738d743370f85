"""This replica's certificates, kept current while it runs (docs/operator.md "Trust model").

At start: the shared CA from its Secret (clients/casecret.py), then this replica's webhook serving
and sidecar client certificates issued from it (certs.py). Every REFRESH_SECONDS (jittered, so
replicas do not move together) the Secret is read again (rotating it when due) and both
certificates are re-issued when the issuing CA changed or they near expiry: the webhook server's
next handshakes present the new pair, the sidecar channels are re-made with the new client
certificate, and `ca_bundle` (what the webhook configurations and new pods get) grows
by the new CA. Nothing needs a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from perfpilot_operator.certs import MIN_ISSUER_DAYS, CABundle, OperatorCerts, write_identity
from perfpilot_operator.clients.agents import ClientIdentity
from perfpilot_operator.clients.casecret import ensure_ca

REFRESH_SECONDS = 6 * 3600.0
log = logging.getLogger(__name__)


def needs_reissue(certs: OperatorCerts, bundle: CABundle, now: dt.datetime) -> bool:
    """Whether this replica's leaves are not from the CA it should issue from, or expire soon."""
    leaf = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    issuer = bundle.issuer(now).cert
    return (leaf.issuer != issuer.subject
            or leaf.not_valid_after_utc - now < dt.timedelta(days=MIN_ISSUER_DAYS / 2))


class ReplicaPKI:
    """The CA bundle and this replica's certificates; `context` is the webhook server's SSL context.

    kopf loads the first pair into `context`. A re-issued pair goes into a new context, never into
    the one in use: the webhook server handshakes on its own thread, and OpenSSL loads a pair
    (certificate, then key) with the GIL released. `context`'s server-name callback, run early in
    every handshake (with or without SNI), moves the connection to the newest context."""

    def __init__(self, core: Any, namespace: str, cert_dir: Path, names: list[str]) -> None:
        self.core, self.namespace, self.cert_dir, self.names = core, namespace, cert_dir, names
        self.context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        self.reissued: ssl.SSLContext | None = None    # rebound whole, read by the server thread
        self.context.sni_callback = self._newest
        self.bundle: CABundle | None = None
        self.certs: OperatorCerts | None = None
        self.listeners: list[Callable[[ReplicaPKI], None]] = []

    @property
    def ca_bundle(self) -> bytes:
        """The caBundle every replica's webhooks verify under (PEM, all CAs of the Secret)."""
        assert self.bundle is not None, "start() first"
        return self.bundle.trust_pem()

    def client_identity(self) -> ClientIdentity:
        assert self.certs is not None, "start() first"
        key, cert = self.certs.client_pair()
        return ClientIdentity(key, cert)

    async def start(self, now: dt.datetime | None = None) -> OperatorCerts:
        """Read (or create) the CA and issue this replica's certificates."""
        self.bundle = await ensure_ca(self.core, self.namespace, now=now)
        self.certs = write_identity(self.bundle, self.cert_dir, self.names, now)
        return self.certs

    async def refresh(self, now: dt.datetime | None = None) -> bool:
        """Re-read the CA (rotating when due) and re-issue when needed; True when anything changed."""
        assert self.certs is not None, "start() first"
        now = now or dt.datetime.now(dt.UTC)
        bundle = await ensure_ca(self.core, self.namespace, now=now)
        changed = self.bundle is None or bundle.trust_pem() != self.bundle.trust_pem()
        self.bundle = bundle
        if changed or needs_reissue(self.certs, bundle, now):
            self.certs = write_identity(bundle, self.cert_dir, self.names, now)
            fresh = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
            fresh.load_cert_chain(self.certs.cert, self.certs.key)
            self.reissued = fresh
            changed = True
            log.info("certificates re-issued from CA %s (%d CA(s) trusted)",
                     bundle.issuer(now).cert.subject.rfc4514_string(), len(bundle.authorities))
        if changed:
            for listener in self.listeners:
                listener(self)
        return changed

    def _newest(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                context: ssl.SSLContext) -> None:
        if self.reissued is not None:
            conn.context = self.reissued

    async def run(self, interval: float = REFRESH_SECONDS) -> None:
        """refresh() forever; an API error is logged and retried at the next tick."""
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.0))
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the current certificates stay valid for weeks
                log.exception("refreshing the operator's certificates failed; retrying later")
