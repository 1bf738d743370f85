"""Certificates for the mutual-TLS tests, from the operator's own issuing code (certs.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from perfpilot_contract.trust import OPERATOR_CLIENT_NAME
from perfpilot_operator.certs import Authority, CABundle, issue, new_authority

Pair = tuple[bytes, bytes]
"""(private key PEM, certificate PEM)."""


@dataclass(frozen=True)
class PKI:
    ca: Authority
    ca_file: str
    operator: Pair
    """The operator's client certificate: the only one the control port accepts."""
    other_ca: Pair
    """The operator's name, signed by another CA."""
    expired: Pair
    """The operator's name and the right CA, expired an hour ago."""
    not_operator: Pair
    """The right CA, another name (e.g. a webhook serving certificate)."""

    @classmethod
    def make(cls, directory: str) -> PKI:
        now = dt.datetime.now(dt.UTC)
        ca = new_authority(now)
        path = Path(directory) / "ca.crt"
        path.write_bytes(CABundle((ca,)).trust_pem())
        return cls(
            ca=ca, ca_file=str(path),
            operator=issue(ca, OPERATOR_CLIENT_NAME, client=True, now=now),
            other_ca=issue(new_authority(now), OPERATOR_CLIENT_NAME, client=True, now=now),
            expired=issue(ca, OPERATOR_CLIENT_NAME, client=True, now=now - dt.timedelta(days=2),
                          not_after=now - dt.timedelta(hours=1)),
            not_operator=issue(ca, "someone-else", client=True, now=now),
        )
