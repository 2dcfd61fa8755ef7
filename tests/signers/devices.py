"""Real software devices for the signer tests: a SoftHSM 2 token directory and an swtpm.

Both are started here, for the test session, and stopped at its end. A missing tool
fails the tests under ``CI=true`` and skips them loudly elsewhere (``.ci/run``
installs them). Nothing here imitates a device: every signature is made by SoftHSM
or by the TPM simulator.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import missing_real_part

SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
USER_PIN = "7391"
#: The tokens made before the module is first loaded (SoftHSM reads its slots once).
TOKENS = ("dpop", "spare")


@dataclass
class SoftHSM:
    """A SoftHSM 2 configuration with initialised tokens, each with ``USER_PIN``."""

    module: str
    conf: Path
    labels: Iterator[int] = field(default_factory=itertools.count)

    def uri(self, label: str, *, token: str = "dpop", query: str = "") -> str:
        """The RFC 7512 URI of key ``label`` in ``token``, naming the module."""
        tail = f"&{query}" if query else ""
        return f"pkcs11:token={token};object={label}?module-path={self.module}{tail}"

    def new_label(self, prefix: str) -> str:
        return f"{prefix}-{next(self.labels)}"


def _softhsm_module() -> str | None:
    return next((path for path in SOFTHSM_MODULES if os.path.exists(path)), None)


def init_softhsm(root: Path, tokens: tuple[str, ...] = TOKENS) -> SoftHSM:
    """Write a SoftHSM 2 configuration under ``root`` and initialise ``tokens`` there."""
    tool = shutil.which("softhsm2-util")
    module = _softhsm_module()
    if tool is None or module is None:
        missing_real_part("SoftHSM 2 (Debian package softhsm2) is not installed")
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\n"
        "objectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    for label in tokens:
        subprocess.run(
            [
                tool,
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                USER_PIN,
                "--so-pin",
                "0246813579",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
    return SoftHSM(module=module, conf=conf)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_pair() -> int:
    """A free port whose successor is free too."""
    for _ in range(50):
        port = _free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free ports")


@dataclass
class SwTPM:
    """An swtpm listening on 127.0.0.1; ``tcti`` is what ESAPI and ``tpm:`` references take."""

    tcti: str
    handles: Iterator[int] = field(default_factory=lambda: itertools.count(0x81010100))

    def new_reference(self) -> str:
        return f"tpm:{next(self.handles):#x}?tcti={self.tcti}"


@contextmanager
def run_swtpm(state: Path) -> Iterator[SwTPM]:
    """Start ``swtpm socket`` (TPM 2.0, already started up) and stop it afterwards."""
    tool = shutil.which("swtpm")
    if tool is None:
        missing_real_part("swtpm (Debian packages swtpm, swtpm-tools) is not installed")
    state.mkdir(parents=True, exist_ok=True)
    server = _free_pair()
    ctrl = server + 1  # the swtpm TCTI finds the control channel at port + 1
    proc = subprocess.Popen(
        [
            tool,
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={state}",
            "--server",
            f"type=tcp,port={server},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
            "--flags",
            "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"swtpm exited: {proc.stderr.read() if proc.stderr else b''!r}"
                )
            try:
                socket.create_connection(("127.0.0.1", server), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("swtpm does not listen") from None
                time.sleep(0.05)
        yield SwTPM(tcti=f"swtpm:host=127.0.0.1,port={server}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
