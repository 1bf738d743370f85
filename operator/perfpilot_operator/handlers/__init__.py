"""kopf handlers, one module per concern; importing this package registers them all."""

from perfpilot_operator.handlers import admission, indexes, profiles, startup, validation

__all__ = ["admission", "indexes", "profiles", "startup", "validation"]
