"""Redis Cluster: real Parley processes on a local 3-master cluster started from the machine's ``redis-server``.

The multi-process tests of ``test_processes.py`` run here unchanged against the cluster (a burst across many
conversations answered once per text and in order; a process killed mid-turn), and Parley's data must really
spread over the masters. Skipped, saying why, where ``redis-server`` is missing. ``PARLEY_TEST_CLUSTER=1``
runs the whole Redis suite on a cluster (``.ci/run`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from service.storage import keys

from .conftest import local_cluster
from .fakes.twilio import FakeTwilio
from .test_processes import (  # noqa: F401  (the fixture, and the tests to run again here)
    launch,
    test_sigkill_mid_turn_is_finished_by_another_process,
    test_three_processes_answer_a_burst_once_per_text_in_order,
    text,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with local_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


async def test_conversations_spread_over_the_masters(
    launch: Callable[..., Any], fake_twilio: FakeTwilio, redis: Any,  # noqa: F811
) -> None:
    process = await launch()
    users = [f"+1415556{n:04d}" for n in range(40)]
    async with aiohttp.ClientSession() as http:
        for n, user in enumerate(users):
            assert await text(http, process, user, "hello", f"SMspread{n:026d}") == 200
    await fake_twilio.wait_for(len(users), within_s=30)
    masters = {redis.get_node_from_key(keys.wakeups(shard)).name for shard in range(keys.SHARDS)}
    assert len(masters) == 3, f"the partitions live on {sorted(masters)} only"
    written = {redis.get_node_from_key(key).name async for key in redis.scan_iter(match="parley:{*}:chat:*")}
    assert len(written) >= 2, "every chat landed on one master"
