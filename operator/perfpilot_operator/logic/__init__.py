"""Pure logic of the operator: no kopf, no I/O; unit-tested without a cluster."""
