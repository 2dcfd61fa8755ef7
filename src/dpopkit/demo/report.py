"""What the demo story runs against and what it reports.

:class:`DemoTarget` names an authorization server and a protected API;
:class:`StepResult` and :class:`DemoReport` are the story's outcome, and
:func:`format_step` / :func:`format_summary` render it for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DEMO_CLIENT_ID",
    "DEMO_REDIRECT_URI",
    "DEMO_USER",
    "DemoReport",
    "DemoTarget",
    "StepResult",
    "format_step",
    "format_summary",
]

#: The public client of ``dpopkit serve``'s demo defaults (authorization code + refresh).
DEMO_CLIENT_ID = "demo-public"
#: Its registered redirect URI; nothing needs to listen there (the redirect is not followed).
DEMO_REDIRECT_URI = "http://127.0.0.1:8765/callback"
#: The user test mode logs in (the demo defaults' user).
DEMO_USER = "demo"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    """One step of the story: what should happen, what did, and whether they agree.

    Attributes:
        name: a stable identifier (``api-call``, ``replayed-proof``, ...).
        title: one line saying what the step does.
        expected: the behaviour RFC 9449 requires.
        observed: what the servers answered.
        ok: whether ``observed`` is what was expected.
        ran: False when the step was not started (an earlier step failed or the time
            budget ran out).
        details: narration lines (never tokens or proofs).
    """

    name: str
    title: str
    expected: str
    observed: str
    ok: bool
    ran: bool = True
    details: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable form (``--json``)."""
        return {
            "name": self.name,
            "expected": self.expected,
            "observed": self.observed,
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoReport:
    """The outcome of :func:`run_story`: ``ok`` only when every step behaved as expected."""

    issuer: str
    api_url: str
    steps: tuple[StepResult, ...]

    @property
    def ok(self) -> bool:
        """True when there are steps and every one of them is ok."""
        return bool(self.steps) and all(step.ok for step in self.steps)

    def as_dict(self) -> dict[str, Any]:
        """``{ok, issuer, api, steps: [{name, expected, observed, ok}]}``."""
        return {
            "ok": self.ok,
            "issuer": self.issuer,
            "api": self.api_url,
            "steps": [step.as_dict() for step in self.steps],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoTarget:
    """Where the story runs: an authorization server and a protected API.

    The AS must run in test mode (``/authorize`` signs a user in and consents without
    a page) and accept any RFC 8707 ``resource`` naming the API's origin.

    Attributes:
        issuer: the AS issuer (its metadata is discovered, RFC 8414).
        api_url: the protected endpoint's full URL (e.g. ``.../api/whoami``); a 200
            answer is a JSON object whose ``jkt`` names the caller's key.
        client_id: a registered public client allowed ``authorization_code`` and
            ``refresh_token`` whose tokens must be DPoP-bound.
        redirect_uri: a redirect URI registered for that client.
    """

    issuer: str
    api_url: str
    client_id: str = DEMO_CLIENT_ID
    redirect_uri: str = DEMO_REDIRECT_URI

    @property
    def api_origin(self) -> str:
        """The API's origin: the RFC 8707 ``resource`` and the token audience."""
        parts = urlsplit(self.api_url)
        return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def format_step(number: int, step: StepResult) -> str:
    """The human-readable block for one step."""
    mark = "ok" if step.ok else "FAILED"
    lines = [f"[{number:>2}] {step.title} ... {mark}"]
    lines += [f"       {line}" for line in step.details]
    lines.append(f"       expected: {step.expected}")
    lines.append(f"       observed: {step.observed}")
    return "\n".join(lines)


def format_summary(report: DemoReport) -> str:
    """The closing lines: how many steps behaved, and which did not."""
    passed = sum(step.ok for step in report.steps)
    total = len(report.steps)
    if report.ok:
        return f"All {total} steps behaved as RFC 9449 requires: DPoP works end to end."
    failed = ", ".join(step.name for step in report.steps if not step.ok)
    return f"{passed} of {total} steps behaved as expected; FAILED: {failed}"
