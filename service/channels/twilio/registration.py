"""A2P 10DLC registrations, tracked to approval: drafted and checked campaigns, brands submitted, status polled.

``create`` checks the campaign (``campaign.check``: nothing is submitted, nor paid for, while a finding is
left), then submits the customer profile, the A2P bundle and the brand (``a2p``) and stores the registration,
``pending``. ``tick`` (a background loop of ``create_app``, every ``PARLEY_A2P_POLL_S``) reads each pending
one from Twilio: a brand approved gets its Messaging Service and campaign; a campaign verified makes the
registration ``approved`` and sets each number's ``daily_segment_limit`` from the brand's tier; a brand or a
campaign Twilio failed makes it ``failed`` with Twilio's reasons. Every change of status or stage queues an
``a2p_registration_updated`` event to ``PARLEY_WEBHOOK_URL``, in the same transaction as the change.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from service.catalog.store import Agent
from service.channels.twilio import a2p
from service.channels.twilio.a2p import BrandType, Business, Contact
from service.channels.twilio.campaign import Campaign, Context, Finding, UseCase, check, draft
from service.channels.twilio.numbers import Previous, TwilioNumbers
from service.chats.model import new_id
from service.clock import now_ms
from service.conversations.runtime import Runtime
from service.errors import InvalidRequest, NotFound, TwilioRefused
from service.retell.models import E164, PhoneNumber
from service.storage import keys
from service.webhooks.events import Event, queue

log = logging.getLogger(__name__)

EVENT = "a2p_registration_updated"
LOCK_MS = 120_000
FAILED_BRAND = {"FAILED", "SUSPENDED", "DELETED"}
# One-time fees (USD) as Retell's A2P page states them: the brand (low-volume standard or standard) and each
# campaign submission (vetting, not refunded).
FEES_USD = {"low_volume_standard": {"brand": 4, "campaign": 15}, "standard": {"brand": 45, "campaign": 15}}
LOW_VOLUME = (6_000, 2_000)   # segments a day: all US carriers, T-Mobile's share
# A standard brand's T-Mobile daily cap by trust score (lowest score of the band, cap).
T_MOBILE_BY_SCORE = ((76, 200_000), (51, 40_000), (1, 10_000))


class Limits(BaseModel):
    """What the approved tier allows a day, and each number's share (its ``daily_segment_limit``)."""

    daily_segments: int
    t_mobile_daily_segments: int
    per_number: int


def limits(brand_type: BrandType, brand_score: int | None, numbers: int) -> Limits:
    """Low-volume standard: under 6,000 segments a day (2,000 to T-Mobile). Standard: T-Mobile's cap for the
    brand's trust score (10,000 / 40,000 / 200,000), the one documented per score, counted for all carriers.
    Split evenly across the registration's numbers."""
    if brand_type == "low_volume_standard":
        daily, t_mobile = LOW_VOLUME
    else:
        t_mobile = next((cap for low, cap in T_MOBILE_BY_SCORE if (brand_score or 0) >= low), T_MOBILE_BY_SCORE[-1][1])
        daily = t_mobile
    return Limits(daily_segments=daily, t_mobile_daily_segments=t_mobile, per_number=max(daily // max(numbers, 1), 1))


class DraftRequest(BaseModel):
    phone_numbers: list[E164] = Field(min_length=1)
    brand_name: str = Field(min_length=1)
    website: str | None = None
    opt_in: str | None = Field(default=None, description="where and how users agree to receive texts")
    use_case: UseCase = "CUSTOMER_CARE"
    campaign: Campaign | None = Field(default=None, description="check this campaign instead of drafting one")


class DraftAnswer(BaseModel):
    campaign: Campaign
    findings: list[Finding]
    agents: list[str]


class RegistrationRequest(BaseModel):
    phone_numbers: list[E164] = Field(min_length=1)
    brand_type: BrandType
    business: Business
    contact: Contact
    opt_in: str | None = None
    use_case: UseCase = "CUSTOMER_CARE"
    campaign: Campaign | None = Field(default=None, description="None: the draft from the numbers' agents")
    mock: bool = Field(default=False, description="Twilio's mock brand: no fees, never reviewed")


class Registration(BaseModel):
    registration_id: str
    status: Literal["pending", "approved", "failed"] = "pending"
    stage: Literal["brand", "campaign", "done"] = "brand"
    brand_type: BrandType
    brand_name: str
    phone_numbers: list[str]
    number_sids: list[str]
    account_sid: str
    customer_profile_sid: str
    a2p_bundle_sid: str
    brand_sid: str
    brand_status: str | None = None
    brand_score: int | None = None
    messaging_service_sid: str | None = None
    campaign_sid: str | None = None
    campaign_status: str | None = None
    campaign: Campaign
    failure_reasons: list[str] = Field(default_factory=list)
    limits: Limits | None = None
    fees_usd: dict[str, int]
    created_timestamp: int
    updated_timestamp: int


def _reasons(*sources: Any) -> list[str]:
    found: list[str] = []
    for source in sources:
        for item in source if isinstance(source, list) else [source]:
            text = item.get("description") or item.get("message") or str(item) if isinstance(item, dict) else item
            if text and str(text) not in found:
                found.append(str(text))
    return found


class Registrations:
    def __init__(self, numbers: TwilioNumbers, rt: Runtime) -> None:
        self._numbers = numbers
        self._rt = rt

    async def _context(self, phone_numbers: list[str], brand_name: str, website: str | None,
                       opt_in: str | None) -> tuple[Context, list[Agent], list[PhoneNumber]]:
        found: list[PhoneNumber] = []
        for e164 in phone_numbers:
            number = await self._rt.catalog.get_number(e164)
            if number is None:
                raise InvalidRequest(f"phone_numbers: {e164} is not a Parley number (import it first)")
            found.append(number)
        agents: dict[str, Agent] = {}
        for number in found:
            for ref in [*number.inbound_sms_agents, *number.outbound_sms_agents]:
                agents.setdefault(ref.agent_id, await self._rt.catalog.resolve(ref.agent_id, ref.agent_version))
        outbound = any(n.outbound_sms_agents for n in found)
        context = Context(brand_name=brand_name, website=website, opt_in=opt_in, outbound=outbound)
        return context, list(agents.values()), found

    async def draft(self, wanted: DraftRequest) -> DraftAnswer:
        answer, _ = await self._drafted(wanted)
        return answer

    async def _drafted(self, wanted: DraftRequest) -> tuple[DraftAnswer, list[PhoneNumber]]:
        context, agents, numbers = await self._context(wanted.phone_numbers, wanted.brand_name, wanted.website,
                                                       wanted.opt_in)
        campaign = wanted.campaign or draft(context, agents, [n.help_message or "" for n in numbers],
                                            use_case=wanted.use_case)
        return DraftAnswer(campaign=campaign, findings=check(campaign, context, agents),
                           agents=[a.config.agent_id for a in agents]), numbers

    async def create(self, wanted: RegistrationRequest) -> Registration:
        answer, numbers = await self._drafted(DraftRequest(
            phone_numbers=wanted.phone_numbers, brand_name=wanted.business.name, website=wanted.business.website,
            opt_in=wanted.opt_in, use_case=wanted.use_case, campaign=wanted.campaign))
        if answer.findings:
            raise InvalidRequest("campaign: fix before submitting: " + "; ".join(
                f"{f.field}: {f.problem} ({f.fix})" for f in answer.findings))
        accounts = {self._numbers.account(n.twilio_account_sid) for n in numbers}
        if len(accounts) != 1:
            raise InvalidRequest(f"phone_numbers: all must be in one Twilio account, not {sorted(accounts)}")
        account = accounts.pop()
        sids = [str((await self._numbers.find(account, n)).sid) for n in wanted.phone_numbers]
        client = self._numbers.client(account)
        profile = await a2p.customer_profile(client, wanted.business, wanted.contact, wanted.contact.email)
        bundle = await a2p.a2p_bundle(client, wanted.business, profile, wanted.contact.email)
        brand = await a2p.brand(client, profile, bundle, wanted.brand_type, mock=wanted.mock)
        now = now_ms()
        registration = Registration(
            registration_id=new_id("a2p_"), brand_type=wanted.brand_type, brand_name=wanted.business.name,
            phone_numbers=list(wanted.phone_numbers), number_sids=sids, account_sid=account,
            customer_profile_sid=profile, a2p_bundle_sid=bundle, brand_sid=brand, brand_status="PENDING",
            campaign=answer.campaign, fees_usd=FEES_USD[wanted.brand_type], created_timestamp=now,
            updated_timestamp=now)
        await self._save(registration, changed=False)
        return registration

    async def get(self, registration_id: str) -> Registration:
        raw = await self._rt.redis.get(keys.a2p(registration_id))
        if raw is None:
            raise NotFound(f"A2P registration {registration_id!r} not found")
        return Registration.model_validate_json(raw)

    async def all(self) -> list[Registration]:
        ids = sorted(str(i) for i in await self._rt.redis.smembers(keys.A2PS))
        raws = [await self._rt.redis.get(keys.a2p(i)) for i in ids]   # one partition each: no MGET on a cluster
        return sorted((Registration.model_validate_json(r) for r in raws if r), key=lambda r: r.created_timestamp)

    async def _save(self, registration: Registration, *, changed: bool) -> None:
        registration.updated_timestamp = now_ms()
        url = self._rt.settings.webhook_url
        await self._rt.redis.sadd(keys.A2PS, registration.registration_id)   # {catalog}: its own write
        async with self._rt.redis.pipeline(transaction=True) as pipe:   # one partition: the record and its events
            pipe.set(keys.a2p(registration.registration_id), registration.model_dump_json())
            if changed and url:
                body = orjson.dumps({"event": EVENT, "registration": registration.model_dump(mode="json")}).decode()
                queue(pipe, Event(event_id=new_id("evt_"), chat_id=registration.registration_id, kind=EVENT, url=url,
                                  body=body), self._rt.settings.chat_ttl_s)
            await pipe.execute()

    async def tick(self) -> int:
        """Read every pending registration from Twilio once; how many changed."""
        changed = 0
        for registration in await self.all():
            if registration.status != "pending":
                continue
            lock = keys.a2p_lock(registration.registration_id)
            token = secrets.token_hex(8)
            if not await self._rt.redis.set(lock, token, nx=True, px=LOCK_MS):
                continue   # another process reads it now
            try:
                changed += await self._advance(registration)
            except TwilioRefused as exc:
                log.warning("A2P registration not read; will try again", extra={
                    "registration": registration.registration_id, "error": str(exc)})
            finally:
                if await self._rt.redis.get(lock) == token:
                    await self._rt.redis.delete(lock)
        return changed

    async def _advance(self, registration: Registration) -> int:
        before = (registration.status, registration.stage, registration.brand_status, registration.campaign_status)
        client = self._numbers.client(registration.account_sid)
        if registration.stage == "brand":
            brand = await a2p.fetch_brand(client, registration.brand_sid)
            registration.brand_status, registration.brand_score = brand.status, brand.brand_score
            if brand.status in FAILED_BRAND:
                self._fail(registration, _reasons(brand.failure_reason, brand.errors or []))
            elif brand.status == "APPROVED":
                await self._submit_campaign(registration, client)
        elif registration.stage == "campaign":
            assert registration.messaging_service_sid and registration.campaign_sid
            found = await a2p.fetch_campaign(client, registration.messaging_service_sid, registration.campaign_sid)
            registration.campaign_status = found.campaign_status
            if found.campaign_status == "VERIFIED":
                await self._approve(registration)
            elif found.campaign_status == "FAILED":
                self._fail(registration, _reasons(found.errors or []) or ["Twilio gave no reason"])
        after = (registration.status, registration.stage, registration.brand_status, registration.campaign_status)
        if after == before:
            return 0
        await self._save(registration, changed=(before[0], before[1]) != (after[0], after[1]))
        log.info("A2P registration changed", extra={"registration": registration.registration_id,
                                                   "status": registration.status, "stage": registration.stage})
        return 1

    async def _submit_campaign(self, registration: Registration, client: Any) -> None:
        if registration.messaging_service_sid is None:
            registration.messaging_service_sid = await self._service(registration, client)
            await self._save(registration, changed=False)   # not created twice if the campaign fails below
        try:
            registration.campaign_sid = await a2p.campaign(client, registration.messaging_service_sid,
                                                           registration.brand_sid, registration.campaign)
        except TwilioRefused as exc:
            if exc.http_status != 422:
                raise
            self._fail(registration, [str(exc)])
            return
        registration.stage, registration.campaign_status = "campaign", "IN_PROGRESS"

    async def _service(self, registration: Registration, client: Any) -> str:
        """The Messaging Service the numbers already sit in (import found it), else a new one with them."""
        raws = await self._rt.redis.mget([keys.number_twilio(n) for n in registration.phone_numbers])
        kept = [Previous.model_validate_json(raw).service_sid for raw in raws if raw]
        if kept and kept[0] is not None:
            return kept[0]
        return await a2p.messaging_service(client, f"{registration.brand_name} (Parley)",
                                           self._numbers.webhook_url(), registration.number_sids)

    @staticmethod
    def _fail(registration: Registration, reasons: list[str]) -> None:
        registration.status, registration.stage = "failed", "done"
        registration.failure_reasons = reasons

    async def _approve(self, registration: Registration) -> None:
        registration.status, registration.stage = "approved", "done"
        registration.limits = limits(registration.brand_type, registration.brand_score,
                                     len(registration.phone_numbers))
        for e164 in registration.phone_numbers:
            number = await self._rt.catalog.get_number(e164)
            if number is not None:
                await self._rt.catalog.put_number(number.model_copy(
                    update={"daily_segment_limit": registration.limits.per_number}))


REGISTRATIONS = web.AppKey("a2p_registrations", Registrations)
