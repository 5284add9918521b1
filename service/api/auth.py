"""Who may call what: the bearer key's role against the route's scope.

Each key has a role (``PARLEY_API_KEYS``, or admin for ``PARLEY_API_KEY``'s keys; ``Settings.api_key_roles``).
Each route has a scope, the least role it needs (``Route.scope`` in its module's ``ROUTES``; ``create_app``
puts them in ``ROUTE_SCOPES``). admin ⊃ write ⊃ read. The webhook key only signs what Parley sends, so that
handing it to every receiver gives none of them the API. ``api_middleware`` (``service/api/http.py``) asks
``refusal`` before every API route and answers 401 or 403 in Retell's envelope.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from service.app_state import API_KEYS, ROUTE_SCOPES
from service.settings import Role, Scope

# The scopes each role reaches.
REACHES: dict[Role, frozenset[Scope]] = {
    "admin": frozenset({"read", "write", "admin"}),
    "write": frozenset({"read", "write"}),
    "read": frozenset({"read"}),
    "webhook": frozenset(),
}
LEAST_FIRST: tuple[Role, ...] = ("read", "write", "admin")
MISSING = "missing or invalid API key: send 'Authorization: Bearer <key>' (a key of PARLEY_API_KEYS or PARLEY_API_KEY)"


def role_of(request: web.Request) -> Role | None:
    """The role of the request's bearer key; None when there is no such key."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    wanted = given.strip().encode()
    found: Role | None = None
    # Compare against every key, in constant time, without stopping at the first match.
    for key, role in request.app[API_KEYS].items():
        if hmac.compare_digest(wanted, key.encode()):
            found = role
    return found


def scope_of(request: web.Request) -> Scope | None:
    """What the matched route needs; None for a path or method Parley does not serve (it answers 404/405)."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return request.app[ROUTE_SCOPES].get((request.method, resource.canonical))


def refusal(request: web.Request) -> tuple[int, str] | None:
    """Why the request may not reach its route (the status and Retell's message), or None when it may."""
    role = role_of(request)
    if role is None:
        return 401, MISSING
    scope = scope_of(request)
    if scope is None or scope in REACHES[role]:
        return None
    if role == "webhook":
        return 403, ("this is the webhook-signing key: it signs what Parley sends and calls no API route; "
                     "use a key with the role read, write or admin")
    return 403, (f"this API key's role is {role!r}; {request.method} {request.path} needs a key with the role "
                 f"{' or '.join(roles_for(scope))}")


def roles_for(scope: Scope) -> list[Role]:
    """The roles that reach ``scope``, least first."""
    return [role for role in LEAST_FIRST if scope in REACHES[role]]
