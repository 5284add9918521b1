"""The number's ``chat_inbound`` webhook: before an inbound text starts a new chat, the business decides.

Parley POSTs ``{"event": "chat_inbound", "chat_inbound": {chat_id, agent_id, agent_version, from_number,
to_number, message, message_sid}}`` (``chat_id`` is the id the chat will have, as Retell's SDK now sends it;
``message`` and ``message_sid`` are Parley's additions; off SMS, ``channel`` names the channel too,
``"whatsapp"``), signed with ``X-Retell-Signature`` like every event. The 2xx JSON answer's ``chat_inbound``
may ``reject`` the text, or set ``override_agent_id`` / ``override_agent_version``, ``dynamic_variables``,
``metadata`` and ``agent_override`` (``{agent: {...}, retell_llm: {...}}``: fields laid over the agent and its
LLM for this chat only, ``conversations.dialog.with_override``) for the chat. It fires once per new chat, not
per message. Each attempt waits 10 s; a timeout, a connection error or a non-2xx is tried again
(``PARLEY_INBOUND_WEBHOOK_ATTEMPTS`` attempts in all, 0.5 s, 1 s, 2 s apart); when every attempt fails, or
the answer is not the JSON expected, the number's bound agent answers and the chat records why in
``inbound_webhook_error`` (never the answer's own bytes: its readers need not see what a URL answered). The
request goes through the outbound policy (``service.outbound.fetch``); a URL it refuses is not tried again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import OutboundRefused
from service.outbound import Fetched, fetch
from service.retell.models import AgentVersion
from service.webhooks.events import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
BACKOFF_S = 0.5
MAX_ANSWER_BYTES = 64 * 1024


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reject: bool = False
    override_agent_id: str | None = None
    override_agent_version: AgentVersion | None = None
    dynamic_variables: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    agent_override: dict[str, Any] | None = None


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    chat_inbound: _Answer = Field(default_factory=_Answer)


@dataclass
class Decision:
    """What the webhook said (or, with ``error``, why the number's own agent answers instead)."""

    reject: bool = False
    agent_id: str | None = None
    agent_version: AgentVersion | None = None
    dynamic_variables: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    agent_override: dict[str, Any] | None = None
    error: str | None = None


async def ask(
    http: aiohttp.ClientSession, url: str, *, signing_key: str, payload: dict[str, Any], attempts: int,
    timeout_s: float = TIMEOUT_S,
) -> Decision:
    """Call the webhook; a ``Decision`` always comes back."""
    body = orjson.dumps({"event": "chat_inbound", "chat_inbound": payload})
    error = ""
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, signing_key)}
        try:
            answer = await fetch(http, "POST", url, data=body, headers=headers, timeout_s=timeout_s,
                                 max_bytes=MAX_ANSWER_BYTES)
        except OutboundRefused as exc:
            # Final: the policy will not change its mind on a retry.
            log.warning("chat_inbound webhook refused; the number's agent answers", extra={"error": str(exc)})
            return Decision(error=f"chat_inbound webhook not called: {exc}")
        except TimeoutError:
            error = f"no answer within {timeout_s:g} s"
            continue
        except aiohttp.ClientError as exc:
            error = f"{exc.__class__.__name__}: {exc}"
            continue
        if not 200 <= answer.status < 300:
            error = f"HTTP {answer.status}"
            continue
        return _decision(answer)
    log.warning("chat_inbound webhook failed; the number's agent answers", extra={"error": error})
    return Decision(error=f"chat_inbound webhook failed after {attempts} attempts: {error}")


def _decision(answer: Fetched) -> Decision:
    # What the webhook answered never goes into the error: the chat's readers need not see its bytes.
    if answer.truncated:
        return Decision(error=f"chat_inbound webhook answered with more than {MAX_ANSWER_BYTES} bytes")
    raw = answer.body
    if not raw.strip():
        return Decision()
    try:
        answer_data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Decision(error=f"chat_inbound webhook answered with something that is not JSON "
                              f"({answer.content_type or 'no content type'}, {len(raw)} bytes)")
    try:
        decided = _Envelope.model_validate(answer_data).chat_inbound
    except ValidationError as exc:   # the fields and what was expected, without the values given
        problems = [f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}"
                    for e in exc.errors(include_url=False, include_context=False, include_input=False)]
        return Decision(error="chat_inbound webhook answer: " + "; ".join(problems))
    return Decision(reject=decided.reject, agent_id=decided.override_agent_id,
                    agent_version=decided.override_agent_version, dynamic_variables=decided.dynamic_variables,
                    metadata=decided.metadata, agent_override=decided.agent_override)
