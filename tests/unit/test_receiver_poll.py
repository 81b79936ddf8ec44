"""poll_forever against a small real transmitter on loopback (RFC 8936): ack what was verified and
handled, setErrs for refused SETs, retry with backoff, raise on permanent errors, stop promptly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from mission_ledger.receiver import (
    Backoff,
    MissionTracker,
    PollStats,
    SetVerifier,
    StreamClient,
    StreamNotFound,
    TransmitterUnauthorized,
    VerifiedSet,
    discover,
    poll_forever,
)
from tests.unit.test_receiver_common import (
    AUD,
    MISSION,
    TOKEN,
    VERIFICATION,
    Transmitter,
    key_store,
    make_set,
    mission_event,
    run,
    transmitter,
)

RSA = key_store().active("RS256")
ES = key_store().active("ES256")
SAFETY = 60.0  # seconds: only guards against a hang, never asserts a duration
FAST = Backoff(initial=0.01, maximum=0.05)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def start(
    t: Transmitter,
    session: aiohttp.ClientSession,
    on_event: Callable[[VerifiedSet], Any],
    stop: asyncio.Event,
    *,
    stream: str | None = None,
    verifier: SetVerifier | None = None,
    **kw: Any,
) -> asyncio.Task[PollStats]:
    client = StreamClient(await discover(t.issuer, session), TOKEN, session)
    verifier = verifier or SetVerifier(t.issuer, AUD, t.url + "/jwks.json", session)
    return asyncio.create_task(
        poll_forever(
            client,
            stream or t.url + "/ssf/poll/s1",
            verifier,
            on_event,
            stop_event=stop,
            backoff=kw.pop("backoff", FAST),
            **kw,
        )
    )


async def drained_then_stop(t: Transmitter, stop: asyncio.Event, task: asyncio.Task[Any]) -> Any:
    await asyncio.wait_for(t.drained.wait(), SAFETY)
    stop.set()
    return await asyncio.wait_for(task, SAFETY)


def test_valid_sets_are_acked_and_invalid_ones_reported_in_set_errs() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            tracker = MissionTracker()
            iss = t.issuer
            good = [
                make_set(RSA, iss=iss, jti="g1", event=mission_event(1, "active"), txn="t1"),
                make_set(ES, iss=iss, jti="g2", event=mission_event(2, "suspended"), txn="t2"),
                make_set(RSA, iss=iss, jti="g3", event=mission_event(3, "revoked"), txn="t3"),
            ]
            wrong_aud = make_set(RSA, iss=iss, jti="b1", aud="https://crm.example.com")
            forged = make_set(
                RSA,
                iss=iss,
                jti="b2",
                event_type=VERIFICATION,
                event={"state": "forged"},
                sub_id={"format": "opaque", "id": "s1"},
            )
            t.enqueue(*good, wrong_aud, forged)
            stop = asyncio.Event()
            task = await start(t, session, tracker.apply, stop)
            stats = await drained_then_stop(t, stop, task)

            assert sorted(t.acked) == ["g1", "g2", "g3"]
            assert {jti: e["err"] for jti, e in t.set_errs.items()} == {
                "b1": "invalid_audience",
                "b2": "invalid_state",
            }
            assert all(e["description"] for e in t.set_errs.values())
            assert (stats.acked, stats.refused, stats.received) == (3, 2, 5)
            state = tracker.mission(MISSION)
            assert state is not None
            assert (state.state, state.version) == ("revoked", 3)

            first = t.polls[0]
            assert first.headers["Authorization"] == f"Bearer {TOKEN}"
            assert first.body == {"returnImmediately": False, "maxEvents": 100}
            with_errs = [p for p in t.polls if p.body.get("setErrs")]
            assert with_errs
            assert all(p.headers.get("Content-Language") == "en" for p in with_errs)
            assert all(
                "Content-Language" not in p.headers for p in t.polls if not p.body.get("setErrs")
            )

    run(main)


def test_max_events_is_sent_and_more_available_is_followed() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            tokens = [make_set(RSA, iss=t.issuer, jti=f"j{i}") for i in range(5)]
            t.enqueue(*tokens)
            seen: list[str] = []
            stop = asyncio.Event()
            task = await start(t, session, lambda v: seen.append(v.jti), stop, max_events=2)
            await drained_then_stop(t, stop, task)
            assert sorted(seen) == [f"j{i}" for i in range(5)]
            assert sorted(t.acked) == sorted(seen)
            assert all(p.body.get("maxEvents") == 2 for p in t.polls[:3])

    run(main)


def test_transient_errors_are_retried_with_backoff_and_acks_are_not_lost() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.enqueue(make_set(RSA, iss=t.issuer, jti="j1"))
            handled: list[str] = []
            stop = asyncio.Event()

            def on_event(v: VerifiedSet) -> None:
                handled.append(v.jti)
                # The poll that carries this ack fails twice (503, then 429) before succeeding.
                t.poll_failures.extend([(503, {}), (429, {"Retry-After": "0"})])

            task = await start(t, session, on_event, stop)
            stats = await drained_then_stop(t, stop, task)
            assert handled == ["j1"]
            assert t.acked == ["j1"]
            assert stats.errors == 2
            carrying = [
                p for p in t.polls if p.body.get("ack") == ["j1"] and p.body["maxEvents"] == 100
            ]
            assert len(carrying) == 3  # the ack was re-sent until a request carrying it succeeded

    run(main)


def test_a_failing_handler_leaves_the_set_for_redelivery() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.enqueue(make_set(RSA, iss=t.issuer, jti="j1"))
            attempts: list[str] = []

            def flaky(v: VerifiedSet) -> None:
                attempts.append(v.jti)
                if len(attempts) == 1:
                    raise RuntimeError("database busy")

            stop = asyncio.Event()
            task = await start(t, session, flaky, stop)
            stats = await drained_then_stop(t, stop, task)
            assert attempts == ["j1", "j1"]  # redelivered (never acked nor refused) and retried
            assert t.acked == ["j1"]
            assert t.set_errs == {}
            assert stats.deferred == 1

    run(main)


def test_an_unknown_kid_is_deferred_while_the_refresh_is_rate_limited() -> None:
    async def main() -> None:
        foreign = key_store("foreign").active("RS256")
        async with transmitter() as t, aiohttp.ClientSession() as session:
            clock = Clock()
            verifier = SetVerifier(t.issuer, AUD, t.url + "/jwks.json", session, clock=clock)
            token = make_set(foreign, iss=t.issuer, jti="k1")
            t.enqueue(token)
            stop = asyncio.Event()
            task = await start(t, session, lambda v: None, stop, verifier=verifier)
            # Deferred: neither acked nor refused while the JWKS is fresh.
            while len(t.polls) < 3:
                t.poll_arrived.clear()
                await asyncio.wait_for(t.poll_arrived.wait(), SAFETY)
            assert t.acked == []
            assert t.set_errs == {}
            assert t.jwks_fetches == 1
            clock.now += 61  # the refresh is allowed: the key is still unknown → invalid_key
            await asyncio.wait_for(t.drained.wait(), SAFETY)
            stop.set()
            stats = await asyncio.wait_for(task, SAFETY)
            assert t.set_errs["k1"]["err"] == "invalid_key"
            assert t.jwks_fetches == 2
            assert stats.deferred >= 1

    run(main)


def test_permanent_errors_are_raised() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.poll_failures.append((401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}))
            stop = asyncio.Event()
            task = await start(t, session, lambda v: None, stop)
            with pytest.raises(TransmitterUnauthorized):
                await asyncio.wait_for(task, SAFETY)
            # A stream id whose configuration is gone.
            task = await start(t, session, lambda v: None, stop, stream="gone")
            with pytest.raises(StreamNotFound):
                await asyncio.wait_for(task, SAFETY)

    run(main)


def test_a_stream_id_is_resolved_to_its_poll_url() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.answers[("GET", "/ssf/stream")] = (200, t.stream_config("s1"), {})
            t.enqueue(make_set(RSA, iss=t.issuer, jti="j1"))
            stop = asyncio.Event()
            task = await start(t, session, lambda v: None, stop, stream="s1")
            await drained_then_stop(t, stop, task)
            assert t.acked == ["j1"]
            assert t.polls[0].path == "/ssf/poll/s1"

    run(main)


def test_stop_abandons_a_long_poll_promptly() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.hold = 3600.0  # the transmitter would hold the long poll for an hour
            stop = asyncio.Event()
            task = await start(t, session, lambda v: None, stop)
            await asyncio.wait_for(t.poll_arrived.wait(), SAFETY)
            stop.set()
            stats = await asyncio.wait_for(task, SAFETY)  # returns without the hour
            assert stats.polls == 0

    run(main)


def test_stop_flushes_pending_acks_in_an_acknowledge_only_request() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.enqueue(make_set(RSA, iss=t.issuer, jti="j1"))
            stop = asyncio.Event()
            task = await start(t, session, lambda v: stop.set(), stop)
            stats = await asyncio.wait_for(task, SAFETY)
            assert t.acked == ["j1"]
            assert t.polls[-1].body == {"returnImmediately": True, "maxEvents": 0, "ack": ["j1"]}
            assert stats.acked == 1

    run(main)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    delays = [backoff.next_delay() for _ in range(6)]
    for n, delay in enumerate(delays):
        ceiling = min(8.0, 2.0**n)
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_max_events_must_be_positive() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            with pytest.raises(ValueError, match="max_events"):
                await poll_forever(
                    StreamClient(await discover(t.issuer, session), TOKEN, session),
                    t.url + "/ssf/poll/s1",
                    SetVerifier(t.issuer, AUD, t.url + "/jwks.json", session),
                    lambda v: None,
                    max_events=0,
                )

    run(main)
