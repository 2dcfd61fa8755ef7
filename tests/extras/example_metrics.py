"""docs/resource-server.md: guard metrics through prometheus_client (``dpopkit[metrics]``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from dpopkit.resource import CallableTokens, ResourceGuard, TokenInfo
from dpopkit.storage.memory import MemoryReplayCache


def refuse(token: str) -> TokenInfo:
    raise AssertionError("not called")


guard = ResourceGuard(tokens=CallableTokens(refuse), replay=MemoryReplayCache(single_process=True))
registry = CollectorRegistry()
guard.metrics.register_prometheus(registry)
text = generate_latest(registry).decode()
if "dpop" not in text:
    raise SystemExit("no dpopkit metrics exported")
print("ok")
