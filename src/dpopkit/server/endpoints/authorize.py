"""The browser part of the authorization code flow, framework-free.

``GET /authorize`` (RFC 6749 §4.1.1; or a PAR ``request_uri``, RFC 9126 §4)
validates the request, then renders a server-side HTML login page; the login
form posts back, then a consent page; approval redirects to the registered
``redirect_uri`` with ``code``, ``state`` and ``iss`` (RFC 9207). No JavaScript.

Safety: the ``redirect_uri`` must exactly match a registered one (the one
exception: any port on a registered ``http`` loopback IP literal, RFC 8252 §7.3,
see :func:`~dpopkit.server.redirects.redirect_uri_allowed`), and no error is ever
redirected before the client and its ``redirect_uri`` are known (no open
redirects, RFC 6749 §4.1.2.1).
Forms carry a CSRF token bound to a browser cookie (``SameSite=Lax``,
``HttpOnly``); every value put into HTML is escaped.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import replace
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlencode, urlsplit

from dpopkit.core.http import RequestView, ResponseView
from dpopkit.errors import DPoPError, InvalidScopeError, Reason
from dpopkit.server.authorization_request import validate_authorization_request
from dpopkit.server.core import ServiceCore
from dpopkit.server.form import Form
from dpopkit.server.parsing import equal_text, parse_query
from dpopkit.server.redirects import redirect_uri_allowed
from dpopkit.server.settings import PAR_URN_PREFIX
from dpopkit.server.throttle import LoginThrottle, ServerBusyError
from dpopkit.server.users import Authenticator
from dpopkit.storage.counters import CounterStore
from dpopkit.storage.sql import (
    ClientRecord,
    CodeRecord,
    InteractionRecord,
    StoreError,
    sha256_hex,
)

__all__ = ["AuthorizationEndpoint"]

_COOKIE = "dpopkit_ia"
_log = logging.getLogger("dpopkit.server.login")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>*{{box-sizing:border-box}}
body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}
label,input,button{{display:block;width:100%;margin:.4rem 0}}input,button{{padding:.5rem}}
.error{{color:#a00}}.row{{display:flex;gap:.5rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def _page(status: int, title: str, body: str, *headers: tuple[str, str]) -> ResponseView:
    text = _PAGE.format(title=html.escape(title), body=body)
    return ResponseView(
        status=status,
        headers=(
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("X-Frame-Options", "DENY"),
            # No form-action: browsers apply it to the redirect to the client after consent.
            (
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            ("Referrer-Policy", "no-referrer"),
            *headers,
        ),
        body=text.encode("utf-8"),
    )


def _redirect(url: str, *headers: tuple[str, str]) -> ResponseView:
    return ResponseView(
        status=303, headers=(("Location", url), ("Cache-Control", "no-store"), *headers)
    )


def _first(form: Form, name: str) -> str:
    try:
        return form.one(name) or ""
    except DPoPError:
        return ""


class AuthorizationEndpoint:
    """``/authorize``: request validation, login and consent pages, code issuance.

    Args:
        service: the service core (settings, store, clock): a
            :class:`~dpopkit.server.TokenService`.
        authenticator: checks user credentials (:class:`~dpopkit.server.users.ConfigUsers`
            built in).
        csrf_secret: 32+ random bytes keying the CSRF tokens.
        throttle: failed sign-ins per username and client address (growing delays,
            then a temporary lockout; HD-3); a
            :class:`~dpopkit.server.throttle.LoginThrottle` on the service's clock by default.
        counters: where that default throttle keeps its counts (default: in memory, per
            process; a shared store such as Redis gives every instance one budget). When
            the store cannot answer, a sign-in is refused with 503 and ``Retry-After``,
            the password unchecked.
    """

    def __init__(
        self,
        service: ServiceCore,
        authenticator: Authenticator,
        *,
        csrf_secret: bytes | None = None,
        throttle: LoginThrottle | None = None,
        counters: CounterStore | None = None,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        settings = service.settings
        self.throttle = (
            throttle
            if throttle is not None
            else LoginThrottle(
                free_failures=settings.login_free_failures,
                lockout_failures=settings.login_lockout_failures,
                lockout_seconds=float(settings.login_lockout_seconds),
                clock=service.clock,
                state=counters,
            )
        )
        self._csrf_secret = csrf_secret or secrets.token_bytes(32)
        self._secure_cookie = service.settings.issuer.startswith("https:")
        self._action = urlsplit(service.settings.issuer).path + "/authorize"

    # -- entry points ---------------------------------------------------------------------

    def handle(self, request: RequestView) -> ResponseView:
        """Answer ``GET /authorize`` (start) or ``POST /authorize`` (login / consent forms)."""
        try:
            if request.method == "GET":
                return self._start(request)
            if request.method == "POST":
                return self._submit(request)
            return self._error_page(405, "Method not allowed")
        except StoreError:
            return self._error_page(
                503, "The service is temporarily unavailable", Reason.STORE_UNAVAILABLE
            )

    # -- helpers --------------------------------------------------------------------------

    def _error_page(
        self, status: int, message: str, reason: Reason = Reason.INVALID_REQUEST
    ) -> ResponseView:
        page = _page(status, "Authorization failed", f'<p class="error">{html.escape(message)}</p>')
        return replace(page, reason=reason.value)

    def _respond(self, params: Mapping[str, Any], **values: str) -> ResponseView:
        """Redirect to the (validated) redirect_uri with ``values``, ``state`` and ``iss``."""
        redirect_uri = str(params["redirect_uri"])
        query = dict(values)
        if params.get("state") is not None:
            query["state"] = str(params["state"])
        query["iss"] = self.service.settings.issuer  # RFC 9207 §2
        sep = "&" if urlsplit(redirect_uri).query else "?"
        answer = _redirect(redirect_uri + sep + urlencode(query))
        # An error sent back to the client (RFC 6749 §4.1.2.1) is a refusal: logged.
        return replace(answer, reason=values["error"]) if "error" in values else answer

    def _csrf(self, interaction: str, browser: str) -> str:
        mac = hmac.new(self._csrf_secret, f"{interaction}|{browser}".encode(), hashlib.sha256)
        return mac.hexdigest()

    @staticmethod
    def _cookie(request: RequestView) -> str | None:
        jar: SimpleCookie = SimpleCookie()
        for value in request.headers.get_all("cookie"):
            try:
                jar.load(value)
            except CookieError:
                return None
        morsel = jar.get(_COOKIE)
        return None if morsel is None else morsel.value

    def _start(self, request: RequestView) -> ResponseView:
        svc, now = self.service, self.service.clock()
        try:
            # Bounded and checked before anything is looked up (dpopkit.server.parsing).
            pairs = parse_query(request)
        except DPoPError:
            return self._error_page(400, "Malformed request", Reason.MALFORMED)
        form = Form(pairs)
        try:
            client_id = form.need("client_id")
            client = svc.store.get_client(client_id)
        except DPoPError:
            return self._error_page(
                400, "The request is missing a valid client_id", Reason.INVALID_CLIENT
            )
        if client is None:
            return self._error_page(400, "Unknown client", Reason.INVALID_CLIENT)
        try:
            request_uri = form.one("request_uri")
            # RFC 6749 §3.1: no repeated parameters, by the same rule as at /par.
            query_params = form.as_dict()
        except DPoPError:
            return self._error_page(400, "Malformed request", Reason.MALFORMED)
        if request_uri is not None:
            # RFC 9126 §4: a one-time request_uri bound to this client; only its owner
            # spends it (another client's attempt leaves it usable).
            if not request_uri.startswith(PAR_URN_PREFIX):
                return self._error_page(400, "Unsupported request_uri")
            record = svc.store.consume_request(
                sha256_hex(request_uri), kind="par", now=now, client_id=client.client_id
            )
            if record is None:
                return self._error_page(400, "The request_uri is invalid, used or expired")
            params: dict[str, Any] = dict(record.params)
        else:
            if (
                client.require_pushed_authorization_requests
                or svc.settings.require_pushed_authorization_requests
            ):
                return self._error_page(400, "This client must use pushed authorization requests")
            params = query_params
        redirect_uri = params.get("redirect_uri")
        # RFC 6749 §3.1.2.3, RFC 8252 §7.3: checked before anything is redirected there.
        if not isinstance(redirect_uri, str) or not redirect_uri_allowed(
            client.redirect_uris, redirect_uri, loopback_any_port=client.is_public
        ):
            return self._error_page(400, "The redirect_uri is not registered for this client")
        try:
            if request_uri is None:
                validate_authorization_request(svc, client, params)
        except DPoPError as exc:
            return self._respond(params, error=exc.error, error_description=exc.description)
        if params.get("scope") is None and client.scope:
            params["scope"] = client.scope
        test_user = svc.settings.test_mode_user
        if test_user is not None:
            # Test mode (loopback only): log in the configured user, grant consent.
            return self._issue_code(client, params, test_user, now)
        interaction = secrets.token_urlsafe(32)
        browser = secrets.token_urlsafe(32)
        svc.store.put_request(
            InteractionRecord(
                id_hash=sha256_hex(interaction),
                kind="interaction",
                client_id=client.client_id,
                params=params,
                expires_at=now + svc.settings.interaction_lifetime,
                browser_hash=sha256_hex(browser),
            )
        )
        cookie = f"{_COOKIE}={browser}; Path={self._action}; HttpOnly; SameSite=Lax" + (
            "; Secure" if self._secure_cookie else ""
        )
        return self._login_page(client, params, interaction, browser, None, ("Set-Cookie", cookie))

    def _login_page(
        self,
        client: ClientRecord,
        params: Mapping[str, Any],
        interaction: str,
        browser: str,
        error: str | None,
        *headers: tuple[str, str],
        username: str = "",
        status: int | None = None,
    ) -> ResponseView:
        esc = html.escape
        name = client.client_name or client.client_id
        err = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
        # The username survives a failed attempt (escaped); the password never does.
        kept = f' value="{esc(username)}"' if username else ""
        body = (
            f"<p><strong>{esc(name)}</strong> asks to sign you in.</p>{err}"
            f'<form method="post" action="{esc(self._action)}">'
            f'<input type="hidden" name="interaction" value="{esc(interaction)}">'
            f'<input type="hidden" name="csrf" value="{esc(self._csrf(interaction, browser))}">'
            '<input type="hidden" name="step" value="login">'
            '<label for="username">Username</label>'
            f'<input id="username" name="username" autocomplete="username" required{kept}>'
            '<label for="password">Password</label>'
            '<input id="password" name="password" type="password" '
            'autocomplete="current-password" required>'
            '<div class="row"><button type="submit" name="action" value="login">Sign in</button>'
            '<button type="submit" name="action" value="deny" formnovalidate>Cancel</button>'
            "</div></form>"
        )
        # A wrong password re-renders the form with 200 (as node-oidc-provider's interaction
        # example does): a 401 would need a WWW-Authenticate challenge (RFC 9110 §15.5.2)
        # and browsers log it as a console error.
        return _page(200 if status is None else status, "Sign in", body, *headers)

    def _consent_page(
        self,
        client: ClientRecord,
        params: Mapping[str, Any],
        interaction: str,
        browser: str,
        sub: str,
    ) -> ResponseView:
        esc = html.escape
        name = client.client_name or client.client_id
        scopes = str(params.get("scope") or "").split()
        items = "".join(f"<li>{esc(s)}</li>" for s in scopes) or "<li>basic access</li>"
        body = (
            f"<p>Signed in as <strong>{esc(sub)}</strong>.</p>"
            f"<p><strong>{esc(name)}</strong> would like:</p><ul>{items}</ul>"
            f'<form method="post" action="{esc(self._action)}">'
            f'<input type="hidden" name="interaction" value="{esc(interaction)}">'
            f'<input type="hidden" name="csrf" value="{esc(self._csrf(interaction, browser))}">'
            '<input type="hidden" name="step" value="consent">'
            '<div class="row"><button type="submit" name="action" value="approve">Allow</button>'
            '<button type="submit" name="action" value="deny">Deny</button></div></form>'
        )
        return _page(200, "Allow access?", body)

    def _submit(self, request: RequestView) -> ResponseView:
        svc, now = self.service, self.service.clock()
        try:
            form = Form.parse(request)
            interaction = form.need("interaction")
            csrf = form.need("csrf")
            step = form.need("step")
            action = form.one("action") or "login"
        except DPoPError:
            return self._error_page(400, "Malformed form", Reason.MALFORMED)
        record = svc.store.get_request(sha256_hex(interaction), kind="interaction", now=now)
        if record is None:
            return self._error_page(400, "This sign-in page has expired; start again")
        browser = self._cookie(request)
        # CSRF: the form token must be bound to this browser's cookie for this interaction.
        if (
            browser is None
            or record.browser_hash is None
            or not hmac.compare_digest(sha256_hex(browser), record.browser_hash)
            or not equal_text(csrf, self._csrf(interaction, browser))
        ):
            return self._error_page(403, "The form could not be verified; start again")
        client = svc.store.get_client(record.client_id)
        if client is None:
            return self._error_page(400, "Unknown client", Reason.INVALID_CLIENT)
        params = record.params
        if action == "deny":
            if svc.store.consume_request(record.id_hash, kind="interaction", now=now) is None:
                return self._error_page(400, "This sign-in page has expired; start again")
            return self._respond(params, error="access_denied")
        if step == "login":
            try:
                username = form.need("username")
                password = form.need("password")
            except DPoPError:
                return self._login_page(
                    client,
                    params,
                    interaction,
                    browser,
                    "Enter your username and password",
                    username=_first(form, "username"),
                )
            return self._login(request, client, record, interaction, browser, username, password)
        if step == "consent" and action == "approve" and record.sub is not None:
            if svc.store.consume_request(record.id_hash, kind="interaction", now=now) is None:
                return self._error_page(400, "This sign-in page has expired; start again")
            return self._issue_code(client, params, record.sub, now)
        return self._error_page(400, "Unexpected form submission")

    def _login(
        self,
        request: RequestView,
        client: ClientRecord,
        record: InteractionRecord,
        interaction: str,
        browser: str,
        username: str,
        password: str,
    ) -> ResponseView:
        """Check a password under the login throttle; the consent page on success."""
        params = record.params
        address = request.client_address
        try:
            checked = self._throttled_login(
                request, client, record, interaction, browser, username, password
            )
        except StoreError:
            # HD-3: the throttle's shared store cannot answer: refuse, password unchecked
            # (or its failure uncounted), never a sign-in without the throttle.
            _log.warning(
                "login refused: reason=store_unavailable username=%r address=%s",
                username[:64],
                address,
            )
            page = self._login_page(
                client,
                params,
                interaction,
                browser,
                "The service is temporarily unavailable; try again in a moment",
                ("Retry-After", "1"),
                username=username,
                status=503,
            )
            return replace(page, reason=Reason.STORE_UNAVAILABLE.value)
        if isinstance(checked, ResponseView):
            return checked
        self.service.store.set_request_subject(record.id_hash, checked)
        return self._consent_page(client, params, interaction, browser, checked)

    def _throttled_login(
        self,
        request: RequestView,
        client: ClientRecord,
        record: InteractionRecord,
        interaction: str,
        browser: str,
        username: str,
        password: str,
    ) -> ResponseView | str:
        """A refusal page, or the subject of a sign-in the throttle allowed and recorded."""
        params = record.params
        address = request.client_address
        wait = self.throttle.retry_after(username=username, address=address)
        if wait > 0:
            # Growing delay or lockout: the password is not even checked (Keycloak model).
            _log.warning(
                "login refused: reason=throttled username=%r address=%s retry_after=%d",
                username[:64],
                address,
                math.ceil(wait),
            )
            page = self._login_page(
                client,
                params,
                interaction,
                browser,
                f"Too many failed sign-ins; try again in {math.ceil(wait)} seconds",
                ("Retry-After", str(math.ceil(wait))),
                username=username,
                status=429,
            )
            return replace(page, reason=Reason.RATE_LIMITED.value)
        try:
            sub = self.authenticator.authenticate(username, password)
        except ServerBusyError:
            _log.warning(
                "login refused: reason=server_busy username=%r address=%s", username[:64], address
            )
            return self._login_page(
                client,
                params,
                interaction,
                browser,
                "The service is busy; try again in a moment",
                ("Retry-After", "1"),
                username=username,
                status=503,
            )
        if sub is None:
            self.throttle.failure(username=username, address=address)
            _log.warning(
                "login failed: reason=bad_credentials username=%r address=%s",
                username[:64],
                address,
            )
            return self._login_page(
                client,
                params,
                interaction,
                browser,
                "Wrong username or password",
                username=username,
            )
        self.throttle.success(username=username)
        return sub

    def _issue_code(
        self, client: ClientRecord, params: Mapping[str, Any], sub: str, now: float
    ) -> ResponseView:
        svc = self.service
        code = secrets.token_urlsafe(32)
        resource = params.get("resource", [])
        try:
            scope = svc.resolve_scope(
                None if params.get("scope") is None else str(params["scope"]), allowed=client.scope
            )
        except InvalidScopeError as exc:
            return self._respond(params, error=exc.error)
        svc.store.put_code(
            CodeRecord(
                code_hash=sha256_hex(code),
                client_id=client.client_id,
                sub=sub,
                redirect_uri=str(params["redirect_uri"]),
                scope=scope,
                code_challenge=str(params["code_challenge"]),
                dpop_jkt=None if params.get("dpop_jkt") is None else str(params["dpop_jkt"]),
                resource=tuple(resource if isinstance(resource, list) else [str(resource)]),
                expires_at=now + svc.settings.code_lifetime,
            )
        )
        return self._respond(params, code=code)
