"""Authlib's Django integration with dpopkit's DPoP layer (its own process: Django settings
are process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import ROOT


def test_django_authorization_server_and_resource_protector() -> None:
    """AS-1, AS-2, AS-9, AS-12, RS-3, RS-16: with Authlib's Django ``AuthorizationServer``
    and ``ResourceProtector`` (opaque tokens stored with their thumbprint), a bound client
    needs a proof, a nonce round trip gives a DPoP token, the API accepts it once per proof
    and refuses it as Bearer."""
    run = subprocess.run(
        [sys.executable, "-m", "tests.integrations.authlib._django_check"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout) == {
        "no proof": [400, "invalid_dpop_proof", None],
        "no nonce": [400, "use_dpop_nonce", None],
        "with nonce": [200, None, "DPoP"],
        "stored jkt": True,
        "api": [200, None, None],
        "api replayed": [401, "invalid_dpop_proof", None],
        "api bearer": [401, "invalid_token", None],
    }
