"""Settings: the one reader of the environment.

Every variable Parley reads is a field here (the README lists them). Units are in the names. Secrets are
``SecretStr`` and never logged. Pass a ``Settings`` into ``create_app``; nothing reads ``os.environ``
anywhere else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TWILIO_SID_PATTERN = r"^AC[0-9a-fA-F]{32}$"   # a Twilio account SID
TWILIO_API_BASE_URL = "https://api.twilio.com"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Parley's configuration, read from the environment (or passed in by tests)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False, populate_by_name=True)

    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL", "redis_url"))
    # REDIS_URL names one node of a Redis Cluster (the client finds the others).
    redis_cluster: bool = Field(default=False, validation_alias=_env("PARLEY_REDIS_CLUSTER", "redis_cluster"))
    data_dir: Path = Field(default=Path("./var"), validation_alias=_env("PARLEY_DATA_DIR", "data_dir"))
    host: str = Field(default="127.0.0.1", validation_alias=_env("PARLEY_HOST", "host"))
    port: int = Field(default=8080, ge=0, le=65535, validation_alias=_env("PARLEY_PORT", "port"))
    public_url: str | None = Field(default=None, validation_alias=_env("PARLEY_PUBLIC_URL", "public_url"))
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias=_env("PARLEY_API_KEY", "api_keys")
    )
    agents_dir: Path = Field(default=Path("./agents"), validation_alias=_env("PARLEY_AGENTS_DIR", "agents_dir"))
    webhook_url: str | None = Field(default=None, validation_alias=_env("PARLEY_WEBHOOK_URL", "webhook_url"))
    workers: int = Field(default=512, ge=1, le=100_000, validation_alias=_env("PARLEY_WORKERS", "workers"))
    log_level: str = Field(default="INFO", validation_alias=_env("PARLEY_LOG_LEVEL", "log_level"))

    openai_api_key: SecretStr | None = Field(default=None, validation_alias=_env("OPENAI_API_KEY", "openai_api_key"))
    openai_base_url: str | None = Field(
        default=None, validation_alias=_env("OPENAI_BASE_URL", "openai_base_url")
    )
    llm_timeout_s: float = Field(default=30.0, gt=0, validation_alias=_env("PARLEY_LLM_TIMEOUT_S", "llm_timeout_s"))
    llm_max_retries: int = Field(
        default=2, ge=0, le=10, validation_alias=_env("PARLEY_LLM_MAX_RETRIES", "llm_max_retries")
    )

    llm_breaker_failures: int = Field(
        default=5, ge=1, validation_alias=_env("PARLEY_LLM_BREAKER_FAILURES", "llm_breaker_failures")
    )
    llm_breaker_cooldown_s: float = Field(
        default=30.0, gt=0, validation_alias=_env("PARLEY_LLM_BREAKER_COOLDOWN_S", "llm_breaker_cooldown_s")
    )

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

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> Settings:
        if self.redis_cluster and not self.redis_url:
            raise ValueError("PARLEY_REDIS_CLUSTER=true needs REDIS_URL (a node of the cluster); the embedded "
                             "server is a single node")
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
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
