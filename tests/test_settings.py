"""Settings come from the environment, as the README lists them; logs redact numbers and keep secrets out."""

from __future__ import annotations

import io
import logging

import pytest
from pydantic import ValidationError

from service.logs import JsonFormatter, redact
from service.settings import Settings

SID = "AC" + "1" * 32


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"REDIS_URL": "redis://r:6379/2", "PARLEY_DATA_DIR": "/data", "PARLEY_HOST": "0.0.0.0", "PARLEY_PORT": "9000",
           "PARLEY_PUBLIC_URL": "https://sms.example.com", "PARLEY_API_KEY": "k1, k2", "PARLEY_AGENTS_DIR": "/agents",
           "PARLEY_WEBHOOK_URL": "https://hooks.example.com", "PARLEY_WORKERS": "64", "OPENAI_API_KEY": "sk-x",
           "OPENAI_BASE_URL": "http://llm:8000/v1", "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "secret-token-1",
           "TWILIO_API_BASE_URL": "http://twilio.local", "PARLEY_TWILIO_ACCOUNTS": '{"AC' + "2" * 32 + '": "tok2"}'}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.redis_url, str(s.data_dir), s.host, s.port) == ("redis://r:6379/2", "/data", "0.0.0.0", 9000)
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"]
    assert s.public_url == "https://sms.example.com" and s.workers == 64 and str(s.agents_dir) == "/agents"
    assert s.webhook_url == "https://hooks.example.com" and s.openai_base_url == "http://llm:8000/v1"
    assert s.twilio_api_base_url == "http://twilio.local"
    tokens = {sid: t.get_secret_value() for sid, t in s.twilio_tokens().items()}
    assert tokens == {SID: "secret-token-1", "AC" + "2" * 32: "tok2"}
    assert "secret-token-1" not in repr(s) and "sk-x" not in repr(s)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "PARLEY_API_KEY", "PARLEY_PORT", "PARLEY_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.redis_url is None and s.api_keys == [] and s.port == 8080 and s.host == "127.0.0.1"
    assert s.twilio_api_base_url == "https://api.twilio.com" and s.workers == 1024
    assert s.hang_timeout_s == 60.0


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("PARLEY_PORT", "eighty", "PARLEY_PORT"),
    ("TWILIO_ACCOUNT_SID", "not-a-sid", "TWILIO_ACCOUNT_SID"),
    ("PARLEY_TWILIO_ACCOUNTS", '{"XX1": "t"}', "not a Twilio account SID"),
    ("PARLEY_HANG_TIMEOUT_S", "0.5", "must be 0 \\(never\\) or at least 2 seconds"),
    ("PARLEY_HANG_TIMEOUT_S", "-1", "PARLEY_HANG_TIMEOUT_S"),
])
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=expected):
        Settings()


def test_logs_are_json_with_numbers_redacted() -> None:
    assert redact("from +14155550123 to +15035550100") == "from +1415*****23 to +1503*****00"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("parley.test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("sms from +14155550123", extra={"conv": "{+15035550100:+14155550123}", "segments": 2})
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert "0123" not in line.replace("*****23", "") and '"segments":2' in line and '"level":"warning"' in line
