"""Who talks with whom, and over which channel: the ``Conversation``, the unit of ordering and locking.

A conversation is one of Parley's numbers (the agent's) and one user's number, on one channel (``sms``,
``whatsapp``: the names ``service.channels`` registers). Numbers are bare E.164 here. At the edges a number
on a channel other than SMS is written ``<channel>:<number>`` (``whatsapp:+14155550123``), which is how
Twilio addresses them too (``address``, ``split_address``). The same two numbers on two channels are two
conversations, with their own mailbox, lock, chat and opt-out.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

SMS = "sms"   # the channel a conversation is on unless it says otherwise (and the only one before channels)
DEV = "dev"   # the console's dev phone (``service.channels.dev``): test chats, kept out of metrics and caps
SHARDS = 16   # Parley's data is split into this many partitions (``storage.keys``); fixed once data exists


def shard_of(name: str) -> int:
    """The partition of a conversation id or a chat id."""
    return zlib.crc32(name.encode()) % SHARDS


def address(channel: str, number: str) -> str:
    """``number`` as written on ``channel``: bare on SMS, else ``<channel>:<number>``."""
    return number if channel == SMS else f"{channel}:{number}"


def split_address(value: str) -> tuple[str, str]:
    """Inverse of ``address``: (channel, number)."""
    channel, colon, number = value.rpartition(":")
    return (channel, number) if colon else (SMS, value)


@dataclass(frozen=True, slots=True)
class Conversation:
    """One agent number talking with one user number over one channel. ``id`` and ``shard`` are worked out once:
    every key of the conversation is built from them.

    ``id`` is ``<agent>:<user>`` on SMS (as before channels existed, so stored data keeps its keys), else
    ``<channel>:<agent>:<user>``. Numbers start with ``+``, so the two forms never collide. ``shard`` is its
    partition."""

    agent_number: str
    user_number: str
    channel: str = SMS
    id: str = field(init=False, repr=False, compare=False)
    shard: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        conv_id = address(self.channel, self.agent_number + ":" + self.user_number)
        object.__setattr__(self, "id", conv_id)
        object.__setattr__(self, "shard", shard_of(conv_id))

    @classmethod
    def parse(cls, conv_id: str) -> Conversation:
        """Inverse of ``id`` (as stored in a wake-up entry)."""
        channel = SMS
        if not conv_id.startswith("+"):
            channel, _, conv_id = conv_id.partition(":")
        agent, _, user = conv_id.partition(":")
        return cls(agent, user, channel)
