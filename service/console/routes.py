"""The console's routes, its sign-in and sign-out, and ``setup``, which ``create_app`` calls to serve it all.

Every route is under ``/console``; ``sessions.console_middleware`` lets none but the sign-in page and the static
files through without a session, and no POST without its CSRF token. Acts check the operator's role the way the
API checks a key's (``sessions.require``, with the scope the API route for the same act has).
"""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from service.api.http import Handler
from service.app_state import API_KEYS, SETTINGS
from service.console import agents, chats, devphone, live, overview, users
from service.console.pages import render
from service.console.pages import setup as setup_pages
from service.console.sessions import (
    PREFIX,
    console_middleware,
    login_token,
    login_token_ok,
    session_of,
    set_login_token,
    start,
)
from service.console.sessions import end as end_session
from service.settings import Role

STATIC = Path(__file__).parent / "static"


async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(PREFIX + "/chats")


def _next(request: web.Request, value: str) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith(PREFIX + "/") or "//" in parts.path:
        return PREFIX + "/chats"
    return parts.path


async def login_page(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    token = login_token(request)
    response = render(request, "login.html", status=status, error=error, csrf=token,
                      next_path=_next(request, request.query.get("next", "")))
    set_login_token(request, response, token)
    return response


async def login(request: web.Request) -> web.Response:
    """``POST /console/login``: an API key (or a named operator's password) in, a session out; a wrong key, the
    webhook key or a wrong password is refused."""
    form = await request.post()
    if not login_token_ok(request, str(form.get("csrf", ""))):
        return await login_page(request, error="This sign-in form expired; try again.", status=403)
    name, secret = str(form.get("name", "")).strip(), str(form.get("api_key", ""))
    if name:   # a named operator (PARLEY_CONSOLE_USERS): scrypt, off the event loop
        role = await asyncio.to_thread(users.check, request.app[SETTINGS].console_users, name, secret)
        if role is None:
            return await login_page(request, error="That name and password do not match.", status=401)
        who = f"{name} ({role})"
    else:
        secret = secret.strip()
        role = _key_role(request, secret.encode())
        if role is None or role == "webhook":
            message = ("That is the webhook-signing key: it signs what Parley sends and opens nothing; use a key "
                       "with the role read, write or admin." if role == "webhook"
                       else "No API key of this Parley matches.")
            return await login_page(request, error=message, status=401)
        who = f"{role} key …{secret[-4:]}"
    response = web.HTTPSeeOther(_next(request, str(form.get("next", ""))))
    await start(request, response, role, who)
    raise response


def _key_role(request: web.Request, given: bytes) -> Role | None:
    """The role of the API key ``given``, compared with every key in constant time (as ``api.auth`` does)."""
    role = None
    for key, key_role in request.app[API_KEYS].items():
        if hmac.compare_digest(given, key.encode()):
            role = key_role
    return role


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther(PREFIX + "/login")
    await end_session(request, response, session_of(request))
    raise response


async def _serve_login(request: web.Request) -> web.Response:
    return await login_page(request)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "", home),
    ("GET", "/", home),
    ("GET", "/login", _serve_login),
    ("POST", "/login", login),
    ("POST", "/logout", logout),
    ("GET", "/live", live.events),
    *chats.ROUTES,
    *devphone.ROUTES,
    *overview.ROUTES,
    *agents.ROUTES,
]


def setup(app: web.Application) -> None:
    """Serve the console on ``app``: its middleware, templates, static files, routes and live feed."""
    app.middlewares.append(console_middleware)
    setup_pages(app)
    for method, path, handler in ROUTES:
        app.router.add_route(method, PREFIX + path, handler)
    app.router.add_static(PREFIX + "/static/", STATIC, append_version=False)
    app.cleanup_ctx.append(live.hub_ctx)
