"""The end-to-end suite's own cluster, apart from the one `make demo` / `make dev-up` runs.

The demo leaves a cluster running with its operator, pod runner and example profiles; a suite
that reused it would have the demo's operator reconcile the tests' profiles (and write their
status) while the suite's own operator does. So the suite always runs on a cluster of its own:
its own state dir (e2e/.state-test) and port base (PERFPILOT_PORT_BASE + 500, which also moves
the pods' 127.x addresses), started by the suite and stopped after it unless
PERFPILOT_KEEP_CLUSTER=1 (then the next run reuses it). The demo's cluster is never touched, so it
is still there after `make test`. Override with PERFPILOT_TEST_STATE / PERFPILOT_TEST_PORT_BASE.

    python -m e2e.harness.suite down     # stop the suite's cluster (`make cluster-down` does)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OFFSET = 500   # helpers' bases are 1000 apart; +500 keeps each suite inside its owner's range
_MARK = "PERFPILOT_E2E_ISOLATED"


def isolate() -> None:
    """Point the harness at the suite's cluster. Call before e2e.harness.cluster is imported (it
    reads PERFPILOT_STATE and PERFPILOT_PORT_BASE once); child processes inherit the choice."""
    if os.environ.get(_MARK) != "1":
        base = int(os.environ.get("PERFPILOT_PORT_BASE", "0"))
        os.environ["PERFPILOT_PORT_BASE"] = os.environ.get("PERFPILOT_TEST_PORT_BASE",
                                                           str(base + OFFSET))
        os.environ["PERFPILOT_STATE"] = os.environ.get("PERFPILOT_TEST_STATE",
                                                       str(ROOT / "e2e" / ".state-test"))
        os.environ[_MARK] = "1"
    loaded = sys.modules.get("e2e.harness.cluster")
    if loaded is not None and str(loaded.STATE) != os.environ["PERFPILOT_STATE"]:
        raise RuntimeError(
            f"e2e.harness.cluster was imported before the suite chose its cluster (it points at "
            f"{loaded.STATE}); import e2e.harness.suite and call isolate() first")


def down() -> None:
    isolate()
    from e2e.harness import dev
    from e2e.harness.cluster import LocalCluster

    cluster = LocalCluster()
    if not (any(cluster.status().values()) or dev.running(cluster, "operator")
            or dev.running(cluster, "podrunner")):
        return   # not running (the usual case: the suite stops its cluster itself)
    print(f"[e2e] the test suite's cluster ({cluster.state}):", flush=True)
    dev.down(cluster)
    cluster.down()


if __name__ == "__main__":
    if sys.argv[1:] != ["down"]:
        sys.exit("usage: python -m e2e.harness.suite down")
    down()
