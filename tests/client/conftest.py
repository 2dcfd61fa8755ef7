"""Fixtures for client tests: real servers on 127.0.0.1, reset for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dpopkit import DPoPKey

from .servers import Servers, State, running


@pytest.fixture(scope="session")
def _running_servers() -> Iterator[Servers]:
    with running(Servers()) as servers:
        yield servers


@pytest.fixture
def servers(_running_servers: Servers) -> Servers:
    """The test AS + RS with fresh state (same port for the whole session)."""
    _running_servers.state = State(base=_running_servers.state.base)
    return _running_servers


@pytest.fixture
def key() -> DPoPKey:
    return DPoPKey.generate("ES256")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Async client tests run on asyncio and on trio (httpx supports both through anyio)."""
    backend: str = request.param
    return backend
