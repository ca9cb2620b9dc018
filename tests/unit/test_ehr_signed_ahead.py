"""A credential the engine signs ahead (while it waits on I/O) is used at most once, and only
while fresh: otherwise the caller signs a new one (ehr.invoke._SignedAhead)."""

from __future__ import annotations

import asyncio

from ehr.invoke import SIGNED_AHEAD_MAX_AGE, _SignedAhead


async def _signed(value: str) -> str:
    return value


async def test_a_credential_signed_ahead_is_handed_out_once() -> None:
    ahead = _SignedAhead.start(_signed("jwt-1"))
    assert await ahead.take() == "jwt-1"
    assert await ahead.take() is None


async def test_a_credential_signed_ahead_is_never_handed_out_once_stale() -> None:
    ahead = _SignedAhead.start(_signed("jwt-1"))
    ahead.started -= SIGNED_AHEAD_MAX_AGE + 0.5
    assert await ahead.take() is None


async def test_a_failed_signing_ahead_leaves_the_caller_to_sign_in_line() -> None:
    async def failing() -> str:
        raise RuntimeError("no key")

    ahead = _SignedAhead.start(failing())
    assert await ahead.take() is None


async def test_a_discarded_credential_is_cancelled_and_never_handed_out() -> None:
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "jwt-1"

    ahead = _SignedAhead.start(slow())
    ahead.discard()
    await asyncio.sleep(0)
    assert ahead.task.cancelled()
    assert await ahead.take() is None
