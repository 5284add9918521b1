"""Retell's phone-number routes for Twilio numbers Parley answers on. Numbers in files are read-only.

Import and create set the number's Twilio webhooks, and delete puts back what was there
(``service/channels/twilio/numbers.py``); their answer carries ``warnings`` (Parley's) when something is left
for the user to do, such as setting ``PARLEY_PUBLIC_URL``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.api import id_forms
from service.api.http import ensure_writable, model_response, page_of_ids, read_object, read_query, validated
from service.api.openapi import Route
from service.app_state import RUNTIME
from service.catalog import targets
from service.channels.twilio.numbers import NUMBERS
from service.conversations.runtime import Runtime
from service.errors import Conflict, InvalidRequest, NotFound
from service.retell.models import PhoneNumber
from service.retell.requests import CreatePhoneNumberRequest, PageQuery, PhoneNumberAnswer, PhoneNumberListResponse
from service.retell.unsupported import unsupported

READ_ONLY = {"last_modification_timestamp", "phone_number_type"}
BUYING = ("area_code", "country_code", "toll_free", "number_provider")
TOLL_FREE_WARNING = ("{number} is toll-free: US carriers deliver its texts once Twilio's toll-free verification "
                     "is approved (A2P 10DLC registration does not apply to it)")


async def _check(rt: Runtime, number: PhoneNumber) -> None:
    """Every agent (and agent version) it names exists, Parley holds the auth token of its Twilio account, and its
    chat_inbound webhook is a URL the outbound policy allows (checked without DNS: the resolver judges it at run
    time)."""
    problems = targets.number_problems(number, rt.outbound)
    if problems:
        raise InvalidRequest("; ".join(problems))
    for field in ("inbound_sms_agents", "outbound_sms_agents"):
        for index, ref in enumerate(getattr(number, field)):
            if not await rt.catalog.agents.exists(ref.agent_id):
                raise InvalidRequest(f"{field}.{index}.agent_id: no chat agent {ref.agent_id!r}")
            try:
                await rt.catalog.agents.find(ref.agent_id, ref.agent_version)
            except NotFound as exc:
                raise InvalidRequest(f"{field}.{index}.agent_version: {exc}") from None
    account = number.twilio_account_sid or rt.settings.twilio_account_sid
    if account is None:
        raise InvalidRequest("twilio_account_sid: required, since TWILIO_ACCOUNT_SID is not set")
    if account not in rt.settings.twilio_tokens():
        raise InvalidRequest(f"twilio_account_sid: Parley has no auth token for {account} "
                             "(set TWILIO_AUTH_TOKEN or PARLEY_TWILIO_ACCOUNTS)")


async def _number(rt: Runtime, phone_number: str) -> PhoneNumber:
    number = await rt.catalog.get_number(id_forms.phone_number(phone_number))
    if number is None:
        raise NotFound(f"phone number {phone_number!r} not found")
    return number


def _body(data: dict[str, Any]) -> PhoneNumber:
    return validated(PhoneNumber, {k: v for k, v in data.items() if k not in READ_ONLY})


async def import_phone_number(request: web.Request) -> web.Response:
    """``POST /import-phone-number``: register a Twilio number you own."""
    rt = request.app[RUNTIME]
    number = _body(await read_object(request))
    if await rt.catalog.get_number(number.phone_number) is not None:
        raise Conflict(f"phone number {number.phone_number} is already imported")
    await _check(rt, number)
    warnings = await request.app[NUMBERS].connect(number)
    return _answer(await rt.catalog.put_number(number), warnings, status=201)


def _answer(number: PhoneNumber, warnings: list[str], status: int = 200) -> web.Response:
    return model_response(PhoneNumberAnswer(**number.model_dump(), warnings=warnings, unsupported=unsupported(number)),
                          status=status)


async def create_phone_number(request: web.Request) -> web.Response:
    """``POST /create-phone-number``: buy an SMS-capable Twilio number and import it."""
    rt = request.app[RUNTIME]
    numbers = request.app[NUMBERS]
    wanted = validated(CreatePhoneNumberRequest, {k: v for k, v in (await read_object(request)).items()
                                                  if k not in READ_ONLY})
    if wanted.number_provider == "telnyx":
        raise InvalidRequest("number_provider: telnyx is not supported: Parley texts through Twilio only (Retell's "
                             "SMS page says the same of Telnyx numbers); use twilio")
    fields = wanted.model_dump(exclude_unset=True, exclude=set(BUYING))
    account = numbers.account(wanted.twilio_account_sid)
    e164 = wanted.phone_number or await numbers.pick(account, country=wanted.country_code,
                                                     area_code=wanted.area_code, toll_free=wanted.toll_free)
    if await rt.catalog.get_number(e164) is not None:
        raise Conflict(f"phone number {e164} is already imported")
    number = validated(PhoneNumber, {**fields, "phone_number": e164})
    await _check(rt, number)
    warnings = await numbers.buy(number)
    if not numbers.webhook_url():
        warnings += await numbers.connect(number)
    if wanted.toll_free:
        warnings.append(TOLL_FREE_WARNING.format(number=e164))
    return _answer(await rt.catalog.put_number(number), warnings, status=201)


async def get_phone_number(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return model_response(await _number(rt, request.match_info["phone_number"]))


async def update_phone_number(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    current = await _number(rt, request.match_info["phone_number"])
    ensure_writable(request, "number", current.phone_number)
    data = await read_object(request)
    data.pop("phone_number", None)
    merged = current.model_dump()
    if "inbound_sms_agent_id" in data or "outbound_sms_agent_id" in data:   # legacy fields replace the lists
        merged.pop("inbound_sms_agents" if "inbound_sms_agent_id" in data else "outbound_sms_agents")
    number = _body({**merged, **data})
    await _check(rt, number)
    warnings = await _rewire(request, current, number)
    return _answer(await rt.catalog.put_number(number), warnings)


async def _rewire(request: web.Request, current: PhoneNumber, number: PhoneNumber) -> list[str]:
    """An update that turns ``twilio_webhooks`` off puts Twilio's values back; one that turns it on, or
    changes how a Messaging Service is handled, points the number at Parley again."""
    numbers = request.app[NUMBERS]
    wiring = ("twilio_webhooks", "twilio_messaging_service_url", "twilio_account_sid")
    if all(getattr(current, f) == getattr(number, f) for f in wiring):
        return []
    if current.twilio_webhooks:
        await numbers.disconnect(current.phone_number)
    return await numbers.connect(number)


async def delete_phone_number(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    number = await _number(rt, request.match_info["phone_number"])
    ensure_writable(request, "number", number.phone_number)
    await request.app[NUMBERS].disconnect(number.phone_number)
    await rt.catalog.delete_number(number.phone_number)
    return web.Response(status=204)


async def list_phone_numbers(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return model_response(await rt.catalog.numbers())


async def list_phone_numbers_v2(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    numbers = {n.phone_number: n for n in await rt.catalog.numbers()}
    ids, more, key = page_of_ids(list(numbers), read_query(request, PageQuery), str)
    return model_response(PhoneNumberListResponse(items=[numbers[i] for i in ids], has_more=more,
                                                  pagination_key=key))


ROUTES = [
    Route("POST", "/import-phone-number", import_phone_number, "Import a Twilio number and point its SMS webhook "
          "at Parley", body=PhoneNumber, response=PhoneNumberAnswer, status=201, tag="phone numbers", scope="admin",
          errors=(404, 409, 502)),
    Route("POST", "/create-phone-number", create_phone_number, "Buy an SMS-capable Twilio number and import it",
          body=CreatePhoneNumberRequest, response=PhoneNumberAnswer, status=201, tag="phone numbers",
          scope="admin", errors=(404, 409, 502)),
    Route("GET", "/get-phone-number/{phone_number}", get_phone_number, "Get a phone number", response=PhoneNumber,
          tag="phone numbers", scope="read"),
    Route("PATCH", "/update-phone-number/{phone_number}", update_phone_number, "Update a phone number (and its "
          "Twilio webhooks when twilio_webhooks changes)", body=PhoneNumber, response=PhoneNumberAnswer,
          tag="phone numbers", scope="admin", errors=(404, 409, 502)),
    Route("DELETE", "/delete-phone-number/{phone_number}", delete_phone_number, "Delete a phone number (its "
          "Twilio webhooks are put back)", status=204, tag="phone numbers", scope="admin", errors=(409, 422, 502)),
    Route("GET", "/list-phone-numbers", list_phone_numbers, "List phone numbers", response=PhoneNumber, many=True,
          tag="phone numbers", scope="read"),
    Route("GET", "/v2/list-phone-numbers", list_phone_numbers_v2, "List phone numbers, paginated",
          query=PageQuery, response=PhoneNumberListResponse, tag="phone numbers", scope="read"),
]
