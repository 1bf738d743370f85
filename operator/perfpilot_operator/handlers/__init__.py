"""kopf handlers, one module per concern; importing this package registers them all.

`# type: ignore[arg-type]  # kopf-kwargs` on a decorator: kopf's handler protocols list a fixed
set of keyword arguments, so a handler that takes an index (kopf passes indexes by name) or types
`namespace` as str (a namespaced resource) does not match them, though kopf calls it correctly.
"""

from perfpilot_operator.handlers import admission, indexes, profiles, startup, validation

__all__ = ["admission", "indexes", "profiles", "startup", "validation"]
