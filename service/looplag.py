"""How late the event loop runs: the webhook's guard against the turns sharing its process.

In ``parley serve`` the Twilio webhooks and the turns share one event loop. When the turns need more CPU than
the process has, every callback waits longer, and the webhook, which must answer Twilio within 15 s and
should answer in milliseconds, waits with them. ``LoopLag`` samples how late a short timer fires; while that
is above ``PARLEY_MAX_LOOP_LAG_MS``, the share of ``PARLEY_WORKERS`` the workers may use (``share``) is
halved, and while it is below, it grows back by 2 % a sample: the workers start no new conversation past it
(``WorkerPool``), wake-ups wait in Redis, turns in flight finish, and the webhooks keep their latency. The
backlog is answered as soon as the loop has time again.
"""

from __future__ import annotations

import asyncio

INTERVAL_S = 0.01
DECAY = 0.5   # a late timer counts at once; each punctual one halves what is left of it
GROWTH = 0.02


class LoopLag:
    def __init__(self, limit_ms: float) -> None:
        self.limit_s = limit_ms / 1000
        self.lag_s = 0.0
        self.share = 1.0
        self.grown = asyncio.Event()

    async def run(self) -> None:
        """Sample until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(INTERVAL_S)
            late = max(loop.time() - started - INTERVAL_S, 0.0)
            self.lag_s = late if late > self.lag_s else self.lag_s * DECAY + late * (1 - DECAY)
            if self.busy:
                self.share = max(self.share / 2, 0.001)
            elif self.share < 1.0:
                self.share = min(self.share + GROWTH, 1.0)
                self.grown.set()

    @property
    def busy(self) -> bool:
        return self.limit_s > 0 and self.lag_s > self.limit_s
