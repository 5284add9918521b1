"""Twilio webhook signatures (``X-Twilio-Signature``), checked with the auth token of the owning account.

The URL signed is the one Twilio called: ``PARLEY_PUBLIC_URL`` + path + query when set (a proxy or TLS
terminator hides it otherwise), else the request's own URL. Twilio's validator also tries the URL with
and without the default port, and handles HMAC-SHA256 when the signature-settings header says so.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import urlparse

from aiohttp import web
from multidict import MultiDictProxy
from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    add_port,
    compare,
    get_signature_algorithm,
    remove_port,
)

SIGNATURE_HEADER = "X-Twilio-Signature"
HASHES = (HMAC_SHA1, HMAC_SHA256)   # what the validator computes (``twilio.request_validator``)


def signed_url(request: web.Request, public_url: str | None) -> str:
    """The URL Twilio signed for this request."""
    if public_url:
        return public_url.rstrip("/") + request.path_qs
    return str(request.url)


def is_valid(
    request: web.Request, form: MultiDictProxy[str], *, token: str, public_url: str | None
) -> bool:
    """True when the request carries a valid signature over the whole form."""
    signature = request.headers.get(SIGNATURE_HEADER)
    # A signature is base64: anything else (bytes that are not even UTF-8) is no signature, not an error.
    if not signature or not signature.isascii():
        return False
    algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
    validator = RequestValidator(token)
    url = signed_url(request, public_url)
    if (algorithm or HMAC_SHA1).upper() not in HASHES:   # the validator says why (a warning) and refuses
        return bool(validator.validate(url, form, signature, algorithm=algorithm))
    # The URL as it came first, as it is: the one Twilio was told, and almost always the one it signed. Then
    # ``validate``'s two checks (the URL without its port, and with it), which it always makes both of.
    if hmac.compare_digest(validator.compute_signature(url, form, algorithm), signature):
        return True
    parsed = urlparse(url)
    return any(compare(validator.compute_signature(candidate(parsed), form, algorithm), signature)
               for candidate in (add_port, remove_port))


def sign(url: str, params: Mapping[str, str], token: str) -> str:
    """Sign like Twilio does (for tests, benchmarks and the fake server)."""
    return str(RequestValidator(token).compute_signature(url, dict(params)))
