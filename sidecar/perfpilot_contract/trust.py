"""Names both sides of the operator <-> sidecar mutual TLS agree on (docs/operator.md, "Trust model").

The operator's CA signs a client certificate whose common name is OPERATOR_CLIENT_NAME; the
sidecar accepts control calls over TCP only from a certificate chained to the CA(s) in its
CA file and carrying that name. The sidecar serves with a key it makes at start and a
self-signed certificate for AGENT_SERVER_NAME, the name the operator checks (it pins the
certificate it saw on first contact). The webhook hands each injected pod the CA's public
certificate(s) in CA_ANNOTATION, mounted through a downwardAPI volume: no Secret or ConfigMap
in the app's namespace.
"""

from __future__ import annotations

OPERATOR_CLIENT_NAME = "perfpilot-operator"
AGENT_SERVER_NAME = "perfpilot-agent"
CA_ANNOTATION = "perfpilot.io/ca-bundle"
CA_DIR = "/var/run/perfpilot-ca"
CA_FILE = f"{CA_DIR}/ca.crt"
