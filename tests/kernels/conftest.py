"""Fixtures for the kernel subsystem tests.

numba compilation is slow, so the in-process kernels are warmed once per session (cache=True
makes later sessions cheap) and pools are module-scoped where tests can share one.
"""

from __future__ import annotations

import numpy as np
import pytest

ALL = ("cosine_topk", "normalize_score", "weighted_mean")


@pytest.fixture(scope="session")
def jit():
    from perfpilot_agent.kernels import jit as jit_mod

    jit_mod.warm(ALL)
    jit_mod.warm_probe()
    return jit_mod


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
