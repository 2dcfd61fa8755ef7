"""HD-28: what a package index and ``dpopkit --version`` tell a user is true and complete."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import dpopkit

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
#: Hosts that stand for "fill this in later" (RFC 2606 and RFC 6761 names, loopback).
PLACEHOLDER = re.compile(r"\b(example\.(com|org|net|invalid)|\.invalid\b|localhost|127\.0\.0\.1)")


def test_hd28_version_flag_prints_the_installed_version() -> None:
    """HD-28: ``dpopkit --version`` answers the package version and exits 0."""
    out = subprocess.run(
        [sys.executable, "-m", "dpopkit", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"dpopkit {dpopkit.__version__}"
    assert dpopkit.__version__ == PYPROJECT["version"]


def test_hd28_license_file_matches_the_declared_license() -> None:
    """HD-28: a LICENSE file ships, and it is the license pyproject.toml declares."""
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert PYPROJECT["license"] == "MIT"
    assert text.startswith("MIT License")
    assert "LICENSE" in PYPROJECT["license-files"]


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[str]], list[str]]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("dpopkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(meta_name).decode())
    fields: dict[str, list[str]] = {}
    for key, value in message.items():
        fields.setdefault(key, []).append(value)
    return fields, names


def test_hd28_built_metadata_has_no_placeholder_urls(
    metadata: tuple[dict[str, list[str]], list[str]],
) -> None:
    """HD-28: no field of the wheel's metadata points at a placeholder host."""
    fields, names = metadata
    header_values = [v for key, values in fields.items() for v in values if key != "Description"]
    assert [v for v in header_values if PLACEHOLDER.search(v)] == []
    assert fields["License-Expression"] == ["MIT"]
    assert any(n.endswith("licenses/LICENSE") for n in names)
