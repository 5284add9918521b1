"""Settings: the one reader of the environment.

Every variable Parley reads is a field here (the README lists them). Units are in the names. Secrets are
``SecretStr`` and never logged. Pass a ``Settings`` into ``create_app``; nothing reads ``os.environ``
anywhere else.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.errors import ConfigError

TWILIO_SID_PATTERN = r"^AC[0-9a-fA-F]{32}$"   # a Twilio account SID
TWILIO_API_BASE_URL = "https://api.twilio.com"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# What an API key may do (``service/api/auth.py`` says which routes each role reaches): admin ⊃ write ⊃ read.
# The webhook key signs what Parley sends (events, chat_inbound requests) and calls no route.
Role = Literal["admin", "write", "read", "webhook"]
ROLES: tuple[Role, ...] = ("admin", "write", "read", "webhook")
Scope = Literal["read", "write", "admin"]   # what a route needs (``service/api/openapi.py: Route.scope``)


class ScopedKey(BaseModel):
    """One API key and its role."""

    model_config = ConfigDict(frozen=True)

    key: SecretStr
    role: Role


PASSWORD_HASH_RE = re.compile(r"scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+")


class ConsoleUser(BaseModel):
    """A named operator of the console: a role (as an API key's) and an scrypt hash of the password, as
    ``parley console-user NAME`` prints it (``service/console/users.py``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["admin", "write", "read"]
    password: SecretStr

    @field_validator("password")
    @classmethod
    def _hashed(cls, value: SecretStr) -> SecretStr:
        if not PASSWORD_HASH_RE.fullmatch(value.get_secret_value()):
            raise ValueError("expected a password hash, scrypt$N$r$p$salt$hash, as `parley console-user NAME` prints "
                             "it (never the password itself)")
        return value


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's members in order, duplicates kept (so a key given twice is an error, not the last one)."""


def _key_roles(text: str) -> list[dict[str, Any]]:
    """``PARLEY_API_KEYS``' JSON object, checked; errors number the keys and never show them."""
    if not text.strip():
        return []
    try:
        data = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as exc:
        raise ValueError(f'not valid JSON ({exc.msg}, character {exc.pos}): write {{"<key>": "<role>", ...}}, '
                         f"roles {', '.join(ROLES)}") from None
    if not isinstance(data, _Pairs):
        raise ValueError(f'expected a JSON object {{"<key>": "<role>", ...}}, got {type(data).__name__}')
    seen: set[str] = set()
    for n, (key, role) in enumerate(data, 1):
        if role not in ROLES:
            raise ValueError(f"key #{n} has the role {role!r}; a role is one of {', '.join(ROLES)}")
        if not key or any(c.isspace() for c in key):
            raise ValueError(f"key #{n} is empty or contains whitespace")
        if key in seen:
            raise ValueError(f"key #{n} is given twice (a key has one role)")
        seen.add(key)
    if sum(role == "webhook" for _, role in data) > 1:
        raise ValueError('more than one key has the role "webhook"; exactly one key signs what Parley sends')
    return [{"key": key, "role": role} for key, role in data]


_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")   # dot-separated DNS labels


def _allow_entry(entry: str) -> str:
    """One ``PARLEY_OUTBOUND_ALLOW`` entry, normalised: a network (``10.0.0.0/8``, ``::1/128``) or a host name."""
    text = entry.strip().lower().removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        pass
    name = text.rstrip(".")
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(f"{entry!r} is neither a network (CIDR, like 10.1.0.0/16 or 127.0.0.1) nor a host name "
                         "(like hooks.internal)")
    return name


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Parley's configuration, read from the environment (or passed in by tests)."""

    # hide_input_in_errors: a validation error must not print the raw values (API keys, tokens) it was given.
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False, populate_by_name=True,
                                      hide_input_in_errors=True)

    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL", "redis_url"))
    # REDIS_URL names one node of a Redis Cluster (the client finds the others).
    redis_cluster: bool = Field(default=False, validation_alias=_env("PARLEY_REDIS_CLUSTER", "redis_cluster"))
    data_dir: Path = Field(default=Path("./var"), validation_alias=_env("PARLEY_DATA_DIR", "data_dir"))
    host: str = Field(default="127.0.0.1", validation_alias=_env("PARLEY_HOST", "host"))
    port: int = Field(default=8080, ge=0, le=65535, validation_alias=_env("PARLEY_PORT", "port"))
    # The HTTP server's bounds (``service/cli/serving.py``). A request's body must arrive within body_timeout_s
    # of its head (408 otherwise): a slow client is not blamed on Redis, and holds no handler for long.
    body_timeout_s: float = Field(
        default=10.0, gt=0, le=600, validation_alias=_env("PARLEY_BODY_TIMEOUT_S", "body_timeout_s")
    )
    # An idle connection is closed after keepalive_timeout_s, and a client must send each request's head within
    # it (aiohttp counts both on one timer). Behind a proxy that reuses connections, set it above the proxy's
    # own idle timeout, so the proxy never sends on a connection Parley is closing.
    keepalive_timeout_s: float = Field(
        default=15.0, gt=0, le=3_600, validation_alias=_env("PARLEY_KEEPALIVE_TIMEOUT_S", "keepalive_timeout_s")
    )
    # Connections open at once, per process; a new one beyond this is closed at once. Each holds a file
    # descriptor, and Redis, Twilio and the LLM need theirs.
    max_connections: int = Field(
        default=1_000, ge=1, le=1_000_000, validation_alias=_env("PARLEY_MAX_CONNECTIONS", "max_connections")
    )
    # Connections the kernel queues before Parley accepts them (listen(2)'s backlog).
    listen_backlog: int = Field(
        default=128, ge=1, le=65_535, validation_alias=_env("PARLEY_LISTEN_BACKLOG", "listen_backlog")
    )
    public_url: str | None = Field(default=None, validation_alias=_env("PARLEY_PUBLIC_URL", "public_url"))
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias=_env("PARLEY_API_KEY", "api_keys")
    )
    # Keys with roles, as a JSON object: PARLEY_API_KEYS='{"<key>": "admin|write|read|webhook", ...}'. They add
    # to PARLEY_API_KEY's (admin) keys: see ``api_key_roles`` and ``webhook_key``.
    scoped_api_keys: Annotated[list[ScopedKey], NoDecode] = Field(
        default_factory=list, validation_alias=_env("PARLEY_API_KEYS", "scoped_api_keys")
    )
    # When set, GET /metrics needs ``Authorization: Bearer <token>``.
    metrics_token: SecretStr | None = Field(
        default=None, validation_alias=_env("PARLEY_METRICS_TOKEN", "metrics_token")
    )
    # How long the Redis-side gauges of /metrics (queue depth, lag and age, active chats) are reused.
    metrics_cache_ms: int = Field(
        default=5_000, ge=0, le=300_000, validation_alias=_env("PARLEY_METRICS_CACHE_MS", "metrics_cache_ms")
    )
    # Named operators of the console, as JSON: {"<name>": {"role": "read|write|admin", "password": "scrypt$..."}}
    # (``parley console-user NAME`` prints an entry). API keys sign in too.
    console_users: dict[str, ConsoleUser] = Field(
        default_factory=dict, validation_alias=_env("PARLEY_CONSOLE_USERS", "console_users")
    )
    # How long a sign-in to the operator console (/console) lasts, from the sign-in.
    console_session_ttl_s: int = Field(
        default=8 * 3600, ge=60, le=30 * 86_400,
        validation_alias=_env("PARLEY_CONSOLE_SESSION_TTL_S", "console_session_ttl_s"),
    )
    agents_dir: Path = Field(default=Path("./agents"), validation_alias=_env("PARLEY_AGENTS_DIR", "agents_dir"))
    webhook_url: str | None = Field(default=None, validation_alias=_env("PARLEY_WEBHOOK_URL", "webhook_url"))
    # What the outbound policy (``service.outbound``) lets Parley call on a user's behalf although it would refuse
    # it (loopback, private, link-local...): comma-separated CIDRs (10.1.0.0/16, 127.0.0.1) and host names
    # (hooks.internal: allowed whatever it resolves to).
    outbound_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("PARLEY_OUTBOUND_ALLOW", "outbound_allow")
    )
    workers: int = Field(default=1024, ge=1, le=100_000, validation_alias=_env("PARLEY_WORKERS", "workers"))
    # Redis connections a process opens as it starts (``storage/connection.py: open_redis``), so the first burst
    # of webhooks does not wait on connection handshakes; the pool grows beyond them as needed.
    redis_warm_connections: int = Field(default=32, ge=0, le=1024, validation_alias=_env(
        "PARLEY_REDIS_WARM_CONNECTIONS", "redis_warm_connections"))
    # Processes `parley serve` runs (``service/cli/supervisor.py``): 0, one worker per core it may use and the web one;
    # 1, one process with the web tier, the workers and the scheduler; from 2, a supervisor, one web process and
    # the others workers. ``serve --processes N`` overrides it.
    processes: int = Field(default=0, ge=0, le=1_024, validation_alias=_env("PARLEY_PROCESSES", "processes"))
    # The ``process`` field of every log line (unset: no field). `parley serve`'s supervisor names its children
    # with it (web, worker-1...).
    process_name: str | None = Field(
        default=None, min_length=1, validation_alias=_env("PARLEY_PROCESS_NAME", "process_name")
    )
    log_level: str = Field(default="INFO", validation_alias=_env("PARLEY_LOG_LEVEL", "log_level"))
    # The twilio library logs every request and response (URLs, headers) at INFO: quiet unless asked.
    twilio_log_level: str = Field(
        default="WARNING", validation_alias=_env("PARLEY_TWILIO_LOG_LEVEL", "twilio_log_level")
    )

    openai_api_key: SecretStr | None = Field(default=None, validation_alias=_env("OPENAI_API_KEY", "openai_api_key"))
    openai_base_url: str | None = Field(
        default=None, validation_alias=_env("OPENAI_BASE_URL", "openai_base_url")
    )
    llm_timeout_s: float = Field(default=30.0, gt=0, validation_alias=_env("PARLEY_LLM_TIMEOUT_S", "llm_timeout_s"))
    llm_max_retries: int = Field(
        default=2, ge=0, le=10, validation_alias=_env("PARLEY_LLM_MAX_RETRIES", "llm_max_retries")
    )

    # Retell's model names (``gpt-4.1``, ``claude-4.5-sonnet``, ``gemini-3.0-flash``...) as the LLM server at
    # OPENAI_BASE_URL knows them, as JSON: PARLEY_LLM_MODELS='{"claude-4.5-sonnet": "anthropic/claude-sonnet-4.5",
    # "*": "llama3.1"}'; "*" stands for every name not listed. A name found nowhere is sent as it is.
    llm_models: dict[str, str] = Field(
        default_factory=dict, validation_alias=_env("PARLEY_LLM_MODELS", "llm_models")
    )
    # Prices for chat_cost (an estimate, in cents), as JSON. PARLEY_SMS_SEGMENT_PRICES: cents per segment, by the
    # agent's number (E.164), else the user's country (ISO code), else "*": '{"+15035550100": 0.83, "US": 0.83,
    # "*": 5}'. PARLEY_LLM_TOKEN_PRICES: cents per million tokens, by model (Retell's name, or "*"):
    # '{"gpt-4.1": {"prompt": 200, "completion": 800}}'. What is not priced is left out of chat_cost.
    sms_segment_prices: dict[str, float] = Field(
        default_factory=dict, validation_alias=_env("PARLEY_SMS_SEGMENT_PRICES", "sms_segment_prices")
    )
    llm_token_prices: dict[str, dict[str, float]] = Field(
        default_factory=dict, validation_alias=_env("PARLEY_LLM_TOKEN_PRICES", "llm_token_prices")
    )
    llm_breaker_failures: int = Field(
        default=5, ge=1, validation_alias=_env("PARLEY_LLM_BREAKER_FAILURES", "llm_breaker_failures")
    )
    llm_breaker_cooldown_s: float = Field(
        default=30.0, gt=0, validation_alias=_env("PARLEY_LLM_BREAKER_COOLDOWN_S", "llm_breaker_cooldown_s")
    )

    # Knowledge bases (``service.knowledge``). Embeddings come from any OpenAI-compatible /v1/embeddings endpoint:
    # the chat LLM's (OPENAI_BASE_URL, OPENAI_API_KEY) unless these name another. The model's name is stored with
    # each knowledge base's vectors: changing it (or the dimensions) re-embeds them.
    embedding_model: str = Field(
        default="text-embedding-3-small", min_length=1,
        validation_alias=_env("PARLEY_EMBEDDING_MODEL", "embedding_model"))
    embedding_base_url: str | None = Field(
        default=None, validation_alias=_env("PARLEY_EMBEDDING_BASE_URL", "embedding_base_url"))
    embedding_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("PARLEY_EMBEDDING_API_KEY", "embedding_api_key"))
    # Asked of models that can shorten their vectors (text-embedding-3-*); unset: the model's own size.
    embedding_dimensions: int | None = Field(
        default=None, ge=16, le=4_096, validation_alias=_env("PARLEY_EMBEDDING_DIMENSIONS", "embedding_dimensions"))
    embedding_batch: int = Field(
        default=64, ge=1, le=2_048, validation_alias=_env("PARLEY_EMBEDDING_BATCH", "embedding_batch"))
    embedding_timeout_s: float = Field(
        default=30.0, gt=0, le=600, validation_alias=_env("PARLEY_EMBEDDING_TIMEOUT_S", "embedding_timeout_s"))
    # A turn's question: how long its embedding may take (not retried); past it the turn searches by keywords alone.
    embedding_query_timeout_s: float = Field(
        default=5.0, gt=0, le=60,
        validation_alias=_env("PARLEY_EMBEDDING_QUERY_TIMEOUT_S", "embedding_query_timeout_s"))
    # One create or add-sources request's body (its files together): 413 beyond.
    knowledge_max_upload_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1_024, le=1024 * 1024 * 1024,
        validation_alias=_env("PARLEY_KNOWLEDGE_MAX_UPLOAD_BYTES", "knowledge_max_upload_bytes"))
    # A knowledge base's URL source: at most this many bytes, within this time (all redirects included).
    knowledge_url_max_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1_024, validation_alias=_env("PARLEY_KNOWLEDGE_URL_MAX_BYTES",
                                                                  "knowledge_url_max_bytes"))
    knowledge_url_timeout_s: float = Field(
        default=20.0, gt=0, le=300, validation_alias=_env("PARLEY_KNOWLEDGE_URL_TIMEOUT_S", "knowledge_url_timeout_s"))
    # How long a process holds a knowledge base it ingests before another may take it over (it renews the hold
    # every third of this while it works): how soon a crashed process's ingestion resumes elsewhere.
    knowledge_lease_ms: int = Field(
        default=60_000, ge=500, le=3_600_000, validation_alias=_env("PARLEY_KNOWLEDGE_LEASE_MS", "knowledge_lease_ms"))
    # The knowledge section of a turn's prompt (service.agent.retrieval): chunks that would pass it are left out.
    knowledge_prompt_max_chars: int = Field(
        default=8_000, ge=500, le=100_000,
        validation_alias=_env("PARLEY_KNOWLEDGE_PROMPT_MAX_CHARS", "knowledge_prompt_max_chars"))
    # Chunks one knowledge base may hold: the searchers keep every chunk's vector in memory (README: Knowledge bases).
    knowledge_max_chunks: int = Field(
        default=50_000, ge=1, validation_alias=_env("PARLEY_KNOWLEDGE_MAX_CHUNKS", "knowledge_max_chunks"))

    twilio_account_sid: str | None = Field(
        default=None, pattern=TWILIO_SID_PATTERN, validation_alias=_env("TWILIO_ACCOUNT_SID", "twilio_account_sid")
    )
    twilio_auth_token: SecretStr | None = Field(
        default=None, validation_alias=_env("TWILIO_AUTH_TOKEN", "twilio_auth_token")
    )
    # Further accounts (bring-your-own numbers from several accounts or subaccounts), as JSON:
    # PARLEY_TWILIO_ACCOUNTS='{"AC...": "auth token", ...}'. Tokens stay in the environment.
    twilio_accounts: dict[str, SecretStr] = Field(
        default_factory=dict, validation_alias=_env("PARLEY_TWILIO_ACCOUNTS", "twilio_accounts")
    )
    twilio_api_base_url: str = Field(
        default=TWILIO_API_BASE_URL, validation_alias=_env("TWILIO_API_BASE_URL", "twilio_api_base_url")
    )
    twilio_timeout_s: float = Field(
        default=10.0, gt=0, validation_alias=_env("PARLEY_TWILIO_TIMEOUT_S", "twilio_timeout_s")
    )
    # Create-message requests in flight at once per Twilio account, per process (N processes: N times this).
    # Twilio answers 429 (20429) above the account's REST concurrency; 100 is the figure usually quoted for it.
    twilio_max_concurrency: int = Field(
        default=100, ge=1, le=10_000, validation_alias=_env("PARLEY_TWILIO_MAX_CONCURRENCY", "twilio_max_concurrency")
    )
    # A send Twilio refused for now (429, 5xx, refused connection) waits in the conversation's outgoing queue and
    # is tried again, first after about this long, doubling (or after Twilio's Retry-After), for at most
    # send_retry_for_s after it was written; then it fails for good.
    send_retry_base_ms: int = Field(
        default=1_000, ge=10, le=60_000, validation_alias=_env("PARLEY_SEND_RETRY_BASE_MS", "send_retry_base_ms")
    )
    send_retry_for_s: int = Field(
        default=600, ge=1, le=43_200, validation_alias=_env("PARLEY_SEND_RETRY_FOR_S", "send_retry_for_s")
    )

    # Conversation machinery. Defaults suit production; tests shorten them.
    history_window: int = Field(
        default=40, ge=2, le=500, validation_alias=_env("PARLEY_HISTORY_WINDOW", "history_window")
    )
    chat_ttl_s: int = Field(
        default=30 * 86_400, ge=3_600, validation_alias=_env("PARLEY_CHAT_TTL_S", "chat_ttl_s")
    )
    lock_ttl_ms: int = Field(default=30_000, ge=1_000, validation_alias=_env("PARLEY_LOCK_TTL_MS", "lock_ttl_ms"))
    reclaim_idle_ms: int = Field(
        default=60_000, ge=1_000, validation_alias=_env("PARLEY_RECLAIM_IDLE_MS", "reclaim_idle_ms")
    )
    drain_timeout_s: float = Field(
        default=25.0, ge=0, validation_alias=_env("PARLEY_DRAIN_TIMEOUT_S", "drain_timeout_s")
    )
    # `parley serve`'s supervisor kills (then restarts) a child whose event loop has not run for this long: a call
    # that never returns, a loop that never yields (``service/cli/supervisor.py``). 0: never. At least 2 s otherwise
    # (a child says it is alive every half second).
    hang_timeout_s: float = Field(
        default=60.0, ge=0, le=86_400, validation_alias=_env("PARLEY_HANG_TIMEOUT_S", "hang_timeout_s")
    )
    event_max_attempts: int = Field(
        default=8, ge=1, le=50, validation_alias=_env("PARLEY_EVENT_MAX_ATTEMPTS", "event_max_attempts")
    )
    event_retry_base_ms: int = Field(
        default=2_000, ge=10, validation_alias=_env("PARLEY_EVENT_RETRY_BASE_MS", "event_retry_base_ms")
    )
    inbound_webhook_attempts: int = Field(
        default=4, ge=1, le=10, validation_alias=_env("PARLEY_INBOUND_WEBHOOK_ATTEMPTS", "inbound_webhook_attempts")
    )
    catalog_cache_ms: int = Field(
        default=1_000, ge=0, le=60_000, validation_alias=_env("PARLEY_CATALOG_CACHE_MS", "catalog_cache_ms")
    )
    scheduler_interval_ms: int = Field(
        default=1_000, ge=10, validation_alias=_env("PARLEY_SCHEDULER_INTERVAL_MS", "scheduler_interval_ms")
    )
    # How often pending A2P 10DLC registrations are read from Twilio (brand and campaign reviews take days).
    a2p_poll_s: float = Field(
        default=300.0, ge=0.01, le=86_400, validation_alias=_env("PARLEY_A2P_POLL_S", "a2p_poll_s")
    )

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> Settings:
        if self.redis_cluster and not self.redis_url:
            raise ValueError("PARLEY_REDIS_CLUSTER=true needs REDIS_URL (a node of the cluster); the embedded "
                             "server is a single node")
        return self

    @field_validator("hang_timeout_s")
    @classmethod
    def _hang_timeout(cls, value: float) -> float:
        if 0 < value < 2:
            raise ValueError("must be 0 (never) or at least 2 seconds: a child says it is alive every half second")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("outbound_allow", mode="before")
    @classmethod
    def _split_allow(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("outbound_allow")
    @classmethod
    def _check_allow(cls, value: list[str]) -> list[str]:
        return [_allow_entry(entry) for entry in value]

    @field_validator("scoped_api_keys", mode="before")
    @classmethod
    def _parse_scoped_keys(cls, value: object) -> object:
        if isinstance(value, dict):   # from code: {"key": "role"}
            value = json.dumps(value)
        if isinstance(value, str):
            return _key_roles(value)
        return value

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("twilio_log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level: one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @model_validator(mode="after")
    def _one_role_per_key(self) -> Settings:
        admin = {key.get_secret_value() for key in self.api_keys}
        for n, scoped in enumerate(self.scoped_api_keys, 1):
            if scoped.role != "admin" and scoped.key.get_secret_value() in admin:
                raise ValueError(f"key #{n} of PARLEY_API_KEYS (role {scoped.role!r}) is also in PARLEY_API_KEY, "
                                 "whose keys are admin keys: a key has one role, remove it from one of them")
        if self.scoped_api_keys and self.webhook_key() is None:
            raise ValueError('PARLEY_API_KEYS has no key with the role "webhook": add one (it signs events and '
                             "chat_inbound requests; your receivers verify with it), or set PARLEY_API_KEY, "
                             "whose first key then signs")
        return self

    def api_key_roles(self) -> list[ScopedKey]:
        """Every API key with its role: ``PARLEY_API_KEY``'s keys are admin keys (as they always were), then
        ``PARLEY_API_KEYS``' keys with theirs."""
        keys = [ScopedKey(key=key, role="admin") for key in self.api_keys]
        given = {key.key.get_secret_value() for key in keys}
        return keys + [key for key in self.scoped_api_keys if key.key.get_secret_value() not in given]

    def webhook_key(self) -> SecretStr | None:
        """The key that signs what Parley sends: ``PARLEY_API_KEYS``' key with the role ``webhook``, else
        ``PARLEY_API_KEY``'s first key (so receivers that verify with it keep working), else none."""
        scoped = next((key.key for key in self.scoped_api_keys if key.role == "webhook"), None)
        if scoped is not None:
            return scoped
        return self.api_keys[0] if self.api_keys else None

    def key_roles(self, *, split: bool) -> tuple[dict[str, Role], str]:
        """Each API key's role, and the key that signs what Parley sends (``Settings.webhook_key``).

        With no key configured, a whole ``parley serve`` makes up one admin key for this run, which also signs
        (``create_app`` prints it). A ``split`` process (``parley worker``, ``parley serve --web-only``) refuses:
        its made-up key would be one that the other processes neither accept nor sign with, and receivers could
        verify nothing it signs.
        """
        keys = {scoped.key.get_secret_value(): scoped.role for scoped in self.api_key_roles()}
        signing = self.webhook_key()
        if signing is not None:
            return keys, signing.get_secret_value()
        if split:
            raise ConfigError(
                "parley worker and parley serve --web-only need API keys: set PARLEY_API_KEY (or PARLEY_API_KEYS, "
                "with a key whose role is webhook) to the same value in every process. A key made up by one process "
                "would sign events and chat_inbound requests that no receiver can verify")
        made_up = "key_" + secrets.token_hex(24)
        return {made_up: "admin"}, made_up

    @field_validator("sms_segment_prices", "llm_token_prices")
    @classmethod
    def _check_prices(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, price in value.items():
            prices = price if isinstance(price, dict) else {"price": price}
            if isinstance(price, dict) and not set(price) <= {"prompt", "completion"}:
                raise ValueError(f"{name}: give prompt and completion prices (cents per million tokens)")
            if any(p < 0 for p in prices.values()):
                raise ValueError(f"{name}: a price cannot be negative")
        return value

    @field_validator("twilio_accounts")
    @classmethod
    def _check_account_sids(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for sid in value:
            if not re.fullmatch(TWILIO_SID_PATTERN, sid):
                raise ValueError(f"{sid!r} is not a Twilio account SID (AC followed by 32 hex digits)")
        return value

    def twilio_tokens(self) -> dict[str, SecretStr]:
        """Auth token of every Twilio account Parley knows, by account SID."""
        tokens = dict(self.twilio_accounts)
        if self.twilio_account_sid and self.twilio_auth_token is not None:
            tokens.setdefault(self.twilio_account_sid, self.twilio_auth_token)
        return tokens
