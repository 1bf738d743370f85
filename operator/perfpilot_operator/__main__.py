"""`perfpilot-operator`: run the kopf operator cluster-wide with perfpilot's handlers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import kopf

from perfpilot_operator.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perfpilot-operator", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    parser.add_argument("--standalone", action="store_true", default=True,
                        help="no peering (one operator replica)")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    kopf.configure(verbose=args.verbose,
                   log_format={"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL,
                               "json": kopf.LogFormat.JSON}[args.log_format])
    import perfpilot_operator.handlers  # noqa: F401 - registers the handlers

    memo = kopf.Memo(settings=settings)
    try:
        asyncio.run(kopf.operator(
            clusterwide=True, standalone=args.standalone, memo=memo,
            liveness_endpoint=f"http://{settings.health_host}:{settings.health_port}/healthz"))
    except KeyboardInterrupt:
        pass
    logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
