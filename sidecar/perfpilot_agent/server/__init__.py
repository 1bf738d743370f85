"""gRPC surface of the agent: servicer, auth interceptor, events, health, tensor codec."""
