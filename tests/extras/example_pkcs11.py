"""docs/keys.md: a key made inside a SoftHSM 2 token gets a token and calls an API.

Only ``dpopkit[pkcs11]`` is installed; SoftHSM 2 (Debian ``softhsm2``) is on the machine.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from dpopkit import create_proof, verify_proof
from dpopkit.signers import load_key_reference
from dpopkit.signers.pkcs11 import generate_pkcs11_key
from tests.extras._device import token_and_call

MODULE = "/usr/lib/softhsm/libsofthsm2.so"

with tempfile.TemporaryDirectory() as tmp:
    conf = Path(tmp) / "softhsm2.conf"
    (Path(tmp) / "tokens").mkdir()
    conf.write_text(f"directories.tokendir = {tmp}/tokens\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "dpop",
            "--pin",
            "1234",
            "--so-pin",
            "123456",
        ],
        check=True,
        capture_output=True,
    )
    os.environ["DPOPKIT_PKCS11_PIN"] = "1234"  # or ?pin-source=file:/path in the URI
    uri = f"pkcs11:token=dpop;object=client?module-path={MODULE}"
    made = generate_pkcs11_key(uri)  # ES256, sensitive, never extractable
    key = load_key_reference(uri)  # what every dpopkit command does with --key URI
    if key.jkt != made.jkt or key.is_exportable:
        raise SystemExit("the device key did not come back as made")
    import time

    from dpopkit import create_proof

    now = time.time()
    proof = create_proof(key, htm="GET", htu="https://api.example/x", now=now)
    verify_proof(proof, htm="GET", htu="https://api.example/x", expected_jkt=key.jkt, now=now)
    token_and_call(key)
