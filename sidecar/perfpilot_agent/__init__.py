"""perfpilot."""
