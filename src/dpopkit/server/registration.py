"""Dynamic client registration (RFC 7591), under its earlier import path.

The endpoint is :mod:`dpopkit.server.endpoints.register`; client metadata and the
registration policy are :mod:`dpopkit.server.client_metadata`. The names below are
re-exported from there.
"""

from __future__ import annotations

from dpopkit.server.client_metadata import (
    InvalidClientMetadataError,
    InvalidRedirectURIError,
    apply_registration_policy,
    client_from_metadata,
)
from dpopkit.server.endpoints.register import handle_register, registration_rate_limiter
from dpopkit.server.parsing import MAX_BODY_BYTES

__all__ = [
    "InvalidClientMetadataError",
    "InvalidRedirectURIError",
    "apply_registration_policy",
    "client_from_metadata",
    "handle_register",
    "registration_rate_limiter",
]

MAX_BODY = MAX_BODY_BYTES
