"""Run blocking work off the event loop, on asyncio or trio.

anyio (installed with httpx, Starlette and FastAPI) serves both event loops; without it,
asyncio's own thread pool is used. Either way nothing fails at the first request because
an optional package is missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TypeVar

__all__ = ["to_thread"]

_T = TypeVar("_T")

_HAS_ANYIO = importlib.util.find_spec("anyio") is not None


async def to_thread(func: Callable[[], _T]) -> _T:
    """``func()`` in a worker thread of the running event loop's library."""
    if _HAS_ANYIO:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(func)
    import asyncio

    return await asyncio.to_thread(func)
