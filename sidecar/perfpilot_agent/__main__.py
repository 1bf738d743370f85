"""`perfpilot-sidecar` / `python -m perfpilot_agent`: run the agent until SIGTERM, exit 0 after draining."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from perfpilot_agent.app import AgentApp
from perfpilot_agent.config import load_settings


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags/env, serve, and return the process exit code (2 = bad settings, 1 = failed to start)."""
    settings = load_settings(argv)
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("perfpilot_agent")

    async def run() -> None:
        await AgentApp(settings).run_until_signal()

    try:
        asyncio.run(run())
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    except (OSError, RuntimeError) as exc:
        log.error("failed to start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
