"""Every route Parley serves, in one list: the API's route modules, the channels' webhooks, operations.

A new route goes in its module's ``ROUTES`` (one module per thing served: ``chats``, ``sms``, ``agents``,
``flows``, ``numbers``, ``knowledge``); a provider's webhooks are registered here, by their handlers.
``create_app`` serves the list and ``GET /openapi.json`` documents it.
"""

from __future__ import annotations

from aiohttp import web

from service.api import a2p, agents, chats, flows, health, knowledge, numbers, sms, versions
from service.api.http import json_response
from service.api.openapi import Route, document
from service.channels.twilio.form import InboundForm, StatusForm
from service.channels.twilio.messages import twilio_sms
from service.channels.twilio.status import twilio_status

TWILIO = [
    Route("POST", "/twilio/sms", twilio_sms, "Twilio's inbound message webhook, SMS and WhatsApp (form, signed)",
          public=True, tag="twilio", form=InboundForm, errors=(403, 404, 503)),
    Route("POST", "/twilio/status", twilio_status, "Twilio's status callback (form, signed)",
          status=204, public=True, tag="twilio", form=StatusForm, errors=(403, 503)),
]


def routes(*, web_routes: bool = True) -> list[Route]:
    """Every route Parley serves (``web_routes=False``: the health checks of ``parley worker``)."""
    if not web_routes:
        return health.ROUTES
    own = [Route("GET", "/openapi.json", openapi_json, "This document", public=True, tag="operations")]
    api = (chats.ROUTES + sms.ROUTES + agents.ROUTES + versions.ROUTES + flows.ROUTES + numbers.ROUTES + a2p.ROUTES
           + knowledge.ROUTES)
    return api + TWILIO + own + health.ROUTES


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``: generated from the routes' own models."""
    return json_response(document(routes()))
