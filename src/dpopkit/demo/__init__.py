"""The DPoP demo: the whole story end to end (``dpopkit demo``) and the API it calls.

* :mod:`.api`: the demo protected API (``GET``/``POST /api/whoami``) that
  ``dpopkit serve-api`` runs and ``dpopkit serve`` mounts; it needs only the
  resource-server role, so importing it loads neither the authorization server
  nor ``httpx``;
* :mod:`.report`: what the story runs against (:class:`~.report.DemoTarget`) and
  what it reports;
* :mod:`.story`: the client and the attacker, step by step (RFC 9449 §2-§11);
* :mod:`.servers`: dpopkit's authorization server and the API on loopback ports.

The story's names are importable from here as well; they are loaded on first use
(they need the ``server`` extra), so that ``dpopkit.demo.api`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dpopkit.demo.report import (
        DEMO_CLIENT_ID,
        DEMO_REDIRECT_URI,
        DemoReport,
        DemoTarget,
        StepResult,
        format_step,
        format_summary,
    )
    from dpopkit.demo.servers import demo_servers
    from dpopkit.demo.story import play, run_story

__all__ = [
    "DEMO_CLIENT_ID",
    "DEMO_REDIRECT_URI",
    "DemoReport",
    "DemoTarget",
    "StepResult",
    "demo_servers",
    "format_step",
    "format_summary",
    "play",
    "run_story",
]

#: Where each name of ``__all__`` is defined.
_HOMES = {
    "DEMO_CLIENT_ID": "report",
    "DEMO_REDIRECT_URI": "report",
    "DemoReport": "report",
    "DemoTarget": "report",
    "StepResult": "report",
    "format_step": "report",
    "format_summary": "report",
    "demo_servers": "servers",
    "play": "story",
    "run_story": "story",
}


def __getattr__(name: str) -> object:
    """Load a story name from its module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value: object = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
