"""Every Redis key Parley uses: its type, its bound, and the one function that builds it.

All keys start with ``parley:``. Parley's data is split into ``SHARDS`` partitions; every key of a
partition carries the hash tag ``{<n>}`` (``parley:{7}:...``), so a partition lives in one hash slot and
each script or MULTI touches one slot: Redis Cluster serves it unchanged. A conversation (an agent number
and a user number on a channel; its id ``<id>`` is ``A:U`` on SMS, ``<channel>:A:U`` otherwise, see
``service.address``) belongs to partition ``crc32(<id>) % SHARDS``; a chat to ``crc32(<chat id>) %
SHARDS``, and a conversation's chat id is drawn so that it lands in its conversation's partition
(``new_chat_id``).
Each partition has its own wake-up stream, timer set, outbox queue, analysis queue, chat index and
opt-out list; workers and schedulers go through all of them. Agents, LLMs and numbers share the tag
``{catalog}``; a knowledge base's keys share ``{kb:<id>}`` (its multi-key writes are one MULTI in one slot), and
the list of knowledge bases and their work queue share ``{knowledge}``. ``SHARDS`` is fixed: changing it would
strand the data already written.

==============================================  ======  =======================================================
key (``{S}``: the partition)                    type    bound
==============================================  ======  =======================================================
{S}:conv:<id>:mailbox                            LIST    inbound items not yet answered; at most MAILBOX_CAP, TTL
                                                        MAILBOX_TTL_S, refreshed on every push
{S}:conv:<id>:lock                               STRING  the turn lock's owner token; PX lock_ttl_ms, renewed
                                                        while a worker runs the turn
{S}:conv:<id>:seen:<MessageSid>                  STRING  dedupe marker; TTL SEEN_TTL_S (24 h)
{S}:conv:<id>:chat                               STRING  id of the pair's ongoing chat; TTL chat_ttl_s
{S}:conv:<id>:rejected                           LIST    texts the chat_inbound webhook rejected; at most
                                                        REJECTED_CAP, TTL chat_ttl_s
{S}:conv:<id>:session                            STRING  when the user last wrote (ms), on a channel with a session
                                                        window (WhatsApp: 24 h); TTL the window
{S}:conv:<id>:optout                             STRING  ms timestamp of the user's opt-out; no TTL on purpose:
                                                        a compliance record, one small key per opted-out user
{S}:conv:<id>:outgoing                           LIST    messages waiting to be sent, in order (Twilio refused them
                                                        for now, or an earlier one waits); at most OUTGOING_CAP
                                                        plus one reply's parts, TTL OUTGOING_TTL_S refreshed on
                                                        every push (see conversations/outgoing.py)
{S}:conv:<id>:deferred                           STRING  a send was deferred and its turn's commit has not queued
                                                        it yet: later messages wait behind it; TTL DEFERRED_TTL_S,
                                                        deleted by that commit
{S}:chat:C                                      HASH    the chat's fields (status, agent, numbers...); TTL
                                                        chat_ttl_s, refreshed on activity (see chats/store.py)
{S}:chat:C:messages                             LIST    the chat's messages (JSON); at most CHAT_MESSAGES_CAP,
                                                        TTL chat_ttl_s
{S}:chat:C:delivery                             HASH    Twilio SID -> latest delivery status JSON of the chat's
                                                        sent messages, and message id -> the SID and status a
                                                        retried send got (or why it failed for good); one field
                                                        per message, TTL chat_ttl_s
{S}:chat:C:lock                                 STRING  an API chat's completion lock; PX lock_ttl_ms
{S}:outbox:C                                    LIST    chat C's lifecycle events not yet delivered, in order;
                                                        TTL chat_ttl_s
{S}:wakeups                                     STREAM  one entry per conversation wake-up; MAXLEN ~
                                                        WAKEUPS_MAXLEN, consumer group WORKER_GROUP
{S}:timers                                      ZSET    chat id -> silence deadline (ms); one member per ongoing
                                                        chat
{S}:outbox:due                                  ZSET    chat id -> when its next delivery is due (ms); one
                                                        member per chat with events waiting
{S}:outbox:failed                               LIST    events that failed for good, with their last error; at
                                                        most 1,000 per partition (the newest)
{S}:analysis:due                                ZSET    chat id -> when its post-chat analysis is due (ms)
{S}:chats                                       ZSET    chat id -> start timestamp, for listing; members older
                                                        than chat_ttl_s are trimmed whenever a chat is created
{S}:chats:agent:<agent id>                      ZSET    chat id -> start timestamp, the agent's chats (a listing's
                                                        agent filter); trimmed like {S}:chats when one of them is
                                                        created, TTL chat_ttl_s refreshed then
{S}:chats:type:<chat type>                      ZSET    chat id -> start timestamp, chats of that type
                                                        (api_chat, sms_chat); trimmed and TTL as the agent's
{S}:chats:ongoing                               ZSET    chat id -> start timestamp, one member per ongoing chat
                                                        (removed by the commit that ends it); trimmed and TTL
                                                        as the agent's
{S}:chats:direction:<inbound|outbound>           ZSET    chat id -> start timestamp, SMS chats of that direction;
                                                        trimmed and TTL as the agent's
{S}:chats:user:<address>                        ZSET    chat id -> start timestamp, the chats with that user
                                                        (E.164, or whatsapp:+E.164); trimmed and TTL as the
                                                        agent's (one key per user with chats in the partition)
{S}:chats:number:<address>                      ZSET    chat id -> start timestamp, the chats on that agent
                                                        number; trimmed and TTL as the agent's
{S}:chats:reason:<disconnection reason>         ZSET    chat id -> start timestamp, ended chats by why they ended
                                                        (added by the commit that ends the chat); trimmed on each
                                                        add, TTL chat_ttl_s refreshed then
{S}:chats:ended:<YYYY-MM-DD>                    ZSET    chat id -> start timestamp, the chats that ended that
                                                        UTC day (added by the commit that ends the chat; a
                                                        listing's end_timestamp filter reads the days it spans);
                                                        trimmed and TTL as the reasons'
{S}:chats:successful:<true|false>               ZSET    chat id -> start timestamp, analysed chats by their
                                                        chat_successful (written with the analysis, which first
                                                        removes the chat from the other values' keys); TTL
                                                        chat_ttl_s refreshed then
{S}:chats:sentiment:<Positive|...>              ZSET    chat id -> start timestamp, analysed chats by their
                                                        user_sentiment; as chat_successful's
{S}:chats:indexed:2                             STRING  the start time of the first chat created into the
                                                        indexes above by this release (set NX), or 0 once older
                                                        chats were indexed (chats/query.py); TTL chat_ttl_s,
                                                        refreshed on every chat created. (The release before the
                                                        direction, number, reason, end-day and analysis indexes
                                                        wrote {S}:chats:indexed: left to expire)
{S}:optouts                                     ZSET    "<agent address> <user address>" -> opt-out time (ms); one
                                                        member per opted-out pair (no TTL on purpose)
{S}:a2p:<id>                                    STRING  an A2P 10DLC registration (brand, campaign, status), JSON,
                                                        in the partition of its id (its events' outbox is there
                                                        too); no TTL: a record, one per registration
{S}:a2p:<id>:lock                               STRING  a process reading the registration from Twilio (its
                                                        token); PX 120 s
{S}:outgoing:due                                ZSET    conversation id -> when its waiting messages are next tried
                                                        (ms); one member per conversation with messages waiting
{catalog}:agent:<id>                            HASH    version number -> agent JSON; one field per version
{catalog}:agents                                SET     ids of known agents
{catalog}:llm:<id>                              HASH    version number -> Retell LLM JSON; one field per version
{catalog}:llms                                  SET     ids of known Retell LLMs
{catalog}:flow:<id>                             HASH    version number -> conversation flow JSON; one field per version
{catalog}:flows                                 SET     ids of known conversation flows
{catalog}:component:<id>                        STRING  shared conversation-flow component JSON
{catalog}:components                            SET     ids of known shared components
{catalog}:number:<E.164>                        STRING  phone number JSON
{catalog}:numbers                               SET     known phone numbers
{catalog}:number:<E.164>:twilio                 STRING  what the number's Twilio webhook (and its Messaging
                                                        Service's) were before Parley set them, JSON; deleted when
                                                        they are put back (channels/twilio/numbers.py)
{catalog}:a2ps                                  SET     ids of the A2P 10DLC registrations; pending ones are
                                                        polled (one member per registration, no TTL: a record)
{catalog}:lock                                  STRING  a catalog change in progress (its token), PX 10 s
{kb:K}:kb                                       HASH    knowledge base K: ``record`` (its JSON: name, chunk sizes,
                                                        auto refresh, times), ``version`` (bumped by every change of
                                                        its chunks: the searchers' caches compare it), ``model``
                                                        (the embedding model its vectors are from); one per KB
{kb:K}:sources                                  HASH    source id -> the source's JSON (type, title/filename/url,
                                                        state, error, chunk count); one field per source
{kb:K}:raw:<source id>                          STRING  an uploaded file or text not ingested yet; deleted once
                                                        ingested, bounded by the upload cap (knowledge_max_upload_bytes)
{kb:K}:chunks                                   HASH    "<source id>:<n>" -> the chunk's JSON (title, text, term
                                                        counts); one field per chunk, removed with its source
{kb:K}:vectors                                  HASH    "<source id>:<n>" -> its embedding, float32, normalised;
                                                        one field per chunk
{kb:K}:vectors:next                             HASH    a re-embedding in progress (a new model): renamed over
                                                        {kb:K}:vectors when complete
{knowledge}:kbs                                 SET     ids of the knowledge bases
{knowledge}:due                                 ZSET    knowledge base id -> when it next needs ingestion work (ms):
                                                        pending sources, a re-embedding, a daily URL refresh; leased
                                                        while a process works on it (storage.dueset)
segments:<E.164>:<YYYY-MM-DD>                   STRING  segments the processes took for the number on that
                                                        US-Pacific day, in blocks (sms/limits.py); TTL 2 days
idempotency:<key>                               STRING  a send-sms result for its Idempotency-Key; TTL 24 h
pace:<E.164>                                    STRING  when the paced number's next message may go (ms); TTL until
                                                        then + 1 s (sms/pacing.py)
console:session:<id>                            STRING  a console sign-in (its role and CSRF token, JSON); TTL
                                                        console_session_ttl_s, from sign-in (service/console)
stats:<YYYY-MM-DD>                              HASH    the console overview's counters for that UTC day, field
                                                        <hour>:<name>[:<number>] -> count; TTL STATS_TTL_S (35
                                                        days) from its first write (chats/stats.py)
console:live (a pub/sub channel, not a key)     -       the chat id of each committed turn, for the console's live
                                                        views (PUBLISHed by the commit script while they are open)
console:watched                                 STRING  set while a process has console live views open; TTL 30 s,
                                                        renewed every 10 s (storage/watchers.py)
==============================================  ======  =======================================================
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from service.address import SHARDS as SHARDS  # re-exported: the partitions are part of the key schema
from service.address import Conversation as Conversation  # re-exported: keys are built from it
from service.address import shard_of as shard_of

PREFIX = "parley:"
WORKER_GROUP = "workers"

MAILBOX_CAP = 200
MAILBOX_TTL_S = 86_400
SEEN_TTL_S = 86_400
CHAT_MESSAGES_CAP = 2_000
REJECTED_CAP = 100
WAKEUPS_MAXLEN = 100_000
IDEMPOTENCY_TTL_S = 86_400
OUTGOING_CAP = 100          # messages waiting for Twilio in one conversation before more fail at once
OUTGOING_TTL_S = 86_400     # a bound, not a policy: waiting messages fail after send_retry_for_s (<= 12 h)
STATS_TTL_S = 35 * 86_400   # the overview's days
DEFERRED_TTL_S = 300        # outlives a turn; a crashed turn's marker only makes the next messages queue


_PARTITIONS = tuple(f"{PREFIX}{{{shard}}}:" for shard in range(SHARDS))


def _in(shard: int) -> str:
    return _PARTITIONS[shard]


# Every chat id, API and SMS alike, as ``new_chat_id`` draws it. An id from outside that does not match names no
# chat, and must not reach a key: ``chat_x:messages`` would address another key of the schema.
CHAT_ID_RE = re.compile(r"chat_[0-9a-f]{32}")


def is_chat_id(value: str) -> bool:
    """True when ``value`` has the form of a chat id (whether or not that chat exists)."""
    return CHAT_ID_RE.fullmatch(value) is not None


def new_chat_id(shard: int | None = None) -> str:
    """A fresh chat id, in ``shard`` when given (an SMS chat lives in its conversation's partition)."""
    while True:
        chat_id = "chat_" + secrets.token_hex(16)
        if shard is None or shard_of(chat_id) == shard:
            return chat_id


def _conv(conv: Conversation) -> str:
    return f"{_in(conv.shard)}conv:{conv.id}"


def mailbox(conv: Conversation) -> str:
    return _conv(conv) + ":mailbox"


def lock(conv: Conversation) -> str:
    return _conv(conv) + ":lock"


def seen(conv: Conversation, message_sid: str) -> str:
    return _conv(conv) + ":seen:" + message_sid


def current_chat(conv: Conversation) -> str:
    return _conv(conv) + ":chat"


def rejected(conv: Conversation) -> str:
    return _conv(conv) + ":rejected"


def session(conv: Conversation) -> str:
    return _conv(conv) + ":session"


def optout(conv: Conversation) -> str:
    return _conv(conv) + ":optout"


def chat(chat_id: str) -> str:
    return f"{_in(shard_of(chat_id))}chat:{chat_id}"


def chat_messages(chat_id: str) -> str:
    return chat(chat_id) + ":messages"


def chat_lock(chat_id: str) -> str:
    return chat(chat_id) + ":lock"


def delivery(chat_id: str) -> str:
    return chat(chat_id) + ":delivery"


def outbox(chat_id: str) -> str:
    return f"{_in(shard_of(chat_id))}outbox:{chat_id}"


def wakeups(shard: int) -> str:
    return _in(shard) + "wakeups"


def timers(shard: int) -> str:
    return _in(shard) + "timers"


def outbox_due(shard: int) -> str:
    return _in(shard) + "outbox:due"


def outbox_failed(shard: int) -> str:
    return _in(shard) + "outbox:failed"


def analysis_due(shard: int) -> str:
    return _in(shard) + "analysis:due"


def chats(shard: int) -> str:
    return _in(shard) + "chats"


def chats_by_agent(shard: int, agent_id: str) -> str:
    return _in(shard) + "chats:agent:" + agent_id


def chats_by_type(shard: int, chat_type: str) -> str:
    return _in(shard) + "chats:type:" + chat_type


def chats_ongoing(shard: int) -> str:
    return _in(shard) + "chats:ongoing"


def chats_by_direction(shard: int, direction: str) -> str:
    return _in(shard) + "chats:direction:" + direction


def chats_by_user(shard: int, user: str) -> str:
    return _in(shard) + "chats:user:" + user


def chats_by_number(shard: int, number: str) -> str:
    return _in(shard) + "chats:number:" + number


def chats_by_reason(shard: int, reason: str) -> str:
    return _in(shard) + "chats:reason:" + reason


def chats_ended_on(shard: int, day: str) -> str:
    """``day``: the UTC date the chats ended, ``YYYY-MM-DD`` (``end_day``)."""
    return _in(shard) + "chats:ended:" + day


def chats_by_success(shard: int, successful: bool) -> str:
    return _in(shard) + "chats:successful:" + ("true" if successful else "false")


def chats_by_sentiment(shard: int, sentiment: str) -> str:
    return _in(shard) + "chats:sentiment:" + sentiment


def end_day(timestamp_ms: int) -> str:
    """The UTC date of ``timestamp_ms``: the end-day index a chat that ended then is in."""
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).date().isoformat()


def chats_indexed(shard: int) -> str:
    return _in(shard) + "chats:indexed:2"


def optouts(shard: int) -> str:
    return _in(shard) + "optouts"


def outgoing(conv: Conversation) -> str:
    return _conv(conv) + ":outgoing"


def deferred(conv: Conversation) -> str:
    return _conv(conv) + ":deferred"


def outgoing_due(shard: int) -> str:
    return _in(shard) + "outgoing:due"


CATALOG = PREFIX + "{catalog}:"
AGENTS = CATALOG + "agents"
LLMS = CATALOG + "llms"
FLOWS = CATALOG + "flows"
COMPONENTS = CATALOG + "components"
NUMBERS = CATALOG + "numbers"
CATALOG_LOCK = CATALOG + "lock"   # held by each API change of agents, LLMs and numbers (catalog.store._transaction)


def agent(agent_id: str) -> str:
    return CATALOG + "agent:" + agent_id


def llm(llm_id: str) -> str:
    return CATALOG + "llm:" + llm_id


def flow(conversation_flow_id: str) -> str:
    return CATALOG + "flow:" + conversation_flow_id


def component(component_id: str) -> str:
    return CATALOG + "component:" + component_id


def number(phone_number: str) -> str:
    return CATALOG + "number:" + phone_number


def number_twilio(phone_number: str) -> str:
    return CATALOG + "number:" + phone_number + ":twilio"


A2PS = CATALOG + "a2ps"


def a2p(registration_id: str) -> str:
    """In the partition of its id, beside the outbox its events are queued in (``outbox(registration_id)``)."""
    return _in(shard_of(registration_id)) + "a2p:" + registration_id


def a2p_lock(registration_id: str) -> str:
    return a2p(registration_id) + ":lock"


def segments(phone_number: str, day: str) -> str:
    return f"{PREFIX}segments:{phone_number}:{day}"


def idempotency(key: str) -> str:
    return f"{PREFIX}idempotency:{key}"


def pace(phone_number: str) -> str:
    return f"{PREFIX}pace:{phone_number}"


def console_session(session_id: str) -> str:
    return f"{PREFIX}console:session:{session_id}"


LIVE = PREFIX + "console:live"   # pub/sub channel: the chat id of every committed turn (service/console/live.py)
LIVE_WATCHED = PREFIX + "console:watched"   # set while some process has live views open (storage/watchers.py)


def stats(day: str) -> str:
    """``day``: a UTC date, ``YYYY-MM-DD``."""
    return f"{PREFIX}stats:{day}"


KNOWLEDGE = PREFIX + "{knowledge}:"
KNOWLEDGE_BASES = KNOWLEDGE + "kbs"
KNOWLEDGE_DUE = KNOWLEDGE + "due"


def _kb(kb_id: str) -> str:
    return f"{PREFIX}{{kb:{kb_id}}}:"


def kb(kb_id: str) -> str:
    return _kb(kb_id) + "kb"


def kb_sources(kb_id: str) -> str:
    return _kb(kb_id) + "sources"


def kb_raw(kb_id: str, source_id: str) -> str:
    return _kb(kb_id) + "raw:" + source_id


def kb_chunks(kb_id: str) -> str:
    return _kb(kb_id) + "chunks"


def kb_vectors(kb_id: str) -> str:
    return _kb(kb_id) + "vectors"


def kb_vectors_next(kb_id: str) -> str:
    return _kb(kb_id) + "vectors:next"
