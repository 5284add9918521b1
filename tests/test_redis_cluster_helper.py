"""The local Redis Cluster helper (tests/redis_cluster.py): it forms a real cluster, and leaves no process behind."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException

from .redis_cluster import SLOTS, ClusterStartupError, LocalCluster, missing_reason, slot_ranges

pytestmark = pytest.mark.cluster

PAIR_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
"""


def require_redis_server() -> None:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    require_redis_server()
    with LocalCluster(tmp_path) as running:
        yield running


def assert_all_gone(processes: list[subprocess.Popen[bytes]], ports: list[int]) -> None:
    """Every node was reaped, nothing is left in its process group, and nothing answers on its ports."""
    assert processes
    for process in processes:
        assert process.returncode is not None, f"node {process.pid} was not reaped"
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)
    for port in ports:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


def test_slot_ranges_cover_every_slot_once() -> None:
    for masters in (1, 3, 5):
        ranges = slot_ranges(masters)
        assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
        assert all(left[1] + 1 == right[0] for left, right in itertools.pairwise(ranges))
        sizes = [last - first + 1 for first, last in ranges]
        assert sum(sizes) == SLOTS and max(sizes) - min(sizes) <= 1
    assert slot_ranges(3) == [(0, 5461), (5462, 10922), (10923, 16383)]


def test_missing_reason_names_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = missing_reason()
    assert reason is not None and "redis-server" in reason


async def test_cluster_routes_keys_runs_scripts_and_refuses_cross_slot(cluster: LocalCluster) -> None:
    assert len(cluster.ports) == 3
    assert cluster.url == f"redis://127.0.0.1:{cluster.ports[0]}/0"
    client = RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        await client.initialize()
        keys = [f"{{tag-{name}}}:value" for name in "abcdefgh"]
        for key in keys:
            await client.set(key, key)
        owners: dict[str, int] = {}
        for key in keys:
            node = client.get_node_from_key(key)
            assert node is not None
            owners[key] = int(node.port)
            assert client.keyslot(key) == client.keyslot(key.split(":")[0])  # only the hash tag counts
        assert len(set(owners.values())) >= 2, owners
        for key, port in owners.items():  # each key really is stored on the node the client routed it to
            direct = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
            try:
                assert await direct.get(key) == key
            finally:
                await direct.aclose()

        assert await client.eval(PAIR_SCRIPT, 2, "{chat-1}:a", "{chat-1}:b", "x", "y") == ["x", "y"]
        assert await client.mget("{chat-1}:a", "{chat-1}:b") == ["x", "y"]

        apart = ("{tag-a}:value", "{tag-b}:value")
        assert client.keyslot(apart[0]) != client.keyslot(apart[1])
        with pytest.raises(RedisClusterException, match="same key slot"):  # refused by the client...
            await client.mget(*apart)
        with pytest.raises(RedisClusterException, match="same key slot"):
            await client.eval(PAIR_SCRIPT, 2, *apart, "x", "y")
        direct = aioredis.Redis(host="127.0.0.1", port=cluster.ports[0], decode_responses=True)
        try:
            with pytest.raises(ClusterCrossSlotError):  # ...and by the server itself
                await direct.mset({apart[0]: "1", apart[1]: "2"})
        finally:
            await direct.aclose()
    finally:
        await client.aclose()


def test_nodes_are_gone_after_the_context_exits(tmp_path: Path) -> None:
    require_redis_server()
    with LocalCluster(tmp_path) as cluster:
        processes, ports = list(cluster.processes), list(cluster.ports)
        assert all(process.poll() is None for process in processes)
    assert_all_gone(processes, ports)


def test_failed_startup_stops_the_nodes_it_started(tmp_path: Path) -> None:
    require_redis_server()
    # A master reports cluster_state:ok no sooner than 2 s after it starts, so half a second always times out.
    cluster = LocalCluster(tmp_path, timeout=0.5)
    with pytest.raises(ClusterStartupError, match=r"node-\d+\.log"), cluster:
        pytest.fail("the cluster should not have started")
    assert_all_gone(cluster.processes, cluster.ports)
