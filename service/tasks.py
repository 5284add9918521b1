"""Background loops that ``create_app`` owns: run one every so often, and stop one for good."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)


async def every(interval_s: float, tick: Callable[[], Awaitable[int]], name: str) -> None:
    """Run ``tick`` every ``interval_s`` until cancelled; right away again when it found work. Redis being
    unreachable is logged and waited out."""
    while True:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # redis-py can swallow a cancel on 3.11
            raise asyncio.CancelledError
        try:
            if await tick():
                continue
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("redis unavailable; retrying", extra={"loop": name, "error": str(exc)})
        await asyncio.sleep(interval_s)


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, re-cancelling: redis-py on Python 3.11 can swallow a cancel."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
