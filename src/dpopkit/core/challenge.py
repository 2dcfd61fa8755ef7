"""``WWW-Authenticate`` challenges: build and parse (RFC 9110 §11.6.1, RFC 6750 §3, RFC 9449 §7.1).

A field value may hold several challenges (``Bearer, DPoP algs="ES256"``);
parameters are ``token=token`` or ``token="quoted string"`` and names compare
case-insensitively. Unknown parameters are kept and ignored by callers
(RFC 9449 §7.1, checklist C-15).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

__all__ = ["Challenge", "ChallengeSyntaxError", "build_challenge", "parse_challenges"]

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6750 §3: error and error_description are limited to %x20-21 / %x23-5B / %x5D-7E.
_RFC6750_VALUE_RE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_QUOTED_SAFE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


class ChallengeSyntaxError(ValueError):
    """A ``WWW-Authenticate`` value does not follow RFC 9110 §11.6.1."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """One authentication challenge: a scheme and its parameters.

    ``params`` keys are lower-cased; the scheme keeps its spelling but
    :meth:`is_scheme` compares it case-insensitively (RFC 9110 §11.1).
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None

    def is_scheme(self, scheme: str) -> bool:
        """Return whether this challenge uses ``scheme`` (case-insensitive)."""
        return self.scheme.lower() == scheme.lower()

    def __str__(self) -> str:
        return build_challenge(self.scheme, self.params, token68=self.token68)


def _quote(value: str) -> str:
    if not _QUOTED_SAFE_RE.fullmatch(value):
        raise ValueError("challenge parameter values must be visible characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_challenge(
    scheme: str,
    params: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    *,
    token68: str | None = None,
) -> str:
    """Build one challenge, quoting every parameter value (RFC 9110 §11.6.1).

    Raises:
        ValueError: a malformed scheme or parameter name, a parameter given twice,
            or an ``error``/``error_description`` outside RFC 6750's character set.
    """
    if not _TOKEN_RE.fullmatch(scheme):
        raise ValueError("invalid auth-scheme")
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    if token68 is not None:
        if items or not _TOKEN68_RE.fullmatch(token68):
            raise ValueError("invalid token68 challenge")
        return f"{scheme} {token68}"
    seen: set[str] = set()
    parts = []
    for name, value in items:
        lname = name.lower()
        if not _TOKEN_RE.fullmatch(name) or lname in seen:
            raise ValueError(f"invalid or repeated challenge parameter {name!r}")
        if lname in {"error", "error_description", "scope"} and not _RFC6750_VALUE_RE.fullmatch(
            value
        ):
            raise ValueError(f"{name} has characters RFC 6750 §3 does not allow")
        seen.add(lname)
        parts.append(f"{name}={_quote(value)}")
    return f"{scheme} {', '.join(parts)}" if parts else scheme


class _Scanner:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ws(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        self.pos = pos

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def match(self, pattern: re.Pattern[str]) -> str | None:
        found = pattern.match(self.text, self.pos)
        if found is None:
            return None
        self.pos = found.end()
        return found.group(0)

    def quoted(self) -> str:
        # self.peek() == '"'
        self.pos += 1
        out: list[str] = []
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\\":
                if self.pos + 1 >= len(text):
                    break
                out.append(text[self.pos + 1])
                self.pos += 2
            elif char == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(char)
                self.pos += 1
        raise ChallengeSyntaxError("unterminated quoted-string")


def _is_param_start(scanner: _Scanner) -> bool:
    """Whether the scanner stands on ``token BWS "="`` (a parameter, not a new scheme)."""
    found = _TOKEN_RE.match(scanner.text, scanner.pos)
    if found is None:
        return False
    rest = scanner.text[found.end() :].lstrip(" \t")
    if not rest.startswith("="):
        return False
    # ``abc==`` is a token68; a parameter has a value (token or quoted-string) after '='.
    value = rest[1:].lstrip(" \t")
    return value[:1] == '"' or _TOKEN_RE.match(value) is not None


def parse_challenges(value: str | Iterable[str]) -> list[Challenge]:
    """Parse one or several ``WWW-Authenticate`` field values into challenges.

    Args:
        value: a field value, or every value when the field occurred several times.

    Returns:
        The challenges in order. Parameter names are lower-cased.

    Raises:
        ChallengeSyntaxError: the value is not a list of challenges.
    """
    values = [value] if isinstance(value, str) else list(value)
    challenges: list[Challenge] = []
    for text in values:
        challenges.extend(_parse_one_field(text))
    return challenges


def _parse_one_field(text: str) -> list[Challenge]:
    scanner = _Scanner(text)
    out: list[Challenge] = []
    while True:
        # Empty list elements are allowed (RFC 9110 §5.6.1).
        scanner.skip_ws()
        while scanner.peek() == ",":
            scanner.pos += 1
            scanner.skip_ws()
        if scanner.at_end():
            return out
        scheme = scanner.match(_TOKEN_RE)
        if scheme is None:
            raise ChallengeSyntaxError("expected an auth-scheme")
        params: dict[str, str] = {}
        token68: str | None = None
        had_space = scanner.peek() in (" ", "\t")
        scanner.skip_ws()
        if had_space and not scanner.at_end() and scanner.peek() != ",":
            if _is_param_start(scanner):
                _parse_params(scanner, params)
            else:
                token68 = scanner.match(_TOKEN68_RE)
                if token68 is None:
                    raise ChallengeSyntaxError("expected token68 or auth-params")
                scanner.skip_ws()
        elif not scanner.at_end() and scanner.peek() != ",":
            raise ChallengeSyntaxError("junk after auth-scheme")
        out.append(Challenge(scheme, params, token68))
        scanner.skip_ws()
        if scanner.at_end():
            return out
        if scanner.peek() != ",":
            raise ChallengeSyntaxError("expected ',' between challenges")


def _parse_params(scanner: _Scanner, params: dict[str, str]) -> None:
    # Entered only where _is_param_start() holds, so each auth-param starts with
    # ``token BWS "=" BWS`` and a value that is a quoted-string or a token.
    while True:
        name = cast(str, scanner.match(_TOKEN_RE))
        scanner.skip_ws()
        scanner.pos += 1  # the "="
        scanner.skip_ws()
        value = scanner.quoted() if scanner.peek() == '"' else cast(str, scanner.match(_TOKEN_RE))
        lname = name.lower()
        if lname in params:
            raise ChallengeSyntaxError("parameter given twice")
        params[lname] = value
        scanner.skip_ws()
        if scanner.peek() != ",":
            return
        # A comma either separates parameters or starts the next challenge.
        save = scanner.pos
        scanner.pos += 1
        scanner.skip_ws()
        while scanner.peek() == ",":
            scanner.pos += 1
            scanner.skip_ws()
        if scanner.at_end() or not _is_param_start(scanner):
            scanner.pos = save
            return
