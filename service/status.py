"""``POST /twilio/status``: Twilio's delivery-status callbacks, signature-checked and logged.

For now a callback is only logged (status and error code); the monotonic delivery state machine on
chat messages comes with delivery tracking (issue 5).
"""

from __future__ import annotations

import logging

from aiohttp import web

from .appkeys import RUNTIME
from .inbound import fail, read_form, verify
from .logs import redact

log = logging.getLogger(__name__)


async def twilio_status(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    form = await read_form(request)
    if isinstance(form, web.Response):
        return form
    sender = form.get("From", "")
    number = await rt.catalog.get_number(sender) if sender else None
    if not await verify(request, rt, form, number):
        return fail(403, "invalid X-Twilio-Signature")
    log.info("sms status", extra={"message_sid": form.get("MessageSid"), "status": form.get("MessageStatus"),
                                  "error_code": form.get("ErrorCode"), "to": redact(form.get("To", ""))})
    return web.Response(status=204)
