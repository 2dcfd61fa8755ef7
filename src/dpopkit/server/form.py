"""The parameters of one OAuth request: single values, the one repeatable parameter.

:class:`Form` sits on top of :mod:`dpopkit.server.parsing` (which bounds and checks
the raw input) and states which parameters may repeat (RFC 6749 §3.1, §3.2;
RFC 8707 §2). Every endpoint that reads a form or a query uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dpopkit.core.http import RequestView
from dpopkit.errors import InvalidRequestError, Reason
from dpopkit.server.parsing import parse_form

__all__ = ["REPEATABLE_PARAMETERS", "Form"]

#: Parameters that may appear more than once (RFC 8707 §2); every other one only once.
REPEATABLE_PARAMETERS = frozenset({"resource"})


class Form:
    """A parsed ``application/x-www-form-urlencoded`` body (RFC 6749 Appendix B).

    Parameters may not repeat (RFC 6749 §3.1, §3.2) except those read with :meth:`all`
    (:data:`REPEATABLE_PARAMETERS`): :meth:`one` and :meth:`as_dict` refuse a repeat.
    """

    __slots__ = ("_data",)

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        data: dict[str, list[str]] = {}
        for name, value in pairs:
            data.setdefault(name, []).append(value)
        self._data = data

    @classmethod
    def parse(cls, request: RequestView) -> Form:
        """Parse a request body, refusing other media types and oversized bodies.

        Raises:
            InvalidRequestError: wrong content type, too large, not UTF-8, too many
                parameters or a forbidden character (:func:`~dpopkit.server.parsing.parse_form`).
        """
        return cls(parse_form(request))  # bounded and checked (dpopkit.server.parsing)

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def one(self, name: str, *, required: bool = False) -> str | None:
        """The single value of ``name`` (empty counts as absent, RFC 6749 §3.1).

        Raises:
            InvalidRequestError: repeated, or missing when ``required``.
        """
        values = self._data.get(name, [])
        if len(values) > 1:
            raise InvalidRequestError(Reason.INVALID_REQUEST, f"{name} is repeated")
        value = values[0] if values else ""
        if not value:
            if required:
                raise InvalidRequestError(Reason.INVALID_REQUEST, f"{name} is required")
            return None
        return value

    def need(self, name: str) -> str:
        """The single required value of ``name``."""
        value = self.one(name, required=True)
        assert value is not None
        return value

    def all(self, name: str) -> list[str]:
        """Every value of a repeatable parameter (``resource``, RFC 8707 §2)."""
        return [v for v in self._data.get(name, []) if v]

    def as_dict(self) -> dict[str, Any]:
        """Every parameter: single values as strings, repeatable ones as lists (for storage).

        The one rule for a whole authorization request, at ``/par`` and at ``/authorize``
        alike (RFC 6749 §3.1, RFC 9126 §2.1): no parameter but a repeatable one
        (:data:`REPEATABLE_PARAMETERS`) may appear more than once.

        Raises:
            InvalidRequestError: a parameter is repeated.
        """
        for name, values in self._data.items():
            if len(values) > 1 and name not in REPEATABLE_PARAMETERS:
                raise InvalidRequestError(Reason.INVALID_REQUEST, f"{name} is repeated")
        return {k: (v if k in REPEATABLE_PARAMETERS else v[0]) for k, v in self._data.items() if v}
