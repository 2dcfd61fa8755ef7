"""The demo protected API's former home: it lives in :mod:`dpopkit.demo.api` now.

Kept so that ``from dpopkit.resource.demo import create_whoami_app`` keeps working;
new code imports :mod:`dpopkit.demo.api`. It is the one module of
:mod:`dpopkit.resource` that imports from above it, and nothing in dpopkit imports it.
"""

from __future__ import annotations

from dpopkit.demo.api import LOOPBACK_NETWORKS, METRICS_PATH, WHOAMI_PATH, create_whoami_app

__all__ = ["LOOPBACK_NETWORKS", "METRICS_PATH", "WHOAMI_PATH", "create_whoami_app"]
