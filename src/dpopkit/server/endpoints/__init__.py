"""The authorization server's endpoints, one module each, framework-free.

Each module answers one endpoint from a :class:`~dpopkit.RequestView` with a
:class:`~dpopkit.ResponseView`, working on the service core
(:class:`~dpopkit.server.core.ServiceCore`):

- :mod:`.token`: ``/token`` (RFC 6749 §3.2, RFC 9449 §5), dispatching to the grants;
- :mod:`.par`: ``/par``, pushed authorization requests (RFC 9126, RFC 9449 §10.1);
- :mod:`.authorize`: ``/authorize``, the login and consent pages (RFC 6749 §4.1);
- :mod:`.introspect`: ``/introspect`` (RFC 7662, RFC 9449 §6.2);
- :mod:`.revoke`: ``/revoke`` (RFC 7009);
- :mod:`.register`: ``/register``, dynamic client registration (RFC 7591);
- :mod:`.jwks`: ``/jwks``, the signing keys (RFC 7517 §5);
- :mod:`.metadata`: ``/.well-known/oauth-authorization-server`` (RFC 8414).

:mod:`dpopkit.server.app` routes HTTP to them; :class:`~dpopkit.server.TokenService`
exposes the token-side ones as methods.
"""
