"""Rendering the console's pages: Jinja2 templates (``templates/``, autoescaped) through aiohttp-jinja2, with the
filters they share (phone numbers for humans, times the browser shows in its own zone)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
import phonenumbers
from aiohttp import web
from markupsafe import Markup

from service.address import split_address
from service.console.sessions import SESSION


def phone(value: str | None) -> str:
    """``+14155550123`` as ``+1 415-555-0123`` (a channel prefix kept: ``whatsapp: +1 415...``)."""
    if not value:
        return "—"
    channel, number = split_address(value)
    try:
        pretty = phonenumbers.format_number(phonenumbers.parse(number), phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    except phonenumbers.NumberParseException:
        pretty = number
    return pretty if channel == "sms" else f"{channel}: {pretty}"


def when(ms: int | None, kind: str = "") -> Markup:
    """A ``<time>`` in UTC, which ``console.js`` rewrites in the browser's time zone."""
    if not ms:
        return Markup("—")
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    shown = moment.strftime("%H:%M" if kind == "hour" else "%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}" class="{}">{}</time>').format(moment.isoformat(), kind, shown)


def setup(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("service.console", "templates"),
                               autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)
    env.filters["phone"] = phone
    env.filters["when"] = when


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    context = {"session": request.get(SESSION), "path": request.path, **context}
    return aiohttp_jinja2.render_template(template, request, context, status=status)


