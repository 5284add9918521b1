"""The dev phone: the console texts an agent from the browser, through the real inbound path, with no Twilio.

A dev conversation is a conversation like any other (mailbox, burst window, turn, tools, events) on the channel
``dev`` (``address.DEV``; addresses ``dev:+1555...``): the console's dev phone puts the text in the mailbox the
way the Twilio webhook does (``service/console/devphone.py``), and ``DevGateway`` takes the replies instead of
Twilio, which never sees them. Replies are cleaned, split and measured as SMS would be (so what the console
shows is what a phone would get), but count against no daily segment limit, and the console overview leaves
dev chats out (``chats.lifecycle.count``). Numbers need not list ``dev`` in their ``channels``: only a signed-in
operator reaches it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from service.address import DEV, address
from service.channels.sms import SmsChannel
from service.conversations.channel import Gateway, Sent
from service.sms import segments


@dataclass(frozen=True, slots=True)
class DevChannel:
    name: str = DEV
    session_window_s: int | None = None
    counts_segments: bool = False   # test texts use no number's daily segments

    def address(self, number: str) -> str:
        return address(self.name, number)

    def parts(self, text: str, *, exact: bool, max_segments: int) -> list[str]:
        return SmsChannel().parts(text, exact=exact, max_segments=max_segments)

    def instructions(self, max_segments: int) -> str:
        return SmsChannel().instructions(max_segments)   # the agent writes as it would to a phone

    def measure(self, part: str) -> segments.Measure:
        return segments.measure(part)


@dataclass(frozen=True, slots=True)
class DevGateway:
    """Sends to ``dev:`` addresses go nowhere (the chat keeps them, as delivered); the rest go to ``provider``."""

    provider: Gateway

    async def send(self, *, account_sid: str, from_: str, to: str, body: str, status_callback: str | None) -> Sent:
        if to.startswith(DEV + ":"):
            return Sent(sid="DV" + secrets.token_hex(16), status="delivered")
        return await self.provider.send(account_sid=account_sid, from_=from_, to=to, body=body,
                                        status_callback=status_callback)
