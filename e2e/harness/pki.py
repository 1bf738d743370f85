"""Certificates and keys for the local control plane.

One CA signs the API server's serving certificate and the admin client certificate
(group system:masters); a separate RSA key pair signs service-account tokens. Written
with `cryptography` so no openssl binary is needed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class Pki:
    """Paths of the files the components read."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def admin_crt(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def exists(self) -> bool:
        return all(
            p.exists()
            for p in (self.ca_crt, self.server_crt, self.admin_crt, self.sa_key, self.sa_pub)
        )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _sign(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    ca_cert: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey,
    is_ca: bool = False,
    usages: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_pki(directory: Path, *, service_ip: str = "10.0.0.1") -> Pki:
    """Create the CA, serving, admin and service-account material once; reuse it after."""
    pki = Pki(directory)
    if pki.exists():
        return pki
    directory.mkdir(parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _sign(
        subject=_name("perfpilot-local-ca"),
        public_key=ca_key.public_key(),
        ca_cert=None,
        ca_key=ca_key,
        is_ca=True,
    )
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_crt, ca_cert)

    server_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(service_ip)),
    ]
    server_cert = _sign(
        subject=_name("kube-apiserver"),
        public_key=server_key.public_key(),
        ca_cert=ca_cert,
        ca_key=ca_key,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=sans,
    )
    _write_key(pki.server_key, server_key)
    _write_cert(pki.server_crt, server_cert)

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin_cert = _sign(
        subject=_name("perfpilot-admin", "system:masters"),
        public_key=admin_key.public_key(),
        ca_cert=ca_cert,
        ca_key=ca_key,
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    _write_key(pki.admin_key, admin_key)
    _write_cert(pki.admin_crt, admin_cert)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def _load_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki.ca_key} is not an EC key")
    return x509.load_pem_x509_certificate(pki.ca_crt.read_bytes()), ca_key


def issue_client_cert(
    pki: Pki, *, user: str, groups: list[str], out_dir: Path
) -> tuple[Path, Path]:
    """A client certificate for another identity (RBAC tests, the operator's user)."""
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    cert = _sign(
        subject=x509.Name(attrs),
        public_key=key.public_key(),
        ca_cert=ca_cert,
        ca_key=ca_key,
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    crt, keyp = out_dir / f"{user}.crt", out_dir / f"{user}.key"
    _write_cert(crt, cert)
    _write_key(keyp, key)
    return crt, keyp


def issue_serving_cert(
    pki: Pki, *, name: str, ips: list[str], dns: list[str], out_dir: Path
) -> tuple[Path, Path]:
    """A serving certificate signed by the cluster CA (the kubelet's, so the API server can
    verify it with --kubelet-certificate-authority)."""
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = _sign(subject=_name(name), public_key=key.public_key(), ca_cert=ca_cert,
                 ca_key=ca_key, usages=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans)
    out_dir.mkdir(parents=True, exist_ok=True)
    crt, keyp = out_dir / f"{name}-serving.crt", out_dir / f"{name}-serving.key"
    _write_cert(crt, cert)
    _write_key(keyp, key)
    return crt, keyp
