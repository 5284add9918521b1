"""The channel seam: what the conversation engine needs from a channel, and nothing more.

A channel (``service.channels``: SMS, WhatsApp) says how a text reaches a user: the provider's address of
a number, how an agent's reply becomes messages, whether messages are measured in segments, and whether a
business may start a conversation at any time or only within a session window after the user last wrote.
A ``Gateway`` sends one message through the provider (``channels.twilio.gateway``). The engine only sees
these two protocols; ``create_app`` registers the channels and the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from service.sms.segments import Measure


@dataclass(frozen=True, slots=True)
class Sent:
    """A message the provider accepted: its id (Twilio's SID) and its first status."""

    sid: str
    status: str


class Gateway(Protocol):
    async def send(self, *, account_sid: str, from_: str, to: str, body: str, status_callback: str | None) -> Sent:
        """Create one message; ``SendError`` (``RecipientUnsubscribed`` for 21610) when it is refused."""
        ...


class Channel(Protocol):
    @property
    def name(self) -> str:
        """As in ``Conversation.channel`` and the numbers' ``channels`` list."""
        ...

    @property
    def session_window_s(self) -> int | None:
        """A business may write first only this long after the user's last message (None: at any time)."""
        ...

    @property
    def counts_segments(self) -> bool:
        """Its messages count against the number's daily segment limit (A2P 10DLC)."""
        ...

    def address(self, number: str) -> str:
        """The provider's address of an E.164 number (Twilio: ``+1...`` for SMS, ``whatsapp:+1...``)."""
        ...

    def parts(self, text: str, *, exact: bool, max_segments: int) -> list[str]:
        """The messages that carry ``text``: an agent's reply is cleaned and split; an ``exact`` text goes as it
        is (bounded by the channel's message size)."""
        ...

    def instructions(self, max_segments: int) -> str:
        """What the agent's prompt says about writing for this channel, within ``max_segments``."""
        ...

    def measure(self, part: str) -> Measure | None:
        """Encoding and segments of one message; None on channels without segments."""
        ...
