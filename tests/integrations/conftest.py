"""Fixtures of the MCP integration tests: our AS and the example MCP server, once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._mcp_support import Stack, mcp_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``dpopkit serve`` and ``examples/mcp/server.py`` as two processes."""
    with mcp_stack(tmp_path_factory.mktemp("mcp-as")) as running:
        yield running
