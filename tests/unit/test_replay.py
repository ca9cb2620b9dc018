"""common.replay.MemoryReplayStore: a jti is accepted once until it expires, and the store fails closed when full."""

from __future__ import annotations

import asyncio

from common.clock import FrozenClock
from common.replay import MemoryReplayStore, ReplayStore

NOW = 1_700_000_000


async def test_the_first_use_of_a_key_is_accepted_and_the_second_is_refused() -> None:
    store = MemoryReplayStore(clock=FrozenClock(NOW))

    assert await store.first_use("iss|jti-1", NOW + 60) is True
    assert await store.first_use("iss|jti-1", NOW + 60) is False
    assert await store.first_use("iss|jti-1", NOW + 600) is False


async def test_different_keys_are_independent() -> None:
    store = MemoryReplayStore(clock=FrozenClock(NOW))

    assert await store.first_use("iss-a|jti", NOW + 60) is True
    assert await store.first_use("iss-b|jti", NOW + 60) is True
    assert await store.first_use("iss-a|jti", NOW + 60) is False


async def test_a_replay_is_refused_until_the_expiry_and_accepted_again_once_the_clock_passes_it() -> None:
    clock = FrozenClock(NOW)
    store = MemoryReplayStore(clock=clock)
    assert await store.first_use("jti", NOW + 60) is True

    clock.advance(59)
    assert await store.first_use("jti", NOW + 120) is False

    clock.advance(2)  # NOW + 61: past expires_at
    assert await store.first_use("jti", NOW + 120) is True
    assert await store.first_use("jti", NOW + 120) is False


async def test_a_refused_replay_does_not_extend_or_shorten_the_original_expiry() -> None:
    clock = FrozenClock(NOW)
    store = MemoryReplayStore(clock=clock)
    assert await store.first_use("jti", NOW + 100) is True
    assert await store.first_use("jti", NOW + 10) is False

    clock.advance(50)  # past the replay's (ignored) expiry, before the original one
    assert await store.first_use("jti", NOW + 200) is False


async def test_the_max_entries_bound_fails_closed_instead_of_forgetting_a_live_key() -> None:
    clock = FrozenClock(NOW)
    store = MemoryReplayStore(clock=clock, max_entries=2)
    assert await store.first_use("a", NOW + 60) is True
    assert await store.first_use("b", NOW + 120) is True

    assert await store.first_use("c", NOW + 60) is False  # full: refused, not accepted
    assert await store.first_use("a", NOW + 60) is False  # and nothing was forgotten
    assert await store.first_use("b", NOW + 60) is False
    assert await store.first_use("c", NOW + 60) is False  # "c" was never recorded as used, still full


async def test_expired_keys_free_room_in_a_full_store() -> None:
    clock = FrozenClock(NOW)
    store = MemoryReplayStore(clock=clock, max_entries=2)
    assert await store.first_use("a", NOW + 60) is True
    assert await store.first_use("b", NOW + 120) is True

    clock.advance(61)  # "a" is dead, "b" is live

    assert await store.first_use("c", NOW + 180) is True
    assert await store.first_use("b", NOW + 180) is False
    assert await store.first_use("d", NOW + 180) is False


async def test_concurrent_first_uses_of_one_key_let_exactly_one_through() -> None:
    store = MemoryReplayStore(clock=FrozenClock(NOW))

    results = await asyncio.gather(*(store.first_use("jti", NOW + 60) for _ in range(50)))

    assert results.count(True) == 1
    assert results.count(False) == 49


async def test_memory_store_satisfies_the_replay_store_protocol() -> None:
    store: ReplayStore = MemoryReplayStore(clock=FrozenClock(NOW))

    assert await store.first_use("k", NOW + 1) is True
