"""The MCP conformance harness's client scenarios against examples/mcp/client.py.

The same scenarios as ``.ci/run`` (``.ci/mcp-harness.sh``): ``auth/dpop`` and
``auth/dpop-nonce`` with DPoP required, and the core authorization scenarios the
official SDK's client passes, which must still pass with DPoP on. One test per
scenario, so each scenario's harness summary line shows in the run (``-rP``).
Needs the pinned harness in its cache directory (``mcp_harness_install``); it is
skipped without it, and fails instead under ``CI=true``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mcp")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "mcp-harness.sh"


def _bash(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; {command}'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
        check=False,
    )


def _scenarios(name: str) -> list[str]:
    return _bash(f'echo "${name}"').stdout.split()


DPOP = _scenarios("MCP_DPOP_CLIENT_SCENARIOS")
CORE = _scenarios("MCP_CORE_CLIENT_SCENARIOS")


@pytest.fixture(scope="module")
def harness() -> None:
    if _bash("mcp_harness_installed").returncode != 0:
        message = "the MCP conformance harness is not installed (.ci/mcp-harness.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _run(scenario: str, command: str) -> None:
    done = _bash(f'mcp_run_scenario "{scenario}" "{command}"', PYTHON=sys.executable)
    print(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"{scenario}: Passed: ")
    assert " 0 failed" in done.stdout


def test_scenario_lists() -> None:
    """C-1: the DPoP scenarios and the core authorization scenarios are all listed."""
    assert DPOP == ["auth/dpop", "auth/dpop-nonce"]
    assert len(CORE) == 28
    assert all(name.startswith("auth/") for name in CORE)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", DPOP)
def test_dpop_client_scenario(harness: None, scenario: str) -> None:
    """C-1, C-5, C-10: proofs on token and MCP requests, DPoP scheme, AS and RS nonces."""
    _run(scenario, f"{sys.executable} examples/mcp/client.py")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", CORE)
def test_core_client_scenario(harness: None, scenario: str) -> None:
    """C-7: the MCP authorization flow still passes with DPoP on (an AS without DPoP)."""
    _run(scenario, f"{sys.executable} examples/mcp/client.py --bearer-fallback")
