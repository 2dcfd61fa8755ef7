"""The benchmarks' correctness gate: every verifier that bench/core.py times does the whole job.

The timed ratios mean something only if the verifiers compared (dpopkit, the PyJWT- and
joserfc-based peers, and the minimal yardstick) accept a valid proof and refuse the same bad
ones (V-2..V-12, replay); bench/core.py refuses to time anything otherwise, and this test keeps
that gate green in CI.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def core_bench() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("core")
    finally:
        sys.path.remove(str(BENCH))


def test_every_benchmarked_verifier_passes_the_gate(
    core_bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert core_bench.correctness_gate(verbose=True) is True
    out = capsys.readouterr().out
    assert "FAILED" not in out
    for name in ("dpopkit", "pyjwt", "joserfc", "minimal"):
        assert f" {name} " in out


def test_the_minimal_yardstick_refuses_what_dpopkit_refuses(core_bench: ModuleType) -> None:
    # Inputs beyond the gate's twelve: broken structure must be a RejectedError, never a crash.
    verify = core_bench.minimal_verifier({})
    km = core_bench.new_key("ES256")
    good = core_bench.create_proof(
        km.dpop,
        htm=core_bench.HTM,
        htu=core_bench.REQUEST_URL,
        access_token=core_bench.ACCESS_TOKEN,
    )
    header, payload, signature = good.split(".")
    for bad in (
        "a.b",
        f"{header}.{payload}.{signature}.x",
        f"{header}=.{payload}.{signature}",
        f"{header}.{payload[:-1]}.{signature}",
        "x" * 9000,
        f"{header}.e30.{signature}",  # {} : no claims
    ):
        with pytest.raises(core_bench.RejectedError):
            verify(bad, km.jkt, core_bench.time.time())
    verify(good, km.jkt, core_bench.time.time())
