"""The TCP control port's TLS: a key made at start, and the operator's CA as the only client trust.

The sidecar's private key is generated in memory when the process starts and never written
anywhere; its certificate is self-signed for AGENT_SERVER_NAME (the operator pins it on first
contact, see docs/operator.md "Trust model"). Client certificates are required and verified
against the CA file at the TLS handshake: grpcio's Python API offers no "request but do not
require" mode (ssl_server_credentials is DONT_REQUEST or REQUIRE_AND_VERIFY), so a caller without
a certificate of that CA never gets an HTTP/2 stream, let alone a parsed body. Every call that
does arrive is then checked once more for the operator's name (`problem`), answering
UNAUTHENTICATED before its body is parsed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc

from perfpilot_contract.trust import AGENT_SERVER_NAME, OPERATOR_CLIENT_NAME

SERVER_CERT_DAYS = 3650
"""The self-signed certificate outlives any pod: it is pinned, not chained, so expiry adds nothing."""


def self_signed(now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM) for AGENT_SERVER_NAME, made fresh in memory."""
    # Imported here: ~0.2-0.3 s that an agent without a control port (no --ca-file) never pays.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, AGENT_SERVER_NAME)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=SERVER_CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(AGENT_SERVER_NAME)]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def load_ca(path: str) -> bytes:
    """The CA bundle PEM at `path`; ValueError naming the file and the fix when unusable."""
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"--ca-file {path}: {exc.strerror or exc}; the operator's webhook mounts "
                         f"the CA from the pod annotation perfpilot.io/ca-bundle") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"--ca-file {path} holds no PEM certificate: {exc}") from None
    if not certs:
        raise ValueError(f"--ca-file {path} holds no PEM certificate")
    return data


def server_credentials(ca_pem: bytes, now: dt.datetime | None = None) -> tuple[grpc.ServerCredentials, bytes]:
    """mTLS credentials for the control port (a fresh key, client certificates of `ca_pem`
    required) and the public certificate they serve."""
    key_pem, cert_pem = self_signed(now)
    creds = grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True)
    return creds, cert_pem


def problem(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """None when the peer proved the operator's certificate, else what is wrong (the status message)."""
    if b"ssl" not in auth_context.get("transport_security_type", ()):
        return ("control calls need mutual TLS with the operator's client certificate; "
                "this listener is not TLS")
    names = [n.decode(errors="replace") for n in auth_context.get("x509_common_name", ())]
    if not names:
        return ("no verified client certificate: control calls over TCP need the perfpilot "
                "operator's client certificate (mutual TLS)")
    if OPERATOR_CLIENT_NAME not in names:
        return (f"client certificate {names[0]!r} is not the perfpilot operator's "
                f"(CN {OPERATOR_CLIENT_NAME!r}); control calls are operator-only")
    return None
