"""What the httpx and requests ``DPoPAuth`` classes share: their settings and the flow they make.

Each adapter keeps its own explicit, typed constructor (its public signature) and
hands the settings to :meth:`_AuthSettings._configure`; the per-request work lives
in :class:`~dpopkit.client.flow.DPoPFlow`.
"""

from __future__ import annotations

from dpopkit.client.flow import Clock, DPoPFlow, NonceCache
from dpopkit.client.sources import StaticToken, TokenSource
from dpopkit.core.keys import DPoPKey


class _AuthSettings:
    key: DPoPKey
    source: TokenSource | None
    nonces: NonceCache
    clock: Clock
    max_nonce_retries: int
    learn_clock_skew: bool
    allow_insecure_http: bool
    _flow_template: DPoPFlow

    def _configure(
        self,
        key: DPoPKey,
        *,
        token: str | TokenSource | None,
        nonces: NonceCache | None,
        clock: Clock,
        max_nonce_retries: int,
        learn_clock_skew: bool,
        allow_insecure_http: bool,
    ) -> None:
        self.key = key
        self.source = StaticToken(token) if isinstance(token, str) else token
        self.nonces = nonces if nonces is not None else NonceCache()
        self.clock = clock
        self.max_nonce_retries = max_nonce_retries
        self.learn_clock_skew = learn_clock_skew
        self.allow_insecure_http = allow_insecure_http
        # The settings are checked once, here, by building this flow; every request's
        # flow is a copy of it (DPoPFlow._fresh), without the checks or the generated
        # __init__. The settings are fixed from now on: the copies keep these values.
        self._flow_template = DPoPFlow(
            key=key,
            nonces=self.nonces,
            clock=clock,
            max_nonce_retries=max_nonce_retries,
            learn_clock_skew=learn_clock_skew,
            allow_insecure_http=allow_insecure_http,
        )

    def __repr__(self) -> str:
        return f"DPoPAuth(key={self.key!r}, nonces={self.nonces!r})"

    def new_flow(self) -> DPoPFlow:
        """A :class:`~dpopkit.client.flow.DPoPFlow` for one request with these settings."""
        return self._flow_template._fresh()
