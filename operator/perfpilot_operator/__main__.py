"""`perfpilot-operator`: run the kopf operator cluster-wide with perfpilot's handlers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf

from perfpilot_operator.settings import Settings

LOG_LEVELS = ("debug", "info", "warning", "error")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perfpilot-operator", description=__doc__)
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        default=os.environ.get("PERFPILOT_LOG_LEVEL", "info").lower(), type=str.lower,
                        help="debug, info (default), warning or error [env PERFPILOT_LOG_LEVEL]")
    parser.add_argument("--verbose", action="store_true", help="same as --log-level=debug")
    parser.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    args = parser.parse_args(argv)
    if args.log_level not in LOG_LEVELS:  # a bad PERFPILOT_LOG_LEVEL (argparse checks only flags)
        parser.error(f"PERFPILOT_LOG_LEVEL={args.log_level!r}: choose from {', '.join(LOG_LEVELS)}")
    level = "debug" if args.verbose else args.log_level

    try:
        settings = Settings.from_env()
    except ValueError as e:      # a malformed PERFPILOT_* variable: named, with the fix
        parser.error(str(e))
    kopf.configure(verbose=level == "debug", quiet=level in ("warning", "error"),
                   log_format={"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL,
                               "json": kopf.LogFormat.JSON}[args.log_format])
    logging.getLogger().setLevel(level.upper())
    import perfpilot_operator.handlers  # noqa: F401 - registers the handlers

    memo = kopf.Memo(settings=settings)
    try:
        asyncio.run(kopf.operator(
            # No kopf peering: replicas elect a leader by Lease instead (leader.py says why).
            clusterwide=True, standalone=True, memo=memo,
            liveness_endpoint=f"http://{settings.health_host}:{settings.health_port}/healthz"))
    except KeyboardInterrupt:
        pass
    logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
