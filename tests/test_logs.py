"""Logging as ``parley serve`` configures it: the twilio library's per-request INFO lines are off unless asked."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest
from pydantic import ValidationError

from service import logs
from service.channels.twilio.numbers import NUMBERS
from service.settings import Settings

from .conftest import ACCOUNT_SID, AGENT_NUMBER, USER, MakeParley

QUIETED = ("twilio", "twilio.http_client", "twilio.async_http_client", "aiohttp.access", "httpx", "httpx2", "openai")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def twilio_info(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.name.startswith("twilio") and r.levelno == logging.INFO]


@contextmanager
def configured(level: str, **kwargs: str) -> Iterator[Records]:
    """``logs.configure(level, **kwargs)`` with a handler that keeps every record; the logging state is put back
    after (configure replaces the root's handlers, pytest's among them)."""
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    gathered = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    records = Records()
    try:
        logs.configure(level, **kwargs)
        root.addHandler(records)
        yield records
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = gathered
        for name, saved in levels.items():
            logging.getLogger(name).setLevel(saved)


async def test_a_send_logs_no_twilio_info_lines_by_default(make_parley: MakeParley) -> None:
    parley = await make_parley()
    with configured("INFO", twilio_level=parley.settings.twilio_log_level) as records:   # as `parley serve` does
        await parley.text("hello")
        await parley.twilio.wait_for(1)
        await parley.idle()
    assert records.twilio_info() == []


async def test_the_twilio_log_level_turns_them_back_on(make_parley: MakeParley) -> None:
    parley = await make_parley(twilio_log_level="info")
    with configured("INFO", twilio_level=parley.settings.twilio_log_level) as records:
        # The official client's calls (numbers, A2P) log; a reply's send is Parley's own request (its own lines).
        client = parley.client.app[NUMBERS].client(ACCOUNT_SID)
        await client.messages.create_async(to=USER, from_=AGENT_NUMBER, body="hello")
    lines = records.twilio_info()
    assert "-- BEGIN Twilio API Request --" in lines and any(line.startswith("Response Status Code") for line in lines)


def test_the_twilio_log_level_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARLEY_TWILIO_LOG_LEVEL", raising=False)
    assert Settings().twilio_log_level == "WARNING"
    monkeypatch.setenv("PARLEY_TWILIO_LOG_LEVEL", "info")
    assert Settings().twilio_log_level == "INFO"
    monkeypatch.setenv("PARLEY_TWILIO_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError, match="'loud' is not a log level"):
        Settings()


def test_a_named_process_names_itself_in_every_line() -> None:
    record = logging.LogRecord("service.x", logging.INFO, __file__, 1, "turn ran", None, None)
    record.chat_id = "chat_1"
    assert orjson.loads(logs.JsonFormatter("worker-2").format(record)) == {
        "ts": round(record.created, 3), "level": "info", "logger": "service.x", "event": "turn ran",
        "process": "worker-2", "chat_id": "chat_1"}
    assert "process" not in orjson.loads(logs.JsonFormatter().format(record))   # one process: lines as before
