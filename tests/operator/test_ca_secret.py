"""The operator's CA Secret: created when absent, shared by racing replicas, rotated before expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes.client.exceptions import ApiException

from perfpilot_contract.trust import OPERATOR_CLIENT_NAME
from perfpilot_operator import certs
from perfpilot_operator.clients.casecret import SECRET_NAME, ensure_ca_sync
from perfpilot_operator.pki import ReplicaPKI

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class FakeCore:
    """Secrets of one namespace with resourceVersions and the API server's 404/409 answers.

    `before_create` / `before_replace` run just before the write lands: another replica's move."""

    def __init__(self, namespace: str = "perfpilot-system") -> None:
        self.namespace = namespace
        self.secrets: dict[str, Any] = {}
        self.version = 0
        self.before_create: Any = None
        self.before_replace: Any = None
        self.writes: list[str] = []

    def _check_ns(self, namespace: str) -> None:
        if namespace != self.namespace:
            raise ApiException(status=404, reason=f"namespaces {namespace!r} not found")

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        self._check_ns(namespace)
        if name not in self.secrets:
            raise ApiException(status=404, reason="NotFound")
        return self.secrets[name]

    def _store(self, body: Any) -> None:
        self.version += 1
        body.metadata.resource_version = str(self.version)
        self.secrets[body.metadata.name] = body

    def create_namespaced_secret(self, namespace: str, body: Any) -> Any:
        self._check_ns(namespace)
        if self.before_create is not None:
            hook, self.before_create = self.before_create, None
            hook()
        if body.metadata.name in self.secrets:
            raise ApiException(status=409, reason="AlreadyExists")
        self.writes.append("create")
        self._store(body)
        return body

    def replace_namespaced_secret(self, name: str, namespace: str, body: Any) -> Any:
        self._check_ns(namespace)
        if self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            hook()
        if body.metadata.resource_version != self.secrets[name].metadata.resource_version:
            raise ApiException(status=409, reason="Conflict")
        self.writes.append("replace")
        self._store(body)
        return body


def fingerprints(bundle: certs.CABundle) -> list[bytes]:
    return [a.cert.fingerprint(certs.hashes.SHA256()) for a in bundle.authorities]


def test_created_when_absent_and_reused() -> None:
    core = FakeCore()
    first = ensure_ca_sync(core, "perfpilot-system", now=NOW)
    assert core.writes == ["create"] and len(first.authorities) == 1
    again = ensure_ca_sync(core, "perfpilot-system", now=NOW + dt.timedelta(days=10))
    assert fingerprints(again) == fingerprints(first) and core.writes == ["create"]
    secret = core.secrets[SECRET_NAME]
    assert secret.type == "Opaque" and set(secret.data) == {"ca.crt", "ca.key"}


def test_a_replica_that_loses_the_create_race_uses_the_winners_ca() -> None:
    core = FakeCore()
    winner: list[certs.CABundle] = []
    core.before_create = lambda: winner.append(ensure_ca_sync(core, "perfpilot-system", now=NOW))
    loser = ensure_ca_sync(core, "perfpilot-system", now=NOW)
    assert core.writes == ["create"]                        # only the winner's create landed
    assert fingerprints(loser) == fingerprints(winner[0])


def test_rotation_at_two_thirds_keeps_the_old_ca_until_it_expires() -> None:
    core = FakeCore()
    old = ensure_ca_sync(core, "perfpilot-system", now=NOW)
    life = dt.timedelta(days=certs.CA_DAYS)
    before = ensure_ca_sync(core, "perfpilot-system", now=NOW + life * 0.6)
    assert fingerprints(before) == fingerprints(old) and core.writes == ["create"]
    due = NOW + life * 0.7
    rotated = ensure_ca_sync(core, "perfpilot-system", now=due)
    assert core.writes == ["create", "replace"] and len(rotated.authorities) == 2
    assert fingerprints(rotated)[0] == fingerprints(old)[0]
    # leaves come from the OLD CA while it has MIN_ISSUER_DAYS left: pods admitted before the
    # rotation trust only it
    assert rotated.issuer(due) is rotated.authorities[0]
    late = rotated.authorities[0].expires() - dt.timedelta(days=certs.MIN_ISSUER_DAYS - 1)
    assert rotated.issuer(late) is rotated.authorities[1]
    # once the old CA has expired it leaves the bundle
    after = ensure_ca_sync(core, "perfpilot-system", now=rotated.authorities[0].expires() + dt.timedelta(days=1))
    assert fingerprints(after) == fingerprints(rotated)[1:]


def test_a_replica_that_loses_the_rotation_race_reads_the_winners_bundle() -> None:
    core = FakeCore()
    ensure_ca_sync(core, "perfpilot-system", now=NOW)
    due = NOW + dt.timedelta(days=certs.CA_DAYS) * 0.7
    winner: list[certs.CABundle] = []
    core.before_replace = lambda: winner.append(ensure_ca_sync(core, "perfpilot-system", now=due))
    loser = ensure_ca_sync(core, "perfpilot-system", now=due)
    assert core.writes == ["create", "replace"]
    assert fingerprints(loser) == fingerprints(winner[0]) and len(loser.authorities) == 2


def test_missing_namespace_and_a_foreign_secret_say_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="namespace 'elsewhere' does not exist; create it or set PERFPILOT_NAMESPACE"):
        ensure_ca_sync(FakeCore(), "elsewhere", now=NOW)
    core = FakeCore()
    ensure_ca_sync(core, "perfpilot-system", now=NOW)
    core.secrets[SECRET_NAME].data = {"token": "eA=="}
    with pytest.raises(ValueError, match="does not hold a perfpilot CA"):
        ensure_ca_sync(core, "perfpilot-system", now=NOW)


def test_every_replica_serves_under_one_ca_bundle(tmp_path: Path) -> None:
    """Two replicas issue their own certificates from the shared CA: one caBundle verifies both,
    and each client certificate carries the operator's name."""
    core = FakeCore()
    a = certs.write_identity(ensure_ca_sync(core, "perfpilot-system"), tmp_path / "a", ["svc.ns.svc"])
    b = certs.write_identity(ensure_ca_sync(core, "perfpilot-system"), tmp_path / "b", ["svc.ns.svc"])
    assert a.ca_bundle() == b.ca_bundle()
    assert a.cert.read_bytes() != b.cert.read_bytes()
    assert (tmp_path / "a" / "tls.key").stat().st_mode & 0o077 == 0
    for replica in (a, b):
        ctx = ssl.create_default_context(cafile=str(replica.ca))
        ctx.load_cert_chain(replica.cert, replica.key)      # the pair matches
        leaf = x509.load_pem_x509_certificate(replica.cert.read_bytes())
        ca = x509.load_pem_x509_certificate(a.ca_bundle())
        leaf.verify_directly_issued_by(ca)
        client = x509.load_pem_x509_certificate(replica.client_pair()[1])
        client.verify_directly_issued_by(ca)
        assert client.subject.rfc4514_string() == f"CN={OPERATOR_CLIENT_NAME}"


def test_a_running_replica_follows_the_rotation_without_a_restart(tmp_path: Path) -> None:
    """ReplicaPKI.refresh: a rotated Secret grows the caBundle at once; when the old CA nears its
    end the leaves are re-issued from the new one and the webhook's SSL context reloads them."""
    core = FakeCore()
    pki = ReplicaPKI(core, "perfpilot-system", tmp_path, ["svc.ns.svc"])
    seen: list[bytes] = []
    pki.listeners.append(lambda p: seen.append(p.ca_bundle))
    asyncio.run(pki.start(now=NOW))
    first_leaf = pki.certs.cert.read_bytes() if pki.certs else b""
    assert asyncio.run(pki.refresh(now=NOW + dt.timedelta(days=1))) is False and seen == []
    due = NOW + dt.timedelta(days=certs.CA_DAYS) * 0.7
    assert asyncio.run(pki.refresh(now=due)) is True
    assert seen and seen[-1].count(b"BEGIN CERTIFICATE") == 2       # old and new CA trusted
    old, new = pki.bundle.authorities if pki.bundle else ()
    late = old.expires() - dt.timedelta(days=certs.MIN_ISSUER_DAYS / 2 - 1)
    assert asyncio.run(pki.refresh(now=late)) is True
    assert pki.certs is not None and pki.certs.cert.read_bytes() != first_leaf
    leaf = x509.load_pem_x509_certificate(pki.certs.cert.read_bytes())
    leaf.verify_directly_issued_by(new.cert)                       # issued by the new CA now
    client = x509.load_pem_x509_certificate(pki.client_identity().cert)
    client.verify_directly_issued_by(new.cert)


def _served_leaf(port: int, server_name: str | None) -> bytes:
    """The leaf certificate a TLS handshake to 127.0.0.1:port presents (not verified: the
    re-issued leaf is dated in the test's future)."""
    import socket

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_the_webhook_server_presents_the_reissued_pair_from_the_next_handshake(
        tmp_path: Path) -> None:
    """The served context is never reloaded in place (the server handshakes on its own thread):
    its server-name callback hands each new connection, with SNI or without (the API server
    calling a URL by IP), the newest pair's context."""
    import socket
    import threading

    core = FakeCore()
    pki = ReplicaPKI(core, "perfpilot-system", tmp_path, ["svc.ns.svc"])
    first = asyncio.run(pki.start(now=NOW))
    pki.context.load_cert_chain(first.cert, first.key)           # what kopf does at its start

    def in_place(*_: Any) -> None:
        raise AssertionError("the served context was reloaded while in use")
    pki.context.load_cert_chain = in_place  # type: ignore[method-assign]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with pki.context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        der = x509.load_pem_x509_certificate(first.cert.read_bytes()).public_bytes(
            certs.serialization.Encoding.DER)
        for name in (None, "svc.ns.svc"):
            assert _served_leaf(port, name) == der
        old, = pki.bundle.authorities if pki.bundle else ()
        late = old.expires() - dt.timedelta(days=certs.MIN_ISSUER_DAYS / 2 - 1)
        assert asyncio.run(pki.refresh(now=late)) is True
        assert pki.certs is not None
        new = x509.load_pem_x509_certificate(pki.certs.cert.read_bytes()).public_bytes(
            certs.serialization.Encoding.DER)
        assert new != der
        for name in (None, "svc.ns.svc"):
            assert _served_leaf(port, name) == new
    finally:
        stop.set()
        server.join(timeout=5)
        listener.close()
