"""Twilio webhook signatures (``X-Twilio-Signature``), checked with the auth token of the owning account.

The URL signed is the one Twilio called: ``PARLEY_PUBLIC_URL`` + path + query when set (a proxy or TLS
terminator hides it otherwise), else the request's own URL. As Twilio's validator, the check also tries the URL
with and without the default port, and handles HMAC-SHA256 when the signature-settings header says so.
"""

from __future__ import annotations

import base64
import hashlib
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
    get_signature_algorithm,
    remove_port,
)

SIGNATURE_HEADER = "X-Twilio-Signature"
# What the validator computes (``twilio.request_validator``), and how: the URL, then each field's name and value,
# by name and then value, each pair once (``RequestValidator.compute_signature``, written out here because its
# string building by ``+=`` over Twilio's 20-odd fields was a tenth of the webhook's CPU; a test holds the two equal).
DIGESTS = {HMAC_SHA1: hashlib.sha1, HMAC_SHA256: hashlib.sha256}


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
    url = signed_url(request, public_url)
    digest = DIGESTS.get(algorithm.upper())
    if digest is None:   # the validator says why (a warning) and refuses
        return bool(RequestValidator(token).validate(url, form, signature, algorithm=algorithm))
    # The URL as it came first, as it is: the one Twilio was told, and almost always the one it signed. Then
    # ``validate``'s two checks (the URL without its port, and with it), which it always makes both of.
    signed = "".join(name + value for name in sorted(set(form)) for value in sorted(set(form.getall(name))))

    def signs(candidate: str) -> bool:
        mac = hmac.new(token.encode(), (candidate + signed).encode(), digest)
        return hmac.compare_digest(base64.b64encode(mac.digest()).decode(), signature)

    if signs(url):
        return True
    parsed = urlparse(url)
    return signs(add_port(parsed)) or signs(remove_port(parsed))


def sign(url: str, params: Mapping[str, str], token: str) -> str:
    """Sign like Twilio does (for tests, benchmarks and the fake server)."""
    return str(RequestValidator(token).compute_signature(url, dict(params)))
