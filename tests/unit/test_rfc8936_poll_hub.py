"""The long-poll hub: a worker thread's signal wakes exactly the polls waiting on its streams."""

from __future__ import annotations

import asyncio
import threading
from uuid import uuid4

from mission_ledger.http.rfc8936_poll import PollHub, parse_poll_body


def test_a_signal_from_another_thread_wakes_only_that_streams_polls() -> None:
    async def main() -> None:
        hub = PollHub()
        hub.bind(asyncio.get_running_loop())
        stream = uuid4()
        with hub.subscribe(stream.hex) as mine, hub.subscribe("other") as other:
            assert hub.waiting() == 2
            thread = threading.Thread(target=hub.notify_threadsafe, args=({stream},))
            thread.start()  # a UUID or its hex: both name the stream
            thread.join()
            await asyncio.wait_for(mine.wait(), 30)
            assert not other.is_set()
        assert hub.waiting() == 0

    asyncio.run(main())


def test_closing_wakes_every_poll_and_later_polls_do_not_wait() -> None:
    async def main() -> None:
        hub = PollHub()
        hub.notify_threadsafe({"unbound"})  # before bind: a no-op
        hub.bind(asyncio.get_running_loop())
        with hub.subscribe("s") as waiting:
            hub.close()
            assert waiting.is_set()
        with hub.subscribe("s") as late:
            assert late.is_set()

    asyncio.run(main())
    closed = PollHub()
    loop = asyncio.new_event_loop()
    closed.bind(loop)
    loop.close()
    closed.notify_threadsafe({"s"})  # the loop is gone: a no-op, not an error


def test_poll_bodies() -> None:
    default = parse_poll_body(None)
    assert (default.max_events, default.return_immediately, default.ack, default.set_errs) == (
        None,
        False,
        [],
        {},
    )
    body = parse_poll_body(
        {
            "maxEvents": 0,
            "returnImmediately": True,
            "ack": ["a"],
            "setErrs": {"b": {"err": "invalid_key", "description": "d"}},
            "stream_id": "ignored",
        }
    )
    assert body.max_events == 0
    assert body.return_immediately is True
    assert body.ack == ["a"]
    assert body.set_errs["b"].err == "invalid_key"
