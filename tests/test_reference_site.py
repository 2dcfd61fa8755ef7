"""The API reference site: ``mkdocs build --strict`` passes and documents every public name.

The site is built from docs/ and the docstrings (MkDocs, Material, mkdocstrings); a broken
link, an unknown reference or a docstring that does not match its signature fails the
strict build. The inventory the build writes (``objects.inv``) must then hold every name in
the ``__all__`` of each public module.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Modules whose ``__all__`` is public API, each documented on a reference page.
PUBLIC_MODULES = (
    "dpopkit",
    "dpopkit.client",
    "dpopkit.client.httpx",
    "dpopkit.client.httpx2",
    "dpopkit.integrations.mcp.client",
    "dpopkit.client.requests",
    "dpopkit.client.tokens",
    "dpopkit.client.flow",
    "dpopkit.resource",
    "dpopkit.resource.fastapi",
    "dpopkit.resource.flask",
    "dpopkit.resource.django",
    "dpopkit.server",
    "dpopkit.storage.memory",
    "dpopkit.storage.sqlite",
    "dpopkit.storage.redis",
    "dpopkit.storage.postgres",
    "dpopkit.storage.sql",
    "dpopkit.keyfile",
    "dpopkit.integrations.mcp.server",
    "dpopkit.signers",
    "dpopkit.signers.pkcs11",
    "dpopkit.signers.tpm",
    "dpopkit.integrations.authlib",
)


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[test]'")
    site = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-4000:]
    header, _, rest = (site / "objects.inv").read_bytes().partition(b"zlib.\n")
    assert header.startswith(b"# Sphinx inventory version 2")
    return {line.split()[0] for line in zlib.decompress(rest).decode().splitlines()}


@pytest.mark.slow
def test_strict_build_documents_every_public_name(inventory: set[str]) -> None:
    missing = [
        f"{module}.{name}"
        for module in PUBLIC_MODULES
        for name in importlib.import_module(module).__all__
        if f"{module}.{name}" not in inventory
    ]
    assert missing == []


def test_every_module_with_a_public_all_is_on_a_reference_page() -> None:
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "reference").glob("*.md"))
    documented = {line.split()[1] for line in pages.splitlines() if line.startswith("::: ")}
    assert set(PUBLIC_MODULES) <= documented
