"""Generated from protos/perfpilot/v1 by `python -m scripts.genprotos`. Do not edit."""
