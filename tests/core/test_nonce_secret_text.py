"""The one text form of a nonce secret (base64url of >= 32 bytes) and several secrets."""

from __future__ import annotations

import secrets

import pytest

from dpopkit import NonceIssuer
from dpopkit.core.jws import b64url_encode
from dpopkit.core.nonce import MIN_SECRET_BYTES, parse_nonce_secret, parse_nonce_secrets

RAW = bytes(range(40))
TEXT = b64url_encode(RAW)
NOW = 1_700_000_000.0

#: Values every reader of a nonce secret refuses, with why (shared with the CLI tests).
BAD_SECRET_TEXTS: dict[str, str] = {
    "empty": "",
    "blank": "   ",
    "padded": b64url_encode(bytes(32)) + "=",
    "standard-base64": "+/" + b64url_encode(bytes(33))[2:],
    "hex": "ab" * 32,
    "short": b64url_encode(bytes(31)),
    "non-canonical": b64url_encode(bytes(32))[:-1] + "B",
    "not-base64url": "secret secret secret secret secret secret secret",
    "non-ascii": "é" * 44,
    "impossible-length": "A" * 45,
}


def test_hd23_text_form_round_trips() -> None:
    """HD-23: unpadded base64url (RFC 4648 §5) decodes to the secret's bytes; surrounding
    whitespace (a file's final newline) is ignored; token_urlsafe(32) is the format."""
    assert parse_nonce_secret(TEXT) == RAW
    assert parse_nonce_secret(f" {TEXT}\n") == RAW
    generated = secrets.token_urlsafe(32)
    assert len(parse_nonce_secret(generated)) == MIN_SECRET_BYTES


@pytest.mark.parametrize("value", BAD_SECRET_TEXTS.values(), ids=BAD_SECRET_TEXTS.keys())
def test_hd23_bad_text_refused_with_one_line(value: str) -> None:
    """HD-23: anything but base64url of >= 32 bytes is a ValueError whose one-line
    message never echoes the value (hex, the format of older versions, included)."""
    with pytest.raises(ValueError) as info:
        parse_nonce_secret(value)
    message = str(info.value)
    assert "\n" not in message
    if value.strip():
        assert value.strip() not in message


def test_hd23_not_a_string_refused() -> None:
    """HD-23: bytes are not the text form."""
    with pytest.raises(ValueError):
        parse_nonce_secret(RAW)  # type: ignore[arg-type]


def test_hd23_issuer_reads_text_like_bytes() -> None:
    """HD-23: the Python API takes the same text (a ``str`` secret) as every command; it
    is the same key as the decoded bytes, and a bad text is refused at construction."""
    from_text = NonceIssuer([TEXT], context="rs")
    from_bytes = NonceIssuer([RAW], context="rs")
    assert from_text.issue(now=NOW) == from_bytes.issue(now=NOW)
    assert from_bytes.verify(from_text.issue(now=NOW), now=NOW).current
    with pytest.raises(ValueError):
        NonceIssuer(["ab" * 32])
    with pytest.raises(ValueError):
        NonceIssuer(TEXT)  # a str is not a list of secrets


def test_hd21_several_secrets_newest_first() -> None:
    """HD-21: a comma-separated list, newest first; an error names the item's position."""
    new, old = b64url_encode(b"n" * 32), b64url_encode(b"o" * 32)
    assert parse_nonce_secrets(f"{new}, {old}") == [b"n" * 32, b"o" * 32]
    assert parse_nonce_secrets(new) == [b"n" * 32]
    with pytest.raises(ValueError, match="item 2 of 2"):
        parse_nonce_secrets(f"{new},")
    with pytest.raises(ValueError) as info:
        parse_nonce_secrets("short")
    assert "item" not in str(info.value)
