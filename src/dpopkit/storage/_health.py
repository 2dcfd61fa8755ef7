"""Log a store's outages: one line when it stops answering, one when it answers again.

Requests during an outage are refused (503, fail closed) and each refusal is logged by the
role that refused it; this adds the two lines an operator looks for, on the
``dpopkit.storage`` logger, without a line per request. ``ok()`` on the hot path is one
attribute test.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["StoreHealth"]

logger = logging.getLogger("dpopkit.storage")


class StoreHealth:
    """The up/down state of one store, as its callers observe it."""

    __slots__ = ("_down_since", "_lock", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._down_since: float | None = None
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        """Whether the last call failed."""
        return self._down_since is not None

    def failed(self, error: str) -> None:
        """A call failed because the store is unavailable (logged once per outage)."""
        if self._down_since is not None:
            return
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                logger.warning("store unavailable store=%s error=%s", self.name, error)

    def ok(self) -> None:
        """A call succeeded (logs the recovery when the store was down)."""
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            logger.warning(
                "store recovered store=%s after=%.1fs", self.name, time.monotonic() - since
            )
