"""Every Redis key Parley uses: its type, its bound, and the one function that builds it.

All keys start with ``parley:``. Keys of one conversation (an agent number and a user number) share the
hash tag ``{<agent number>:<user number>}`` and keys of one chat share ``{<chat id>}``, so the scripts
that touch only one of them work on Redis Cluster too. (The turn commit also touches the global timer set,
so a cluster deployment is not supported yet; see the README.)

==========================================  ======  ===========================================================
key                                         type    bound
==========================================  ======  ===========================================================
conv:{A:U}:mailbox                          LIST    inbound items not yet answered; at most MAILBOX_CAP, TTL
                                                    MAILBOX_TTL_S, refreshed on every push
conv:{A:U}:lock                             STRING  the turn lock's owner token; PX lock_ttl_ms, renewed while
                                                    a worker runs the turn
conv:{A:U}:seen:<MessageSid>                STRING  dedupe marker; TTL SEEN_TTL_S (24 h)
conv:{A:U}:chat                             STRING  id of the pair's ongoing chat; TTL chat_ttl_s
conv:{A:U}:rejected                         LIST    texts the chat_inbound webhook rejected; at most
                                                    REJECTED_CAP, TTL chat_ttl_s
conv:{A:U}:optout                           STRING  ms timestamp of the user's opt-out; no TTL on purpose: a
                                                    compliance record, one small key per opted-out user
chat:{C}                                    HASH    the chat's fields (status, agent, numbers, variables...);
                                                    TTL chat_ttl_s, refreshed on activity
chat:{C}:messages                           LIST    the chat's messages (JSON); at most CHAT_MESSAGES_CAP,
                                                    TTL chat_ttl_s
chat:{C}:delivery                           HASH    Twilio SID -> latest delivery status JSON of the chat's sent
                                                    messages; TTL chat_ttl_s
sms:<MessageSid>                            STRING  the chat an outbound SMS belongs to; TTL chat_ttl_s
segments:<E.164>:<YYYY-MM-DD>               STRING  segments sent from the number on that US-Pacific day; TTL 2 days
optouts                                     ZSET    "<agent number> <user number>" -> opt-out time (ms); one member per
                                                    opted-out pair (the compliance list; no TTL on purpose)
idempotency:<key>                           STRING  a send-sms result for its Idempotency-Key; TTL 24 h
chat:{C}:lock                               STRING  an API chat's completion lock; PX lock_ttl_ms
chats                                       ZSET    chat id -> start timestamp, for listing; members older
                                                    than chat_ttl_s are trimmed whenever a chat is created
agent:<id>                                  HASH    version number -> agent JSON; one field per version
agents                                      SET     ids of known agents
llm:<id>                                    HASH    version number -> Retell LLM JSON; one field per version
llms                                        SET     ids of known Retell LLMs
number:<E.164>                              STRING  phone number JSON
numbers                                     SET     known phone numbers
wakeups                                     STREAM  one entry per conversation wake-up; MAXLEN ~ WAKEUPS_MAXLEN,
                                                    consumer group WORKER_GROUP
timers:inactivity                           ZSET    chat id -> deadline (ms); one member per ongoing chat
outbox:{C}                                  LIST    chat C's lifecycle events not yet delivered, in order; TTL
                                                    chat_ttl_s
outbox:due                                  ZSET    chat id -> when its next delivery is due (ms); one member per
                                                    chat with events waiting
outbox:failed                               LIST    events that failed for good, with their last error; at most
                                                    1,000 (the newest)
analysis:due                                ZSET    chat id -> when its post-chat analysis is due (ms)
==========================================  ======  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "parley:"
WORKER_GROUP = "workers"

MAILBOX_CAP = 200
MAILBOX_TTL_S = 86_400
SEEN_TTL_S = 86_400
CHAT_MESSAGES_CAP = 2_000
REJECTED_CAP = 100
WAKEUPS_MAXLEN = 100_000


@dataclass(frozen=True, slots=True)
class Conversation:
    """One agent number talking with one user number: the unit of ordering and locking."""

    agent_number: str
    user_number: str

    @property
    def tag(self) -> str:
        return "{" + self.agent_number + ":" + self.user_number + "}"

    @classmethod
    def parse(cls, tag: str) -> Conversation:
        """Inverse of ``tag`` (as stored in a wake-up entry)."""
        agent, _, user = tag.strip("{}").partition(":")
        return cls(agent, user)


def mailbox(conv: Conversation) -> str:
    return f"{PREFIX}conv:{conv.tag}:mailbox"


def lock(conv: Conversation) -> str:
    return f"{PREFIX}conv:{conv.tag}:lock"


def seen(conv: Conversation, message_sid: str) -> str:
    return f"{PREFIX}conv:{conv.tag}:seen:{message_sid}"


def current_chat(conv: Conversation) -> str:
    return f"{PREFIX}conv:{conv.tag}:chat"


def rejected(conv: Conversation) -> str:
    return f"{PREFIX}conv:{conv.tag}:rejected"


def optout(conv: Conversation) -> str:
    return f"{PREFIX}conv:{conv.tag}:optout"


def chat(chat_id: str) -> str:
    return f"{PREFIX}chat:{{{chat_id}}}"


def chat_messages(chat_id: str) -> str:
    return f"{PREFIX}chat:{{{chat_id}}}:messages"


def chat_lock(chat_id: str) -> str:
    return f"{PREFIX}chat:{{{chat_id}}}:lock"


CHATS = f"{PREFIX}chats"
OPTOUTS = f"{PREFIX}optouts"
IDEMPOTENCY_TTL_S = 86_400


def delivery(chat_id: str) -> str:
    return f"{PREFIX}chat:{{{chat_id}}}:delivery"


def sms(message_sid: str) -> str:
    return f"{PREFIX}sms:{message_sid}"


def segments(phone_number: str, day: str) -> str:
    return f"{PREFIX}segments:{phone_number}:{day}"


def idempotency(key: str) -> str:
    return f"{PREFIX}idempotency:{key}"


def agent(agent_id: str) -> str:
    return f"{PREFIX}agent:{agent_id}"


AGENTS = f"{PREFIX}agents"


def llm(llm_id: str) -> str:
    return f"{PREFIX}llm:{llm_id}"


LLMS = f"{PREFIX}llms"


def number(phone_number: str) -> str:
    return f"{PREFIX}number:{phone_number}"


NUMBERS = f"{PREFIX}numbers"
WAKEUPS = f"{PREFIX}wakeups"
INACTIVITY_TIMERS = f"{PREFIX}timers:inactivity"


def outbox(chat_id: str) -> str:
    return f"{PREFIX}outbox:{{{chat_id}}}"


OUTBOX_DUE = f"{PREFIX}outbox:due"
OUTBOX_FAILED = f"{PREFIX}outbox:failed"
ANALYSIS_DUE = f"{PREFIX}analysis:due"
