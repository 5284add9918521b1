"""Named operators' passwords: scrypt from the standard library, ``scrypt$N$r$p$salt$hash`` (base64), in
``PARLEY_CONSOLE_USERS`` (``settings.ConsoleUser``). ``parley console-user NAME`` prints an entry; the sign-in
checks one, in constant time, and spends the same work on a name that does not exist."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from service.settings import ConsoleUser, Role

N, R, P = 2**14, 8, 1   # about 16 MB and tens of milliseconds a check: slow to guess, fine for a sign-in
_DUMMY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + base64.b64encode(bytes(32)).decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    expected = base64.b64decode(digest)
    given = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                           maxmem=128 * 1024 * 1024, dklen=len(expected))
    return hmac.compare_digest(given, expected)


def check(users: dict[str, ConsoleUser], name: str, password: str) -> Role | None:
    """The role of ``name`` when ``password`` is theirs; None otherwise (after the same work either way)."""
    user = users.get(name)
    ok = verify_password(password, user.password.get_secret_value() if user else _DUMMY)
    return user.role if user is not None and ok else None
