"""Round trips shared by concurrent callers, for the hottest commands: a webhook's enqueue, a turn's reads, its send
gate and its commit; see ``pipelined``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError


@dataclass(frozen=True, slots=True)
class _Call:
    commands: Sequence[Sequence[Any]]
    replies: asyncio.Future[list[Any]]


# Per client, the calls made in this turn of the event loop: they go to Redis together, from one ``_exchange`` task,
# whose first step runs once this turn's callbacks have all run.
_queued: WeakKeyDictionary[aioredis.Redis, list[_Call]] = WeakKeyDictionary()
_exchanges: set[asyncio.Task[None]] = set()    # running exchanges (the loop keeps only weak references to tasks)


async def pipelined(client: aioredis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send ``commands`` (each a command and its arguments, all on keys of one hash slot; none that blocks) and
    return their raw replies, in order (``None`` for a nil; a hash as a dict). An error reply is raised (the
    caller's first) once every reply has been read.

    The calls made by concurrent tasks in one turn of the event loop share one round trip on one connection: a
    turn's reads, gate and commit are Parley's hottest Redis calls, hundreds of turns run at once under load, and
    a round trip costs the client several times what packing and parsing a command does (the write and read
    system calls, a connection taken from the pool and given back, a task woken up). Each caller gets its own
    replies and errors; one cancelled gives up its replies, not the others' (they are read all the same), and a
    connection lost fails every call of its round trip, as it would have failed each; an exchange cancelled before
    it sent anything (a process shutting down) cancels its calls. A lone call costs a few microseconds more than
    it did on its own. On Redis Cluster, redis-py's pipeline (it routes by slot), one per call."""
    if isinstance(client, RedisCluster):
        async with client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies = await pipe.execute()
        return [_hash_as_dict(command, reply) for command, reply in zip(commands, replies, strict=True)]
    loop = asyncio.get_running_loop()
    call = _Call(commands, loop.create_future())
    queued = _queued.get(client)
    if queued is None:
        queued = _queued[client] = []
        exchange = loop.create_task(_exchange(client, queued), name="parley-redis-exchange")
        _exchanges.add(exchange)
        exchange.add_done_callback(functools.partial(_ended, client, queued))
    queued.append(call)
    replies = await call.replies
    error = next((reply for reply in replies if isinstance(reply, ResponseError)), None)
    if error is not None:
        raise error
    return replies


async def evalsha(client: aioredis.Redis, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run a registered script (``client.register_script``) through ``pipelined``: its reply, or its error. A
    server that does not know the script (restarted, or its scripts flushed) is given it, as redis-py's
    ``Script`` does. On Redis Cluster, the ``Script`` itself."""
    if isinstance(client, RedisCluster):
        return await script(keys=keys, args=args)
    command = ("EVALSHA", script.sha, len(keys), *keys, *args)
    try:
        return (await pipelined(client, [command]))[0]
    except NoScriptError:
        await client.script_load(script.script)
        return (await pipelined(client, [command]))[0]


async def _exchange(client: aioredis.Redis, calls: list[_Call]) -> None:
    """One round trip for ``calls``, the calls queued on ``client`` in this turn of the event loop: their commands in
    one write, then every reply, each handed to its caller."""
    del _queued[client]   # calls made from now on go in the next round trip
    pool = client.connection_pool
    try:
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        # A send or read that fails or is cancelled closes the connection (redis-py does): none goes back half-read.
        try:
            packed: list[bytes] = []
            sent: list[_Call] = []
            for call in calls:
                try:   # an argument Redis cannot take fails its own call only
                    packed += connection.pack_commands(call.commands)
                    sent.append(call)
                except Exception as exc:
                    _fail(call, exc)
            if packed:
                await connection.send_packed_command(packed)
            for call in sent:
                replies = []
                for command in call.commands:
                    try:
                        replies.append(_hash_as_dict(command, await connection.read_response()))
                    except ResponseError as exc:
                        replies.append(exc)
                if not call.replies.done():   # its caller may have been cancelled meanwhile
                    call.replies.set_result(replies)
        finally:
            await pool.release(connection)
    except BaseException as exc:
        for call in calls:
            _fail(call, exc)
        if not isinstance(exc, Exception):
            raise


def _ended(client: aioredis.Redis, calls: list[_Call], exchange: asyncio.Task[None]) -> None:
    """An exchange is over. One cancelled before its first step never took its calls: they are cancelled, and the
    next call starts a new exchange."""
    _exchanges.discard(exchange)
    if _queued.get(client) is calls:
        del _queued[client]
        for call in calls:
            _fail(call, asyncio.CancelledError())


def _fail(call: _Call, exc: BaseException) -> None:
    if call.replies.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        call.replies.cancel()
    else:
        call.replies.set_exception(exc)


def _hash_as_dict(command: Sequence[Any], reply: Any) -> Any:
    """An ``HGETALL`` reply as a dict over RESP2 too (RESP3, redis-py's default, sends a map)."""
    if isinstance(reply, list) and str(command[0]).upper() == "HGETALL":
        return dict(zip(reply[::2], reply[1::2], strict=True))
    return reply
