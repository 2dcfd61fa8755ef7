"""The real command in a real process: ``python -m dpopkit`` and the ``dpopkit`` script.

keygen -> proof -> inspect works end to end, exit codes are 0/1/2,
key files are 0600, and failures print one line without a traceback.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from .helpers import HTU, TOKEN

TIMEOUT = 60


def dpopkit(*argv: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [sys.executable, "-m", "dpopkit", *argv],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_python_m_dpopkit_keygen_proof_inspect(tmp_path: Path) -> None:
    keygen = dpopkit("keygen", "--out", "key.json", cwd=tmp_path)
    assert keygen.returncode == 0, keygen.stderr
    assert stat.S_IMODE((tmp_path / "key.json").stat().st_mode) == 0o600
    jkt = keygen.stdout.splitlines()[0].removeprefix("jkt: ")

    proof = dpopkit(
        "proof",
        "--key",
        "key.json",
        "--method",
        "GET",
        "--url",
        HTU,
        "--access-token",
        TOKEN,
        cwd=tmp_path,
    )
    assert proof.returncode == 0, proof.stderr
    value = proof.stdout.strip()
    assert value.count(".") == 2

    argv = ("--method", "GET", "--url", HTU, "--access-token", TOKEN, f"--jkt={jkt}", "--json")
    valid = dpopkit("inspect", "-", *argv, cwd=tmp_path, stdin=value + "\n")
    assert valid.returncode == 0, valid.stdout
    assert json.loads(valid.stdout)["valid"] is True

    invalid = dpopkit(
        "inspect", value, "--method", "POST", "--url", HTU + "/x", "--json", cwd=tmp_path
    )
    assert invalid.returncode == 1
    reasons = {c["reason"] for c in json.loads(invalid.stdout)["checks"] if c["status"] == "fail"}
    assert reasons == {"htm_mismatch", "htu_mismatch"}


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    missing = dpopkit("proof", "--key", "nope.json", "--method", "GET", "--url", HTU, cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert len(missing.stderr.splitlines()) == 1
    assert "Traceback" not in missing.stderr

    usage = dpopkit("inspect", cwd=tmp_path)
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr


def test_console_script_matches_python_m(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "dpopkit"
    result = subprocess.run(
        [str(script), "keygen", "--alg", "Ed25519"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["crv"] == "Ed25519"


def test_closed_pipe_gives_no_traceback(tmp_path: Path) -> None:
    """``dpopkit keygen | head -c0``: the reader is gone before the output is written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpopkit", "keygen"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before the child can have started writing
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 141
    assert "Traceback" not in err
    assert "Exception ignored" not in err


def test_arguments_that_are_not_utf8_are_a_one_line_usage_error(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates (PEP 383); wherever they are
    encoded or printed, the command says so in one line and exits 2, never a traceback."""
    assert dpopkit("keygen", "--out", "key.json", cwd=tmp_path).returncode == 0
    proof = dpopkit("proof", "--key", "key.json", "--method", "GET", "--url", HTU, cwd=tmp_path)
    assert proof.returncode == 0, proof.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    inspect = [sys.executable, "-m", "dpopkit", "inspect", proof.stdout.strip(), "--method"]
    inspect += ["GET", "--url", HTU]
    proof_cmd = [sys.executable, "-m", "dpopkit", "proof", "--key", "key.json", "--url", HTU]
    cases: list[tuple[list[str | bytes], dict[str, str]]] = [
        ([*inspect, "--access-token", b"tok\xff"], env),
        ([*inspect, "--jkt", b"\xff"], {**env, "PYTHONIOENCODING": "utf-8"}),  # printed back
        ([*proof_cmd, "--method", "GET", "--claims", b'{"a":"\xff"}'], env),
    ]
    for argv, case_env in cases:
        done = subprocess.run(
            argv, cwd=tmp_path, env=case_env, capture_output=True, timeout=TIMEOUT, check=False
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.decode().endswith("error: an argument is not valid UTF-8\n")
        assert b"Traceback" not in done.stderr
