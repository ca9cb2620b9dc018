"""The Redis replay store: a jti used at one replica is refused at every other, until it expires."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.clock import FrozenClock
from common.replay import RedisReplayStore

REDIS_URL = os.environ.get("MOCKEHR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    yield client
    await client.aclose()


async def test_a_jti_used_at_one_replica_is_refused_at_another(redis: Redis) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    clock = FrozenClock(1_000_000)
    replica_a, replica_b = RedisReplayStore(redis, prefix, clock), RedisReplayStore(redis, prefix, clock)
    assert await replica_a.first_use("iss|jti-1", 1_000_300) is True
    assert await replica_b.first_use("iss|jti-1", 1_000_300) is False
    assert await replica_a.first_use("iss|jti-1", 1_000_300) is False
    assert await replica_b.first_use("iss|jti-2", 1_000_300) is True


async def test_the_redis_entry_lives_as_long_as_the_token_and_no_longer(redis: Redis) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    store = RedisReplayStore(redis, prefix, FrozenClock(1_000_000))
    assert await store.first_use("k", 1_000_120)
    ttl = await redis.ttl(f"{prefix}:k")
    assert 115 <= ttl <= 120
    # An already-expired token still gets a (1 s) entry rather than none: never fail open.
    assert await store.first_use("old", 999_000)
    assert await redis.ttl(f"{prefix}:old") == 1
