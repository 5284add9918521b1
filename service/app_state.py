"""Typed keys for the aiohttp application's state (set by ``create_app``'s cleanup contexts)."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from service.catalog.agent_files import Declared
from service.conversations.runtime import Runtime
from service.knowledge.folders import DeclaredKnowledge
from service.metrics import Metrics
from service.settings import Role, Scope, Settings

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", aioredis.Redis)
RUNTIME = web.AppKey("runtime", Runtime)
API_KEYS = web.AppKey("api_keys", dict[str, Role])                       # each API key's role
ROUTE_SCOPES = web.AppKey("route_scopes", dict[tuple[str, str], Scope])  # (method, path): what a key needs
SIGNING_KEY = web.AppKey("signing_key", str)   # the webhook key: signs what Parley sends (Runtime.signing_key)
READY = web.AppKey("ready", dict[str, bool])
METRICS = web.AppKey("metrics", Metrics)
FILES = web.AppKey("files", Declared)   # what agents/ declares: read-only through the API
KNOWLEDGE_FILES = web.AppKey("knowledge_files", DeclaredKnowledge)   # agents/knowledge/: published at start
