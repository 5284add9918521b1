"""Parley's A2P 10DLC routes: draft and check a campaign from the numbers' agents, register a brand and a
campaign with Twilio, and follow the registration to approval (``service/channels/twilio/registration.py``)."""

from __future__ import annotations

from aiohttp import web

from service.api.http import model_response, read_body
from service.api.openapi import Route
from service.channels.twilio.registration import (
    REGISTRATIONS,
    DraftAnswer,
    DraftRequest,
    Registration,
    RegistrationRequest,
)


async def draft_a2p_campaign(request: web.Request) -> web.Response:
    """``POST /draft-a2p-campaign``: the campaign written from the numbers' agents (or the one given), and what a
    reviewer would reject in it. Nothing is sent to Twilio."""
    wanted = await read_body(request, DraftRequest)
    return model_response(await request.app[REGISTRATIONS].draft(wanted))


async def create_a2p_registration(request: web.Request) -> web.Response:
    """``POST /create-a2p-registration``: submit the business profile and the brand; the campaign follows once
    the brand is approved. Refused (422, each finding named) while the campaign check finds anything."""
    wanted = await read_body(request, RegistrationRequest)
    return model_response(await request.app[REGISTRATIONS].create(wanted), status=201)


async def get_a2p_registration(request: web.Request) -> web.Response:
    return model_response(await request.app[REGISTRATIONS].get(request.match_info["registration_id"]))


async def list_a2p_registrations(request: web.Request) -> web.Response:
    return model_response(await request.app[REGISTRATIONS].all())


ROUTES = [
    Route("POST", "/draft-a2p-campaign", draft_a2p_campaign, "Draft and check an A2P 10DLC campaign (Parley's)",
          body=DraftRequest, response=DraftAnswer, tag="a2p 10dlc", scope="write"),
    Route("POST", "/create-a2p-registration", create_a2p_registration, "Register an A2P 10DLC brand and campaign "
          "with Twilio (Parley's)", body=RegistrationRequest, response=Registration, status=201, tag="a2p 10dlc",
          scope="admin", errors=(404, 502)),
    Route("GET", "/get-a2p-registration/{registration_id}", get_a2p_registration, "Get an A2P 10DLC registration "
          "(Parley's)", response=Registration, tag="a2p 10dlc", scope="read"),
    Route("GET", "/list-a2p-registrations", list_a2p_registrations, "List A2P 10DLC registrations (Parley's)",
          response=Registration, many=True, tag="a2p 10dlc", scope="read"),
]
