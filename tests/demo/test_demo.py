"""``dpopkit demo``: the whole story passes against our servers, and fails where it should.

The demo is a smoke test of the toolkit: RFC 9449 §5/§10 (AS-2, AS-3, AS-5, AS-6,
AS-12, AS-21, C-1, C-8, C-10, C-18), §7 (RS-2, RS-3, RS-16) and §11.1 (V-12 replay).
These tests run it in process, as a real process, and against an API that has no
DPoP protection at all (the story must notice).
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dpopkit.cli import main
from dpopkit.demo import DemoTarget, demo_servers, play, run_story
from tests.live import serve_in_thread

STEP_NAMES = [
    "client-key",
    "token",
    "api-call",
    "stolen-token-no-proof",
    "stolen-token-own-proof",
    "replayed-proof",
    "bearer-downgrade",
    "refresh",
    "stolen-refresh-own-key",
    "stolen-refresh-no-proof",
]


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Make ``tempfile`` create its directories under ``tmp_path`` (to check the clean-up)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_demo_json_every_step_ok(private_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The story passes end to end (exit 0) and leaves no temporary directory behind."""
    started = time.monotonic()
    code = main(["demo", "--json"])
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    report = json.loads(out)  # --json prints the JSON document only
    assert code == 0
    assert report["ok"] is True
    assert [step["name"] for step in report["steps"]] == STEP_NAMES
    for step in report["steps"]:
        assert set(step) == {"name", "expected", "observed", "ok"}
        assert step["ok"] is True, step
    assert report["issuer"].startswith("http://127.0.0.1:")
    assert report["api"].startswith("http://127.0.0.1:")
    assert elapsed < 30
    assert list(private_tmp.iterdir()) == []  # servers' data removed


def test_demo_keep_keeps_the_data_directory(
    private_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--keep`` leaves the AS's database, keys and secrets for ``dpopkit serve --data-dir``."""
    assert main(["demo", "--keep"]) == 0
    captured = capsys.readouterr()
    kept = list(private_tmp.iterdir())
    assert len(kept) == 1
    assert str(kept[0]) in captured.err
    assert (kept[0] / "as" / "dpopkit-as.db").is_file()
    assert (kept[0] / "as" / "nonce-secret").is_file()
    # The human-readable story: one line per step with its verdict.
    verdicts = [line for line in captured.out.splitlines() if line.startswith("[")]
    assert len(verdicts) == len(STEP_NAMES)
    assert all(line.endswith("... ok") for line in verdicts)


def test_demo_as_a_process() -> None:
    """``python -m dpopkit demo`` exits 0 and prints the summary; no token is printed."""
    proc = subprocess.run(
        [sys.executable, "-m", "dpopkit", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith(f"All {len(STEP_NAMES)} steps behaved")
    assert "FAILED" not in proc.stdout
    assert proc.stderr == ""
    # Tokens and proofs are JWTs; the narration shows thumbprints only.
    assert re.search(r"eyJ[\w-]*\.[\w-]+\.[\w-]+", proc.stdout) is None


# -- the story notices a broken API ------------------------------------------------------------


def _unprotected_api() -> Starlette:
    """An API without any DPoP guard: 200 for every request, whatever it carries."""

    async def anything(request: Request) -> Response:
        return JSONResponse({"sub": "anyone"})

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])


def test_rs3_rs16_demo_fails_against_an_unprotected_api(tmp_path: Path) -> None:
    """RS-3/RS-16/V-12: an API that lets stolen tokens through makes the demo exit 1.

    The real AS still behaves (key, token, stolen refresh token), but every API step
    that depends on the DPoP guard is reported as failed.
    """
    with (
        demo_servers(tmp_path / "as") as real,
        serve_in_thread(lambda _base: _unprotected_api()) as api,
    ):
        target = DemoTarget(issuer=real.issuer, api_url=api + "/api/whoami")
        out = io.StringIO()
        code = play(target, out=out, as_json=True)
    report = json.loads(out.getvalue())
    assert code == 1
    assert report["ok"] is False
    failed = {step["name"] for step in report["steps"] if not step["ok"]}
    assert failed == {
        "api-call",  # the answer names no key: the token's binding was never checked
        "stolen-token-no-proof",
        "stolen-token-own-proof",
        "replayed-proof",
        "bearer-downgrade",
        "refresh",
    }


def test_as12_demo_fails_when_the_as_asks_for_no_nonce(tmp_path: Path) -> None:
    """AS-12/C-10: without a ``use_dpop_nonce`` round trip the token step is reported failed.

    Everything else still works (the nonce is optional in RFC 9449 §8), so only that
    step fails, and the exit status is 1.
    """
    out = io.StringIO()
    with demo_servers(tmp_path / "as", require_nonces=False) as target:
        code = play(target, out=out, as_json=True)
    report = json.loads(out.getvalue())
    assert code == 1
    assert {step["name"] for step in report["steps"] if not step["ok"]} == {"token"}


def test_demo_unreachable_servers_fail_fast_without_traceback() -> None:
    """Nothing listens: the token step fails, later steps are not run, no exception escapes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # a port nobody listens on
    target = DemoTarget(
        issuer=f"http://127.0.0.1:{port}", api_url=f"http://127.0.0.1:{port}/api/whoami"
    )
    started = time.monotonic()
    report = run_story(target, timeout=2.0)
    assert time.monotonic() - started < 20
    assert not report.ok
    oks = {step.name: step.ok for step in report.steps}
    assert oks == {name: name == "client-key" for name in STEP_NAMES}
    assert report.steps[1].ran
    assert not any(step.ran for step in report.steps[2:])
