"""The pure part of `python -m bench.profile`: shares of py-spy's collapsed stacks per function."""

from __future__ import annotations

from bench import profile

READ = f"{profile.ROOT}/fhirserver/read.py"
COLLAPSED = "\n".join(
    [
        f"process 12:python;run (asyncio/base_events.py:10);handle ({READ}:5);sign (joserfc/jws.py:3) 6",
        f"process 12:python;run (asyncio/base_events.py:10);handle ({READ}:7) 2",
        "process 12:python;run (asyncio/base_events.py:10);execute (site-packages/asyncpg/pool.py:9) 2",
        "not a stack line",
    ]
)


def test_a_function_counts_once_per_sample_in_its_inclusive_share_and_only_as_the_leaf_in_its_own() -> None:
    summary = profile.summarize(COLLAPSED)
    assert summary["samples"] == 10
    assert summary["top_inclusive"]["asyncio.base_events.run"] == 100.0
    assert summary["by_category"] == {
        "crypto (joserfc, cryptography)": 60.0,
        "mockehr's own code": 20.0,
        "database driver (asyncpg)": 20.0,
    }
    assert summary["top_inclusive"]["fhirserver.read.handle"] == 80.0
    assert summary["top_self"] == {
        "joserfc.jws.sign": 60.0,
        "fhirserver.read.handle": 20.0,
        "asyncpg.pool.execute": 20.0,
    }


def test_a_thread_parked_in_a_pool_is_not_counted_as_busy() -> None:
    parked = "process 12:python;_bootstrap (threading.py:1);wait (threading.py:320) 90"
    summary = profile.summarize(COLLAPSED + "\n" + parked.replace("wait (", "Condition.wait ("))
    assert summary["samples"] == 10


def test_no_samples_give_no_shares() -> None:
    assert profile.summarize("") == {"samples": 0, "by_category": {}, "top_inclusive": {}, "top_self": {}}
