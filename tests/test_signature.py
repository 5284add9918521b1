"""X-Twilio-Signature (service/channels/twilio/signature.py): over the URL Twilio called and every form field."""

from __future__ import annotations

import base64
import hmac
import random

import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Request
from multidict import MultiDict, MultiDictProxy
from twilio.request_validator import RequestValidator

from service.channels.twilio.signature import SIGNATURE_HEADER, is_valid, sign, signed_url

TOKEN = "test-auth-token"
PUBLIC = "https://parley.example.com"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
FORM = {"MessageSid": "SM" + "1" * 32, "From": "+14155550123", "To": "+15035550100", "Body": "Hello there"}


def reference_signature(url: str, params: dict[str, str], token: str, digest: str = "sha1") -> str:
    """Twilio's algorithm, written out from its docs: the URL, then each name + value sorted by name, HMAC'd."""
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), digest).digest()).decode()


def request(path: str = "/twilio/sms", headers: dict[str, str] | None = None, host: str = "10.0.0.5:8080") -> Request:
    return make_mocked_request("POST", path, headers={"Host": host, **(headers or {})})


def form(fields: dict[str, str] = FORM) -> MultiDictProxy[str]:
    return MultiDictProxy(MultiDict(fields))


def check(headers: dict[str, str], fields: dict[str, str] = FORM, *, path: str = "/twilio/sms",
          token: str = TOKEN, public_url: str | None = PUBLIC) -> bool:
    return is_valid(request(path, headers), form(fields), token=token, public_url=public_url)


# --- signed_url --------------------------------------------------------------------------------------


@pytest.mark.parametrize("public_url", [PUBLIC, PUBLIC + "/", PUBLIC + "//"])
def test_signed_url_is_the_public_url_plus_path_and_query(public_url: str) -> None:
    assert signed_url(request("/twilio/sms?a=1&b=two"), public_url) == PUBLIC + "/twilio/sms?a=1&b=two"


def test_signed_url_keeps_a_public_path_prefix() -> None:
    assert signed_url(request("/twilio/sms"), "https://hooks.example.com/X/") == "https://hooks.example.com/X/twilio/sms"
    assert signed_url(request("/twilio/sms"), "https://hooks.example.com/parley") == (
        "https://hooks.example.com/parley/twilio/sms")


@pytest.mark.parametrize("public_url", [None, ""])
def test_signed_url_without_a_public_url_is_the_requests_own(public_url: str | None) -> None:
    assert signed_url(request("/twilio/sms?x=1"), public_url) == "http://10.0.0.5:8080/twilio/sms?x=1"


# --- sign --------------------------------------------------------------------------------------------


def test_sign_matches_twilios_algorithm() -> None:
    url = PUBLIC + "/twilio/sms"
    assert sign(url, FORM, TOKEN) == reference_signature(url, FORM, TOKEN)
    assert sign(url, {}, TOKEN) == reference_signature(url, {}, TOKEN)
    assert sign(url, FORM, TOKEN) != sign(url, FORM, "other-token")


# --- is_valid ----------------------------------------------------------------------------------------


def test_a_signature_over_the_public_url_and_the_whole_form_passes() -> None:
    url = PUBLIC + "/twilio/sms"
    assert check({SIGNATURE_HEADER: reference_signature(url, FORM, TOKEN)}) is True


def test_the_query_string_is_part_of_what_is_signed() -> None:
    url = PUBLIC + "/twilio/sms?tenant=a"
    good = reference_signature(url, FORM, TOKEN)
    assert check({SIGNATURE_HEADER: good}, path="/twilio/sms?tenant=a") is True
    assert check({SIGNATURE_HEADER: good}, path="/twilio/sms?tenant=b") is False
    assert check({SIGNATURE_HEADER: good}, path="/twilio/sms") is False


def test_a_signature_over_the_url_alone_is_refused() -> None:
    url = PUBLIC + "/twilio/sms"
    assert check({SIGNATURE_HEADER: reference_signature(url, {}, TOKEN)}) is False
    # Without form fields it is the right signature: the form is what made the difference.
    assert check({SIGNATURE_HEADER: reference_signature(url, {}, TOKEN)}, {}) is True


def test_a_changed_or_added_field_is_refused() -> None:
    signature = reference_signature(PUBLIC + "/twilio/sms", FORM, TOKEN)
    assert check({SIGNATURE_HEADER: signature}, {**FORM, "Body": "Hello there!"}) is False
    assert check({SIGNATURE_HEADER: signature}, {**FORM, "OptOutType": "STOP"}) is False


def test_another_token_is_refused() -> None:
    signature = reference_signature(PUBLIC + "/twilio/sms", FORM, "other-token")
    assert check({SIGNATURE_HEADER: signature}) is False
    assert check({SIGNATURE_HEADER: signature}, token="other-token") is True


def test_the_internal_url_is_refused_when_a_public_url_is_set() -> None:
    internal = reference_signature("http://10.0.0.5:8080/twilio/sms", FORM, TOKEN)
    assert check({SIGNATURE_HEADER: internal}) is False
    assert check({SIGNATURE_HEADER: internal}, public_url=None) is True


def test_the_default_port_may_or_may_not_be_signed() -> None:
    with_port = reference_signature("https://parley.example.com:443/twilio/sms", FORM, TOKEN)
    assert check({SIGNATURE_HEADER: with_port}) is True
    # and the other way round: PARLEY_PUBLIC_URL names the port, Twilio signed the URL without it
    without_port = reference_signature(PUBLIC + "/twilio/sms", FORM, TOKEN)
    assert check({SIGNATURE_HEADER: without_port}, public_url="https://parley.example.com:443") is True
    assert check({SIGNATURE_HEADER: with_port}, public_url="https://parley.example.com:443") is True


@pytest.mark.parametrize("signature", [None, "", "é" * 28, "\xff" * 28])
def test_a_missing_or_non_base64_signature_is_refused(signature: str | None) -> None:
    headers = {} if signature is None else {SIGNATURE_HEADER: signature}
    assert check(headers) is False


def test_hmac_sha256_with_the_settings_header_passes() -> None:
    url = PUBLIC + "/twilio/sms"
    sha256 = reference_signature(url, FORM, TOKEN, "sha256")
    settings = {SETTINGS_HEADER: "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"}
    assert check({SIGNATURE_HEADER: sha256, **settings}) is True
    assert check({SIGNATURE_HEADER: sha256, SETTINGS_HEADER: "algorithm=hmac_sha256"}) is True
    # The header decides the algorithm: SHA-256 without it, or SHA-1 with it, is refused.
    assert check({SIGNATURE_HEADER: sha256}) is False
    assert check({SIGNATURE_HEADER: reference_signature(url, FORM, TOKEN), **settings}) is False
    # A SHA-256 signature over the URL alone is refused too.
    assert check({SIGNATURE_HEADER: reference_signature(url, {}, TOKEN, "sha256"), **settings}) is False


def test_an_unknown_algorithm_is_refused_not_an_error() -> None:
    url = PUBLIC + "/twilio/sms"
    for algorithm in ("HMAC_MD5", "sha1"):
        digest = "md5" if algorithm == "HMAC_MD5" else "sha1"
        headers = {SIGNATURE_HEADER: reference_signature(url, FORM, TOKEN, digest),
                   SETTINGS_HEADER: f"key=k,algorithm={algorithm}"}
        assert check(headers) is False, algorithm


def test_the_check_agrees_with_twilios_validator_on_any_form() -> None:
    # is_valid builds the signed string itself (Twilio's validator's algorithm, written out for speed): on forms
    # with repeated names, repeated values, empty values and any text, it accepts exactly what the validator does.
    rng = random.Random(7)
    alphabet = ["a", "B", "0", " ", "&", "=", "+", "%", "é", "ü", "中", "😀", "\n", ""]
    for _ in range(300):
        pairs = [("".join(rng.choices(alphabet, k=rng.randint(1, 6))),
                  "".join(rng.choices(alphabet, k=rng.randint(0, 8)))) for _ in range(rng.randint(0, 8))]
        pairs += rng.sample(pairs, k=min(len(pairs), rng.randint(0, 2)))   # the same pair twice
        fields = MultiDictProxy(MultiDict(pairs))
        url = rng.choice([PUBLIC, PUBLIC + ":443", "http://10.0.0.5:8080"]) + "/twilio/sms?x=" + str(rng.random())
        for algorithm, settings in (("HMAC_SHA1", {}),
                                    ("HMAC_SHA256", {SETTINGS_HEADER: "key=k,algorithm=HMAC_SHA256"})):
            validator = RequestValidator(TOKEN)
            right = validator.compute_signature(url, fields, algorithm)
            wrong = validator.compute_signature(url + "x", fields, algorithm)
            for signature, expected in ((right, True), (wrong, False)):
                req = make_mocked_request("POST", "/" + url.split("/", 3)[3],
                                          headers={"Host": "10.0.0.5:8080", SIGNATURE_HEADER: signature, **settings})
                assert is_valid(req, fields, token=TOKEN, public_url=url.split("/twilio/")[0]) is expected
                assert bool(validator.validate(url, fields, signature, algorithm=algorithm)) is expected
