"""One round trip of several commands on one hash slot, for the hottest reads (a turn's), without redis-py's
``Pipeline`` class; see ``pipelined``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError


async def pipelined(client: aioredis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send ``commands`` (each a command and its arguments, all on keys of one hash slot) in one round trip and
    return their raw replies, in order (``None`` for a nil; a hash as a dict). Like ``pipeline(transaction=False)``,
    for about half its CPU: redis-py's pipeline spends more on itself than on the round trip (a task per
    connection release, its observability and HIMPORT bookkeeping, per-command callbacks), and a turn's reads are
    its hottest Redis call. An error reply is raised (the first one) once every reply has been read. On Redis
    Cluster, redis-py's pipeline (it routes by slot)."""
    if isinstance(client, RedisCluster):
        async with client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies = await pipe.execute()
        return [_hash_as_dict(command, reply) for command, reply in zip(commands, replies, strict=True)]
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:   # a send or read that fails or is cancelled closes the connection (redis-py does): none goes back half-read
        await connection.send_packed_command(connection.pack_commands(commands))
        replies = []
        error: ResponseError | None = None
        for command in commands:
            try:
                replies.append(_hash_as_dict(command, await connection.read_response()))
            except ResponseError as exc:
                error = error or exc
                replies.append(exc)
    finally:
        await pool.release(connection)
    if error is not None:
        raise error
    return replies


def _hash_as_dict(command: Sequence[Any], reply: Any) -> Any:
    """An ``HGETALL`` reply as a dict over RESP2 too (RESP3, redis-py's default, sends a map)."""
    if isinstance(reply, list) and str(command[0]).upper() == "HGETALL":
        return dict(zip(reply[::2], reply[1::2], strict=True))
    return reply
