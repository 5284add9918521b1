"""Everything a webhook, a turn or the scheduler needs, built once per process by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis

from .catalog import Store
from .chats import Chats
from .llm import LLM
from .locks import Locks
from .mailbox import Mailbox
from .optouts import OptOuts
from .responder import Responder
from .sender import Sender
from .settings import Settings
from .twilio_gateway import TwilioGateway


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    redis: aioredis.Redis
    catalog: Store
    mailbox: Mailbox
    chats: Chats
    optouts: OptOuts
    sender: Sender
    responder: Responder

    @classmethod
    def build(
        cls, settings: Settings, redis: aioredis.Redis, gateway: TwilioGateway, llm: LLM, http: aiohttp.ClientSession,
    ) -> Runtime:
        optouts = OptOuts(redis)
        return cls(
            settings=settings,
            redis=redis,
            catalog=Store(redis),
            mailbox=Mailbox(redis, Locks(redis, ttl_ms=settings.lock_ttl_ms)),
            chats=Chats(redis, ttl_s=settings.chat_ttl_s),
            optouts=optouts,
            sender=Sender(settings, gateway, optouts),
            responder=Responder(llm, http),
        )
