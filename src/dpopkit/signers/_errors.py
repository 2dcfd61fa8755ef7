"""The one error of the device signers (kept apart so that they can import it)."""

from __future__ import annotations

from typing import Literal

__all__ = ["SignerError", "SignerErrorReason"]

SignerErrorReason = Literal[
    "bad_reference",
    "module_not_found",
    "token_not_present",
    "pin_missing",
    "pin_incorrect",
    "pin_locked",
    "key_not_found",
    "key_exists",
    "unsupported_key",
    "device_error",
]


class SignerError(Exception):
    """A hardware key cannot be opened or used; the message is one line.

    Attributes:
        reason: a stable code for programs and tests (``token_not_present``,
            ``pin_incorrect``, ``key_not_found``, ...); the message is for people.
    """

    def __init__(self, reason: SignerErrorReason, message: str) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the device said
        self.reason: SignerErrorReason = reason
