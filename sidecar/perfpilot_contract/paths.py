"""Where the app finds the sidecar's Unix socket when nothing says so (one rule for both sides).

In a pod the socket lives in the shared emptyDir mounted at /var/run/perfpilot; elsewhere (a
developer's machine, tests) under $TMPDIR. The path is computed, never created or probed with
tempfile.gettempdir(): on a read-only root filesystem that raises when no temp dir is writable.
"""

from __future__ import annotations

import os

POD_SOCKET_DIR = "/var/run/perfpilot"
POD_SOCKET = os.path.join(POD_SOCKET_DIR, "agent.sock")


def default_socket_path() -> str:
    """POD_SOCKET when its directory is writable or the socket exists, else $TMPDIR (or /tmp)."""
    if os.access(POD_SOCKET_DIR, os.W_OK) or os.path.exists(POD_SOCKET):
        return POD_SOCKET
    tmp = os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(tmp, f"perfpilot-{os.getuid()}", "agent.sock")
