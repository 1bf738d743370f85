"""The default socket path: one rule for the app and the sidecar, safe on a read-only root."""

from __future__ import annotations

import pytest

from perfpilot_agent.config import Settings
from perfpilot_client.config import default_target
from perfpilot_contract import paths


def test_app_and_sidecar_agree_on_the_default_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PERFPILOT_ADDRESS", "PERFPILOT_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    assert default_target() == f"unix:{Settings().socket_path}"


def test_no_writable_temp_dir_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only root with no writable temp dir: tempfile.gettempdir() would raise here."""
    monkeypatch.setattr(paths, "POD_SOCKET_DIR", "/nonexistent/perfpilot")
    monkeypatch.setattr(paths, "POD_SOCKET", "/nonexistent/perfpilot/agent.sock")
    monkeypatch.setenv("TMPDIR", "/nonexistent/tmp")
    assert paths.default_socket_path().startswith("/nonexistent/tmp/perfpilot-")
    monkeypatch.delenv("TMPDIR")
    assert paths.default_socket_path().startswith("/tmp/perfpilot-")
