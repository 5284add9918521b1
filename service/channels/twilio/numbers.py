"""A Twilio number made ready for Parley: found in the account that owns it, its SMS webhook pointed at Parley
(and its Messaging Service's, when it sits in one), what was there kept and put back on delete; or bought.

``connect`` sets the number's ``SmsUrl`` (POST) to ``PARLEY_PUBLIC_URL/twilio/sms``. A number in a Messaging
Service would still reach the service's inbound URL, so the service's ``UseInboundWebhookOnNumber`` is turned
on (Twilio's "Defer to sender's webhook"), or, with the number's ``twilio_messaging_service_url``, the
service's own inbound URL is set instead. What was there before is written to Redis first (once: a second
``connect`` keeps the original) and ``disconnect`` puts it back; a service's setting is put back only when no
other number Parley connected still relies on it. A number with ``twilio_webhooks: false`` is left alone.
Without ``PARLEY_PUBLIC_URL`` the number is still looked up (it must exist and take SMS) and a warning says
what to set.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from twilio.rest import Client

from service.channels.twilio.gateway import TwilioGateway
from service.channels.twilio.rest import NOT_FOUND, call
from service.conversations.runtime import Runtime
from service.errors import InvalidRequest, NotFound, TwilioRefused
from service.retell.models import PhoneNumber
from service.storage import keys

log = logging.getLogger(__name__)

SMS_PATH = "/twilio/sms"
SEARCH_SIZE = 20
NO_SMS = 21606   # what Twilio answers a send from a number that cannot send SMS


class Previous(BaseModel):
    """A number's Twilio settings before Parley changed them."""

    number_sid: str
    account_sid: str
    sms_url: str | None = None
    sms_method: str | None = None
    service_sid: str | None = None
    service_field: Literal["use_inbound_webhook_on_number", "inbound_request_url"] | None = None
    service_value: str | bool | None = None
    service_method: str | None = None


def sms_capable(capabilities: Any) -> bool:
    """Twilio's capabilities object: ``sms`` on owned numbers, ``SMS`` on numbers for sale."""
    caps = capabilities if isinstance(capabilities, dict) else {}
    return bool(caps.get("sms", caps.get("SMS", False)))


class TwilioNumbers:
    """Finds, connects, disconnects and buys numbers through the gateway's official clients."""

    def __init__(self, gateway: TwilioGateway, rt: Runtime) -> None:
        self._gateway = gateway
        self._rt = rt

    def account(self, account_sid: str | None) -> str:
        """The number's account: its ``twilio_account_sid``, else TWILIO_ACCOUNT_SID."""
        account = account_sid or self._rt.settings.twilio_account_sid
        if account is None:
            raise InvalidRequest("twilio_account_sid: required, since TWILIO_ACCOUNT_SID is not set")
        return account

    def client(self, account: str) -> Client:
        return self._gateway.client(account)

    def webhook_url(self) -> str | None:
        base = self._rt.settings.public_url
        return base.rstrip("/") + SMS_PATH if base else None

    async def find(self, account: str, e164: str) -> Any:
        """The account's IncomingPhoneNumber for ``e164``: 404 when the account has none, 422 when it takes no
        SMS."""
        found = await call(f"looking up {e164} in Twilio account {account}",
                           self.client(account).incoming_phone_numbers.list_async(phone_number=e164, limit=1))
        if not found:
            raise TwilioRefused(f"phone_number: Twilio account {account} has no number {e164} (its "
                                "IncomingPhoneNumbers list none): buy it there, or name the account that owns it "
                                "in twilio_account_sid", http_status=404)
        if not sms_capable(found[0].capabilities):
            raise TwilioRefused(f"phone_number: {e164} has no SMS capability in Twilio (Twilio refuses a text from "
                                f"it with error {NO_SMS}): use an SMS-capable number", code=NO_SMS)
        return found[0]

    async def connect(self, number: PhoneNumber) -> list[str]:
        """Point the number's webhooks at Parley; the warnings to show (none when all was set)."""
        if not number.twilio_webhooks:
            return []
        account = self.account(number.twilio_account_sid)
        found = await self.find(account, number.phone_number)
        url = self.webhook_url()
        if url is None:
            return [f"PARLEY_PUBLIC_URL is not set, so Twilio still sends {number.phone_number}'s texts to "
                    f"{found.sms_url or 'no URL'}: set PARLEY_PUBLIC_URL to the https address Twilio reaches Parley "
                    "at, then run `parley numbers sync`"]
        client = self.client(account)
        previous = Previous(number_sid=found.sid, account_sid=account, sms_url=found.sms_url,
                            sms_method=found.sms_method)
        service = await self._service_of(client, found.sid)
        sharing = await self._sharing(number.phone_number, service.sid) if service is not None else None
        if sharing is not None:   # another Parley number changed the service first: its values are the original
            previous = previous.model_copy(update=sharing.model_dump(include={
                "service_sid", "service_field", "service_value", "service_method"}))
        elif service is not None:
            previous.service_sid = service.sid
            if number.twilio_messaging_service_url:
                previous.service_field, previous.service_value = "inbound_request_url", service.inbound_request_url
                previous.service_method = service.inbound_method
            else:
                previous.service_field = "use_inbound_webhook_on_number"
                previous.service_value = bool(service.use_inbound_webhook_on_number)
        # Kept before anything changes (and only the first time: a second connect must not keep Parley's URL).
        await self._rt.redis.set(keys.number_twilio(number.phone_number), previous.model_dump_json(), nx=True)
        if service is not None:
            what = f"setting Messaging Service {service.sid} of {number.phone_number}"
            changes: dict[str, Any] = ({"inbound_request_url": url, "inbound_method": "POST"}
                                       if number.twilio_messaging_service_url
                                       else {"use_inbound_webhook_on_number": True})
            await call(what, client.messaging.v1.services(service.sid).update_async(**changes))
        await call(f"setting {number.phone_number}'s SMS webhook",
                   client.incoming_phone_numbers(found.sid).update_async(sms_url=url, sms_method="POST"))
        log.info("number connected to Parley", extra={"number": number.phone_number, "service": previous.service_sid})
        return []

    async def _service_of(self, client: Client, number_sid: str) -> Any | None:
        """The Messaging Service the number sits in, if any."""
        services = await call("listing Messaging Services", client.messaging.v1.services.list_async())
        for service in services:
            try:
                await call("reading a Messaging Service's numbers",
                           client.messaging.v1.services(service.sid).phone_numbers(number_sid).fetch_async())
            except TwilioRefused as exc:
                if exc.http_status == 404:
                    continue
                raise
            return service
        return None

    async def disconnect(self, phone_number: str) -> None:
        """Put back what ``connect`` changed (a number Twilio no longer has is skipped, with a log line)."""
        key = keys.number_twilio(phone_number)
        raw = await self._rt.redis.get(key)
        if raw is None:
            return
        previous = Previous.model_validate_json(raw)
        client = self.client(previous.account_sid)
        try:
            await call(f"putting back {phone_number}'s SMS webhook", client.incoming_phone_numbers(
                previous.number_sid).update_async(sms_url=previous.sms_url or "",
                                                  sms_method=previous.sms_method or "POST"))
        except TwilioRefused as exc:
            if exc.code != NOT_FOUND:
                raise
            log.warning("number no longer in Twilio; nothing to put back", extra={"number": phone_number})
        if previous.service_sid and await self._sharing(phone_number, previous.service_sid) is None:
            value = previous.service_value
            deferred = previous.service_field == "use_inbound_webhook_on_number"
            changes: dict[str, Any] = (
                {"use_inbound_webhook_on_number": bool(value)} if deferred
                else {"inbound_request_url": value or "", "inbound_method": previous.service_method or "POST"})
            await call(f"putting back Messaging Service {previous.service_sid}",
                       client.messaging.v1.services(previous.service_sid).update_async(**changes))
        await self._rt.redis.delete(key)

    async def _sharing(self, phone_number: str, service_sid: str) -> Previous | None:
        """What another number Parley connected keeps of the Messaging Service ``service_sid``, if any."""
        others = [n.phone_number for n in await self._rt.catalog.numbers() if n.phone_number != phone_number]
        raws = await self._rt.redis.mget([keys.number_twilio(n) for n in others]) if others else []
        kept = [Previous.model_validate_json(raw) for raw in raws if raw]
        return next((p for p in kept if p.service_sid == service_sid), None)

    async def pick(self, account: str, *, country: str, area_code: int | None, toll_free: bool) -> str:
        """An SMS-capable number for sale (in ``area_code`` when given)."""
        where = self.client(account).available_phone_numbers(country)
        kind = where.toll_free if toll_free else where.local
        search: dict[str, Any] = {"sms_enabled": True, "limit": SEARCH_SIZE}
        if area_code is not None:
            search["area_code"] = area_code
        what = f"searching Twilio's {'toll-free' if toll_free else 'local'} {country} numbers"
        for offer in await call(what, kind.list_async(**search)):
            if sms_capable(offer.capabilities):
                return str(offer.phone_number)
        area = f" in area code {area_code}" if area_code is not None else ""
        raise NotFound(f"Twilio has no SMS-capable {'toll-free' if toll_free else 'local'} {country} number for "
                       f"sale{area}: try another area_code")

    async def buy(self, number: PhoneNumber) -> list[str]:
        """Buy ``number.phone_number`` with its SMS webhook pointed at Parley (when PARLEY_PUBLIC_URL is set); the
        warnings to show."""
        account = self.account(number.twilio_account_sid)
        url = self.webhook_url()
        extra: dict[str, Any] = {"sms_url": url, "sms_method": "POST"} if url and number.twilio_webhooks else {}
        bought = await call(f"buying {number.phone_number}", self.client(account).incoming_phone_numbers.create_async(
            phone_number=number.phone_number, friendly_name=number.nickname or number.phone_number, **extra))
        if extra:   # a bought number had no webhook: delete leaves it with none
            previous = Previous(number_sid=bought.sid, account_sid=account, sms_url="", sms_method="POST")
            await self._rt.redis.set(keys.number_twilio(number.phone_number), previous.model_dump_json(), nx=True)
        if not sms_capable(bought.capabilities):   # a phone_number named in the request was not searched
            return [f"{number.phone_number} was bought but has no SMS capability in Twilio: it cannot text (Twilio "
                    f"refuses a text from it with error {NO_SMS}); release it in the Twilio console"]
        return []


NUMBERS = web.AppKey("twilio_numbers", TwilioNumbers)
