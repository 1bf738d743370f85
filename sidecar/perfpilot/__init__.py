"""perfpilot wire protocol: stubs generated from protos/ in v1/, shared hand-written modules beside it."""
