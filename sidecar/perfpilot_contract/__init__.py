"""The perfpilot contract: what the CRD, the operator, the sidecar and the client must agree on.

Hand-written, beside the generated stubs (`perfpilot.v1`), and dependency-light on purpose: it
imports only the stubs and the standard library (no NumPy, no numba, no kopf), so the operator,
the sidecar and the app-side client can all import it.

- `durations`: Go-style duration strings <-> nanoseconds <-> protobuf Duration, one sign rule.
- `limits`: min, max and default of every live-config field, and the known kernel names.
- `liveconfig`: CRD-shaped dict -> AgentConfig message -> validated LiveConfig (and back).
- `dtypes`: the tensor element types on the wire.
- `histograms`: the one quantile estimator over fixed-bucket histograms.
- `trust`: the certificate names, annotation and paths of the operator <-> sidecar mutual TLS.

tests/contract/ checks the CRD (crds/perfprofile.yaml) and docs against this package.
"""
