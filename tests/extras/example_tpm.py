"""docs/keys.md: a key made inside a TPM 2.0 (swtpm) gets a token and calls an API.

Only ``dpopkit[tpm]`` is installed; swtpm and libtss2 (Debian) are on the machine.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time

from dpopkit.signers import load_key_reference
from dpopkit.signers.tpm import generate_tpm_key
from tests.extras._device import token_and_call


def free_pair() -> int:
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)


with tempfile.TemporaryDirectory() as state:
    port = free_pair()
    swtpm = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={state}",
            "--server",
            f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
            "--flags",
            "not-need-init,startup-clear",
        ],
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        reference = f"tpm:0x81010001?tcti=swtpm:host=127.0.0.1,port={port}"
        made = generate_tpm_key(reference)  # ES256 under the storage hierarchy, persistent
        key = load_key_reference(reference)  # what every dpopkit command does with --key tpm:
        if key.jkt != made.jkt or key.is_exportable:
            raise SystemExit("the device key did not come back as made")
        token_and_call(key)
    finally:
        swtpm.terminate()
        swtpm.wait(10)
