"""Logging: one JSON line per event, phone numbers redacted, secrets never.

Log calls put their fields in ``extra``; the formatter writes them beside the message. Every value
is passed through ``redact``, so a phone number that slips into a field is masked too.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson

_PHONE = re.compile(r"\+\d{6,15}")
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """Mask the middle of every E.164 number: ``+14155550123`` becomes ``+1415*****23``."""
    return _PHONE.sub(_mask, text) if "+" in text else text


def _mask(match: re.Match[str]) -> str:
    number = match.group()
    return number[:5] + "*" * (len(number) - 7) + number[-2:]


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; with ``process``, each line names the process that wrote it (``parley serve``
    names its supervisor and children, whose lines share one stderr)."""

    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact(record.getMessage()),
        }
        if self._process is not None:
            line["process"] = self._process
        for name, value in vars(record).items():
            if name not in _STANDARD:
                line[name] = _clean(value)
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line).decode()


def configure(level: str, *, twilio_level: str = "WARNING", process: str | None = None) -> None:
    """Send JSON lines to stderr at ``level``, each with a ``process`` field when ``process`` is given; quiet the
    access log and chatty libraries.

    ``logging.StreamHandler`` writes a record and its newline in one ``write``, and stderr (line-buffered, or
    unbuffered) hands each line to the kernel in one ``write(2)``: processes sharing a pipe or a file never
    interleave within a line shorter than ``PIPE_BUF`` (4 KiB on Linux), nor, on a file, within any line.

    The twilio library logs each request and response in about ten INFO lines, with URLs and headers: most of
    what a busy process would log. Its whole tree (``twilio.http_client``, ``twilio.async_http_client``...)
    logs at ``twilio_level`` (``PARLEY_TWILIO_LOG_LEVEL``), WARNING unless asked.
    """
    # What a line does not show is not gathered for it (the logging HOWTO's "Optimization"): the caller's frame,
    # thread, process and multiprocessing names; a third of a line's CPU.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("aiohttp.access", "httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("twilio").setLevel(twilio_level.upper())
