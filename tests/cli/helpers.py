"""Shared helpers for the CLI tests: run ``main`` in process, forge proofs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from dpopkit import DPoPKey
from dpopkit.cli import main
from dpopkit.core.jws import b64url_encode

NOW = 1_700_000_000
HTU = "https://api.example/items"
TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Call ``dpopkit.cli.main`` and capture what it printed."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def assert_one_line_error(result: Run, command: str) -> None:
    """A usage/configuration failure: exit 2, one ``dpopkit CMD: error:`` line, nothing else."""
    assert result.code == 2
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"dpopkit {command}: error: ")
    assert "Traceback" not in result.err


def forge(
    key: DPoPKey,
    *,
    header: Mapping[str, Any] | None = None,
    payload: Mapping[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    signer: DPoPKey | None = None,
) -> str:
    """Sign an arbitrary header and payload (defaults: a valid proof for GET HTU at NOW).

    ``header``/``payload`` entries override the defaults, ``drop`` removes names from
    either, ``signer`` signs with another key than the one in ``jwk``.
    """
    head: dict[str, Any] = {"typ": "dpop+jwt", "alg": key.alg, "jwk": key.public_jwk}
    body: dict[str, Any] = {"jti": "jti-0123456789abcdef", "htm": "GET", "htu": HTU, "iat": NOW}
    head.update(header or {})
    body.update(payload or {})
    for name in drop:
        head.pop(name, None)
        body.pop(name, None)
    signing_input = (
        f"{b64url_encode(json.dumps(head).encode())}.{b64url_encode(json.dumps(body).encode())}"
    )
    signature = (signer or key).sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"
