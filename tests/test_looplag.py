"""The webhook's guard: a lagging event loop shrinks the share of workers new conversations may use."""

from __future__ import annotations

import asyncio
import time

from service.looplag import LoopLag


def hog_the_loop(seconds: float) -> None:
    """What a burst of CPU-bound turns does to the event loop: run without yielding."""
    time.sleep(seconds)


async def test_a_blocked_loop_halves_the_share_and_it_grows_back() -> None:
    lag = LoopLag(limit_ms=10)
    sampler = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.05)
        assert lag.share == 1.0 and not lag.busy
        for _ in range(3):                 # the turns hog the loop: 50 ms without yielding, three times
            hog_the_loop(0.05)
            await asyncio.sleep(0.001)     # the sampler's timer is overdue: it runs now
            assert lag.lag_s >= 0.03 and lag.busy
        assert lag.share <= 0.125
        await asyncio.sleep(0.3)           # the loop keeps time again: the share grows back, 2 % a sample
        assert not lag.busy and lag.share > 0.125
        await asyncio.sleep(0.6)
        assert lag.share == 1.0
    finally:
        sampler.cancel()


async def test_zero_disables_the_guard() -> None:
    lag = LoopLag(limit_ms=0)
    sampler = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.02)
        hog_the_loop(0.05)
        await asyncio.sleep(0.001)
        assert lag.lag_s > 0.03 and not lag.busy and lag.share == 1.0
    finally:
        sampler.cancel()
