"""Signing in to the console, its session cookie, CSRF tokens and the headers every console page carries.

An operator signs in with an API key (``PARLEY_API_KEYS``/``PARLEY_API_KEY``): the session gets the key's role
(a ``read`` key sees but cannot act; the ``webhook`` key cannot sign in). The session lives in Redis
(``keys.console_session``, TTL ``PARLEY_CONSOLE_SESSION_TTL_S``), so every process knows it and signing out ends
it everywhere. The cookie holds the session id and its HMAC under the webhook key (``SIGNING_KEY``, the same in
every process): HttpOnly, SameSite=Strict, Path=/console, Secure over HTTPS. Every POST carries the session's
CSRF token (a form's ``csrf`` field, or htmx's ``X-CSRF-Token`` header); the sign-in form carries one from a
short-lived cookie of its own (double submit). ``console_middleware`` runs all of this before any console
handler, and answers everything under ``/console`` (but its static files) with a strict Content-Security-Policy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import cast

import orjson
from aiohttp import web

from service.api.auth import REACHES
from service.api.http import Handler
from service.app_state import REDIS, SETTINGS, SIGNING_KEY
from service.settings import Role, Scope
from service.storage import keys

PREFIX = "/console"
COOKIE = "parley_console"
LOGIN_COOKIE = "parley_console_login"
OPEN = (PREFIX + "/login", PREFIX + "/static/")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    role: Role
    csrf: str
    who: str   # how the operator signed in, for the page header ("key …c0de")

    def may(self, scope: Scope) -> bool:
        return scope in REACHES[self.role]


SESSION = web.RequestKey("console_session", Session)


def _sign(request: web.Request, session_id: str) -> str:
    key = hashlib.sha256(b"parley-console-session:" + request.app[SIGNING_KEY].encode()).digest()
    return hmac.new(key, session_id.encode(), hashlib.sha256).hexdigest()


def _secure(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"


async def start(request: web.Request, response: web.StreamResponse, role: Role, who: str) -> None:
    """Store a new session for ``role`` and set its cookie on ``response``."""
    session_id = secrets.token_urlsafe(32)
    ttl = request.app[SETTINGS].console_session_ttl_s
    data = {"role": role, "csrf": secrets.token_urlsafe(32), "who": who}
    await request.app[REDIS].set(keys.console_session(session_id), orjson.dumps(data).decode(), ex=ttl)
    response.set_cookie(COOKIE, f"{session_id}.{_sign(request, session_id)}", max_age=ttl, path=PREFIX,
                        httponly=True, samesite="Strict", secure=_secure(request))
    response.del_cookie(LOGIN_COOKIE, path=PREFIX)


async def load(request: web.Request) -> Session | None:
    """The request's session: its cookie signed by this Parley and still in Redis; else None."""
    session_id, _, signature = request.cookies.get(COOKIE, "").partition(".")
    if not session_id or not hmac.compare_digest(signature.encode(), _sign(request, session_id).encode()):
        return None
    raw = await request.app[REDIS].get(keys.console_session(session_id))
    if raw is None:
        return None
    data: dict[str, str] = orjson.loads(raw)
    return Session(session_id, cast(Role, data["role"]), data["csrf"], data["who"])


async def end(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    await request.app[REDIS].delete(keys.console_session(session.session_id))
    response.del_cookie(COOKIE, path=PREFIX)


def login_token(request: web.Request) -> str:
    """The sign-in form's CSRF token: the one in its short-lived cookie, or a new one (``set_login_token``)."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)


def set_login_token(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path=PREFIX, httponly=True, samesite="Strict",
                        secure=_secure(request))


def login_token_ok(request: web.Request, given: str) -> bool:
    expected = request.cookies.get(LOGIN_COOKIE, "")
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def session_of(request: web.Request) -> Session:
    """The signed-in operator's session (the middleware let the request in only with one)."""
    return request[SESSION]


def refuse(request: web.Request, status: int, message: str) -> web.Response:
    """A plain refusal page (htmx shows it in place of the part it asked for)."""
    return web.Response(status=status, text=message, content_type="text/plain", headers=HEADERS)


async def _csrf_ok(request: web.Request, session: Session) -> bool:
    given = request.headers.get("X-CSRF-Token")
    if given is None:
        form = await request.post()
        value = form.get("csrf")
        given = value if isinstance(value, str) else ""
    return hmac.compare_digest(given.encode(), session.csrf.encode())


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Nothing under /console but the sign-in and the static files without a session; no POST without its CSRF
    token; the security headers on every answer."""
    if not request.path.startswith(PREFIX):
        return await handler(request)
    if not request.path.startswith(OPEN):
        session = await load(request)
        if session is None:
            if request.method == "GET" and "HX-Request" not in request.headers:
                raise web.HTTPSeeOther(f"{PREFIX}/login?next={request.rel_url.path}", headers=HEADERS)
            return refuse(request, 401, "not signed in (or the session expired): sign in again at /console/login")
        if request.method == "POST" and not await _csrf_ok(request, session):
            return refuse(request, 403, "refused: this form's CSRF token is missing or wrong; reload the page")
        request[SESSION] = session
    response = await handler(request)
    for name, value in HEADERS.items():
        if name == "Cache-Control" and request.path.startswith(PREFIX + "/static/"):
            continue
        response.headers.setdefault(name, value)
    return response


def require(request: web.Request, scope: Scope) -> None:
    """Refuse (403) an operator whose key's role does not reach ``scope`` (the API's rule for the same act)."""
    session = session_of(request)
    if not session.may(scope):
        raise web.HTTPForbidden(text=f"refused: you signed in with a {session.role!r} key; this needs a key whose "
                                     f"role reaches {scope!r}", headers=HEADERS)
