"""TLS for the shared cache tier (rediss://): one verifying context per tier, built off the event loop.

redis-py builds an SSLContext per connection, synchronously, inside the connect timeout: loading the
system CA store costs OpenSSL 3 tens of milliseconds (the sidecar image's 142 CAs: 30-60 ms on a
busy node), on the event loop that also serves gRPC, and close to the default 50ms timeout, which
then expired before the handshake had started. `context()` is run once per tier in a
thread (OpenSSL loads CA files with the GIL released) and `SharedContextConnection` hands it to
every connection of the pool.
"""

from __future__ import annotations

import ssl
from typing import Any

from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from perfpilot_contract.sharedcache import SecretRef


def context(ca_pem: str | None, ca_ref: SecretRef | None) -> ssl.SSLContext:
    """Verify the server's certificate (chain to the system CAs, or to tls.caSecret's PEM) and that
    it names the url's host. A PEM that does not load is an error naming the Secret and key."""
    ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname, ctx.verify_mode = True, ssl.CERT_REQUIRED  # stated: redis-py < 6 checked no host name
    if ca_pem and ca_ref is not None:
        try:
            ctx.load_verify_locations(cadata=ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise RedisConnectionError(f"cache.shared.tls.caSecret {ca_ref.name}/{ca_ref.key} does not hold a "
                                       f"PEM CA certificate: {exc}") from None
    return ctx


class SharedContextConnection(SSLConnection):
    """An SSLConnection that uses the tier's context instead of building its own."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context.context = tls_context
