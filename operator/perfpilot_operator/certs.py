"""The operator's CA and the certificates each replica issues itself from it (`cryptography`).

The CA lives in a Secret of the operator's own namespace (clients/casecret.py) so every replica
shares it: the webhooks of all replicas verify under one caBundle, and every sidecar trusts one
CA. Each replica issues itself, at start and in memory (written to its cert dir for the TLS
libraries), a webhook serving certificate and a client certificate for the sidecars.

Rotation (docs/operator.md "Trust model"): a CA is valid CA_DAYS; once RENEW_AT of its life has
passed, a new CA joins the bundle. Every CA stays in the trust bundle until it expires, so pods
admitted before the rotation (they trust only the old CA) keep being reachable. Leaves are issued
by the OLDEST CA with at least MIN_ISSUER_DAYS left (every pod trusts it), and never outlive it.
kopf's own self-signing needs oscrypto, which breaks on OpenSSL 3; this avoids it.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from perfpilot_contract.trust import OPERATOR_CLIENT_NAME

CA_DAYS = 730
RENEW_AT = 2 / 3
MIN_ISSUER_DAYS = 30
CA_NAME = "perfpilot-operator-ca"
CERT_KEY, KEY_KEY = "ca.crt", "ca.key"
"""The Secret's data keys: all CA certificates, and their keys in the same order (oldest first)."""


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def expires(self) -> dt.datetime:
        return self.cert.not_valid_after_utc


@dataclass(frozen=True)
class CABundle:
    """The CAs the operator signs with and the sidecars trust, oldest first."""

    authorities: tuple[Authority, ...]

    def trust_pem(self) -> bytes:
        """Every CA certificate: the webhooks' caBundle and what injected pods receive."""
        return b"".join(a.cert.public_bytes(serialization.Encoding.PEM) for a in self.authorities)

    def issuer(self, now: dt.datetime) -> Authority:
        """The oldest CA with MIN_ISSUER_DAYS left (every live pod trusts it), else the newest."""
        for a in self.authorities:
            if a.expires() - now >= dt.timedelta(days=MIN_ISSUER_DAYS):
                return a
        return self.authorities[-1]


def new_authority(now: dt.datetime) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    start = now - dt.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
                      x509.NameAttribute(NameOID.SERIAL_NUMBER, f"{int(now.timestamp())}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Authority(cert, key)


def rotated(bundle: CABundle, now: dt.datetime) -> CABundle:
    """Expired CAs dropped; a new CA added once the newest has lived RENEW_AT of its life."""
    live = tuple(a for a in bundle.authorities if a.expires() > now)
    if live:
        newest = live[-1].cert
        life = newest.not_valid_after_utc - newest.not_valid_before_utc
        if now < newest.not_valid_before_utc + life * RENEW_AT:
            return bundle if live == bundle.authorities else CABundle(live)
    return CABundle((*live, new_authority(now)))


def to_secret_data(bundle: CABundle) -> dict[str, str]:
    """The Secret's `data` (base64)."""
    keys = b"".join(a.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()) for a in bundle.authorities)
    return {CERT_KEY: base64.b64encode(bundle.trust_pem()).decode(),
            KEY_KEY: base64.b64encode(keys).decode()}


def from_secret_data(data: dict[str, str] | None, where: str) -> CABundle:
    """The bundle in a Secret's `data`; ValueError naming the Secret and the fix."""
    try:
        certs = x509.load_pem_x509_certificates(base64.b64decode((data or {})[CERT_KEY]))
        pems = base64.b64decode((data or {})[KEY_KEY]).split(b"-----END PRIVATE KEY-----")
        keys = [serialization.load_pem_private_key(p + b"-----END PRIVATE KEY-----", None)
                for p in pems if p.strip()]
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"Secret {where} does not hold a perfpilot CA ({CERT_KEY}, {KEY_KEY}): {exc}; "
                         f"delete it and the operator makes a new one (pods injected before must "
                         f"then be re-created)") from None
    if len(certs) != len(keys) or not certs or not all(isinstance(k, ec.EllipticCurvePrivateKey) for k in keys):
        raise ValueError(f"Secret {where}: {len(certs)} CA certificates but {len(keys)} EC keys; "
                         f"delete it and the operator makes a new one")
    return CABundle(tuple(Authority(c, k) for c, k in zip(certs, keys)))  # type: ignore[arg-type]


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue(ca: Authority, common_name: str, *, names: tuple[str, ...] | list[str] = (), client: bool = False,
          now: dt.datetime, not_after: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) signed by `ca`, valid until the CA expires (or `not_after`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after or ca.expires())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class OperatorCerts:
    """This replica's files: the trust bundle, the webhook serving pair and the client pair."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def ca_bundle(self) -> bytes:
        """The PEM the webhook configurations' caBundle must hold (every replica's is the same)."""
        return self.ca.read_bytes()

    def client_pair(self) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) the operator presents to the sidecars."""
        return self.client_key.read_bytes(), self.client_cert.read_bytes()


def write_identity(bundle: CABundle, directory: Path, names: list[str],
                   now: dt.datetime | None = None) -> OperatorCerts:
    """Issue this replica's webhook serving and client certificates from `bundle` into `directory`."""
    now = now or dt.datetime.now(dt.UTC)
    out = OperatorCerts(directory / "ca.crt", directory / "tls.crt", directory / "tls.key",
                        directory / "client.crt", directory / "client.key")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = bundle.issuer(now)
    server_key, server_cert = issue(ca, names[0], names=names, now=now)
    client_key, client_cert = issue(ca, OPERATOR_CLIENT_NAME, client=True, now=now)
    for path, data, mode in ((out.ca, bundle.trust_pem(), 0o644), (out.cert, server_cert, 0o644),
                             (out.key, server_key, 0o600), (out.client_cert, client_cert, 0o644),
                             (out.client_key, client_key, 0o600)):
        path.touch(mode=mode)
        path.chmod(mode)
        path.write_bytes(data)
    return out
