"""The contract stays importable by the operator and the client: no NumPy, numba, kopf or agent."""

from __future__ import annotations

import subprocess
import sys

import pytest

from perfpilot_contract import dtypes, histograms

import contract_table


def test_importing_the_contract_loads_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import perfpilot_contract.liveconfig, perfpilot_contract.limits, perfpilot_contract.dtypes\n"
        "import perfpilot_contract.histograms, perfpilot_contract.durations\n"
        "heavy = sorted(m for m in ('numpy', 'numba', 'kopf', 'perfpilot_agent', 'perfpilot_operator')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_docs_tables_are_fresh() -> None:
    assert contract_table.main(["--check"]) == 0, "run python tests/contract/contract_table.py"


def test_dtype_table_matches_numpy_and_the_proto_enum() -> None:
    np = pytest.importorskip("numpy")
    from perfpilot.v1 import agent_pb2 as pb

    assert {d.code for d in dtypes.DTYPES} == {v for v in pb.DType.values() if v != pb.DTYPE_UNSPECIFIED}
    for d in dtypes.DTYPES:
        assert np.dtype(d.numpy).itemsize == d.itemsize and np.dtype(d.numpy).name == d.name


def test_one_quantile_estimator_for_sidecar_and_operator() -> None:
    from perfpilot_agent.runtime.histogram import WIRE_BOUNDS, Histogram
    from perfpilot_operator.logic import histograms as op

    h = Histogram()
    h.observe_many([0.001, 0.002, 0.004, 0.2, 3.0])
    mine = op.Histogram(WIRE_BOUNDS, tuple(h.counts))
    for q in (0.5, 0.95, 0.99):
        assert h.quantile(q) == op.quantile(mine, q) == histograms.quantile(WIRE_BOUNDS, h.counts, q)
