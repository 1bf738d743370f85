"""The agent's engines: cache, monitor, heartbeat sampling, admission, kernel runner."""
