"""Everything a webhook, a turn or a background loop needs, built once per process by ``create_app``.

The channels and the provider's gateway come in from outside (``create_app`` registers them): the
conversation engine knows them only by their protocols (``conversations.channel``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis

from service.agent.analysis import Analyzer
from service.agent.llm import LLM
from service.agent.responder import Responder
from service.agent.retrieval import Retriever
from service.catalog.store import Catalog
from service.chats.delivery import Delivery
from service.chats.lifecycle import Lifecycle
from service.chats.store import Chats
from service.conversations.channel import Channel, Gateway
from service.conversations.outgoing import Outgoing
from service.conversations.queue import ConversationQueue
from service.conversations.sender import Sender
from service.knowledge.bases import KnowledgeBases
from service.knowledge.embeddings import Embedder
from service.knowledge.ingestion import Ingestion
from service.knowledge.search import Searcher
from service.knowledge.store import KnowledgeStore
from service.metrics import Metrics
from service.outbound import OutboundPolicy
from service.settings import Settings
from service.sms.limits import DailySegments
from service.sms.optouts import OptOuts
from service.sms.pacing import Pacing
from service.storage.watchers import Watchers
from service.webhooks.events import Outbox


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    redis: aioredis.Redis
    http: aiohttp.ClientSession    # built from ``outbound``: every request made for a user
    outbound: OutboundPolicy       # also checks static URLs when the API creates agents, LLMs and numbers
    llm: LLM
    signing_key: str           # the webhook key (Settings.webhook_key): signs what Parley sends (events, chat_inbound)
    metrics: Metrics
    catalog: Catalog
    queue: ConversationQueue
    channels: Mapping[str, Channel]
    chats: Chats
    lifecycle: Lifecycle
    outbox: Outbox
    analyzer: Analyzer
    optouts: OptOuts
    delivery: Delivery
    sender: Sender
    outgoing: Outgoing         # messages waiting for Twilio (conversations.outgoing)
    responder: Responder
    knowledge: KnowledgeBases      # the knowledge bases the API manages
    ingestion: Ingestion           # their background work (a loop of create_app's)
    searcher: Searcher             # retrieval for the turn, with this process's cached indexes
    watchers: Watchers             # whether the console's live views are open (what commits publish to)
    daily: DailySegments           # the numbers' daily segment counts, taken in blocks (given back at the end)

    @classmethod
    def build(
        cls, settings: Settings, redis: aioredis.Redis, *, gateway: Gateway, channels: Mapping[str, Channel], llm: LLM,
        http: aiohttp.ClientSession, outbound: OutboundPolicy, metrics: Metrics, signing_key: str,
        embedder: Embedder,
    ) -> Runtime:
        optouts = OptOuts(redis, metrics)
        catalog = Catalog(redis, cache_ms=settings.catalog_cache_ms)
        watchers = Watchers(redis)
        daily = DailySegments(redis)
        chats = Chats(redis, ttl_s=settings.chat_ttl_s, lock_ttl_ms=settings.lock_ttl_ms, watchers=watchers)
        queue = ConversationQueue(redis, lock_ttl_ms=settings.lock_ttl_ms)
        outgoing = Outgoing(redis, chat_ttl_s=settings.chat_ttl_s)
        lifecycle = Lifecycle(settings, chats, catalog, metrics.tally)
        kb_store = KnowledgeStore(redis)
        searcher = Searcher(kb_store, embedder, metrics)
        return cls(
            settings=settings,
            redis=redis,
            http=http,
            outbound=outbound,
            llm=llm,
            signing_key=signing_key,
            metrics=metrics,
            catalog=catalog,
            queue=queue,
            channels=channels,
            chats=chats,
            lifecycle=lifecycle,
            analyzer=Analyzer(chats, catalog, llm, lifecycle, redis),
            outbox=Outbox(redis, http, metrics, signing_key=signing_key, max_attempts=settings.event_max_attempts,
                          retry_base_ms=settings.event_retry_base_ms),
            optouts=optouts,
            delivery=Delivery(redis, ttl_s=settings.chat_ttl_s, watchers=watchers),
            sender=Sender(settings, gateway, channels, queue, optouts, daily, metrics, outgoing,
                          Pacing(redis)),
            outgoing=outgoing,
            responder=Responder(llm, http, channels, catalog, signing_key=signing_key,
                                retriever=Retriever(searcher, settings.knowledge_prompt_max_chars)),
            knowledge=KnowledgeBases(kb_store, outbound),
            ingestion=Ingestion(settings, kb_store, embedder, http, metrics),
            searcher=searcher,
            watchers=watchers,
            daily=daily,
        )
