"""Parley's exceptions, one tree. Outside errors are translated at the adapter that meets them.

::

    ParleyError
    ├── ConfigError            an agent or number file, or a setting, is invalid (names file, field, expectation)
    ├── MalformedRequest       a request body is not the JSON object expected (HTTP 400)
    ├── RequestTimeout         the client did not send its body within PARLEY_BODY_TIMEOUT_S (HTTP 408)
    ├── NotFound               an id the caller named does not exist (HTTP 404)
    ├── Conflict               the object is read-only or in the wrong state (HTTP 409)
    ├── InUse                  the object to delete is still named by others (HTTP 400, as Retell answers it)
    ├── InvalidRequest         a request body failed validation (HTTP 422)
    ├── TooLarge               a request body is larger than its route takes (HTTP 413)
    ├── OptedOut               the user has opted out of this number; nothing may be sent
    ├── LimitReached           the number's daily segment limit would be passed (HTTP 429)
    ├── SendError              Twilio refused or failed a send (its error JSON, a timeout, aiohttp errors)
    │   ├── RecipientUnsubscribed   Twilio error 21610: record the opt-out
    │   └── SendDeferred     Twilio created nothing and may take it later (429, 5xx, refused connection)
    ├── TwilioRefused          Twilio refused or failed a request that sets up numbers or A2P registrations (from
    │                          TwilioException / aiohttp errors; HTTP 404, 422 or 502, with Twilio's error code)
    ├── LLMError               the LLM call failed after its retries (agent/completions.py: CompletionError)
    ├── OutboundRefused        the outbound policy refused a URL a user's request would reach (service.outbound)
    ├── EmbeddingError         the embeddings endpoint failed after the client's retries (from openai.APIError)
    ├── SourceError            a knowledge-base source could not be fetched or read (a URL's status, size or type,
    │                          a file no parser reads): recorded on the source, never raised to a client
    ├── McpUnavailable         an MCP server failed, timed out or could not be reached (from the mcp SDK's and
    │                          httpx2's errors; HTTP 502 on /get-mcp-tools)
    └── StoreUnavailable       Redis/Valkey cannot be reached (from redis.ConnectionError/TimeoutError)
"""

from __future__ import annotations


class ParleyError(Exception):
    """Base of every error Parley raises on purpose."""


class ConfigError(ParleyError):
    """Configuration (agent files, number files, settings) is invalid."""


class MalformedRequest(ParleyError):
    """A request body could not be parsed at all."""


class RequestTimeout(ParleyError):
    """The client did not send its request body in time: the client is slow, nothing in Parley failed."""


class NotFound(ParleyError):
    """The named object does not exist."""


class Conflict(ParleyError):
    """The object is read-only, or its state does not allow the operation."""


class InUse(ParleyError):
    """The object cannot be deleted while others name it (a conversation flow an agent answers with)."""


class InvalidRequest(ParleyError):
    """A request is well-formed but its values are not acceptable."""


class TooLarge(ParleyError):
    """A request body is larger than the route takes."""


class OptedOut(ParleyError):
    """The recipient opted out of messages from this number."""


class LimitReached(ParleyError):
    """Sending would pass the number's daily segment limit."""


class SendError(ParleyError):
    """A message could not be sent through Twilio."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class RecipientUnsubscribed(SendError):
    """Twilio error 21610: the recipient replied STOP to this number."""


class SendDeferred(SendError):
    """Twilio created nothing and the same request may succeed later: HTTP 429 (too many concurrent requests),
    a 5xx, or a connection that was refused before the request left. ``retry_after_s``: Twilio's
    ``Retry-After``, when it sent one. (A timeout is a plain ``SendError``: the message may exist.)"""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after_s = retry_after_s


class TwilioRefused(ParleyError):
    """Twilio refused (or failed) a request that sets up a number or an A2P registration. ``code``: Twilio's error
    code when it gave one; ``http_status``: what Parley answers (404: Twilio has no such resource, 502: Twilio
    failed or did not answer, else 422)."""

    def __init__(self, message: str, *, code: int | None = None, http_status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


class LLMError(ParleyError):
    """The LLM did not answer usefully, after the client's own retries."""


class OutboundRefused(ParleyError):
    """The outbound policy refused a request made on a user's behalf: the message says what, why, and which
    setting (``PARLEY_OUTBOUND_ALLOW``) would allow it."""


class StoreUnavailable(ParleyError):
    """Redis/Valkey is unreachable."""


class McpUnavailable(ParleyError):
    """An MCP server could not be reached, timed out, or answered with an error (``service.agent.mcp``)."""


class EmbeddingError(ParleyError):
    """The embeddings endpoint did not answer usefully, after the client's own retries (``knowledge.embeddings``)."""


class SourceError(ParleyError):
    """A knowledge-base source could not be fetched or read; the message says why, for the source's
    ``error_message``."""
