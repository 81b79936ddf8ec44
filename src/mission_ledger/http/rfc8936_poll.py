"""RFC 8936 poll delivery, as SSF 1.0 §6.1.2 profiles it: ``POST /ssf/poll/{stream_id}``.

The endpoint is the ``delivery.endpoint_url`` of a poll stream, one per stream, for the stream's
receiver only (any other caller, an unknown stream and a push stream get the same 404).

Request (§2.2), ``application/json``; ``{}`` (or no body) is a valid long poll, unknown members
are ignored, a member of the wrong type is 400:
``maxEvents`` (non-negative integer, ``0`` = acknowledge only), ``returnImmediately`` (default
``false``: long poll), ``ack`` (jtis received), ``setErrs`` (jti → ``{err, description}``).

Processing: one executor hop runs :meth:`OutboxStore.poll` — acknowledgements and ``setErrs``
first, then the oldest offerable SETs, in one transaction — with ``deliver`` = the stream is
``enabled`` (a paused or disabled stream is offered only control SETs). Answer (§2.3):
``200 {"sets": {jti: SET}, "moreAvailable": bool}``.

**Long poll** (§2.3): when nothing was offered, ``returnImmediately`` is not true and
``maxEvents`` is not 0, the request waits — without holding an executor thread — until the
outbox signals a SET for this stream or the server's poll timeout (``serve --poll-timeout``,
default 10 s, at most 25 s) passes, then answers ``{"sets": {}, "moreAvailable": false}``. The
signal: the embedded outbox worker calls :meth:`PollHub.notify_threadsafe` from its thread after
each committed page, which sets (on the event loop, via ``call_soon_threadsafe``) the
:class:`asyncio.Event` of every poll waiting on those streams. A waiting poll also looks at the
outbox every ``poll_recheck_interval`` (0.25 s), so SETs written by a ``mission-ledger worker``
in another process, and a stream re-enabled meanwhile, are seen too. Each look re-reads the
stream's status, so a stream paused during the wait hands out nothing. A server shutting down
answers every waiting poll at once (``on_shutdown`` closes the hub).

An unacknowledged SET is offered again once ``serve --poll-reoffer-after`` seconds (default 30)
have passed since it was last offered; acknowledged SETs are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from uuid import UUID

from aiohttp import web
from pydantic import ValidationError

from ..domain.errors import InvalidInput
from ..domain.stream import ENABLED
from ..principals import Principal
from ..ssf.streams import POLL_PATH
from .auth import require_receiver
from .models import NoQuery, PollBody, invalid_from, parse_query, read_json
from .spec import Route, json_response
from .state import CLOCK, OPTIONS, OUTBOX, STREAMS, run_sync

NO_STORE = {"Cache-Control": "no-store"}
Offered = tuple[dict[str, str], bool]


class PollHub:
    """Where waiting long polls learn that their stream has new SETs.

    Lives on the event loop; the only method other threads may call is
    :meth:`notify_threadsafe` (the outbox worker's listener)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._count = 0  # waiting polls; an int, so other threads (health) may read it
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server's loop (at startup)."""
        self._loop = loop
        self.closed = False

    def notify_threadsafe(self, stream_ids: Iterable[object]) -> None:
        """Wake the polls waiting on ``stream_ids`` (any thread; a no-op once the loop is gone)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        ids = frozenset(s.hex if isinstance(s, UUID) else str(s) for s in stream_ids)
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and here
            loop.call_soon_threadsafe(self._wake, ids)

    def _wake(self, stream_ids: frozenset[str]) -> None:
        for stream_id in stream_ids:
            for event in self._waiters.get(stream_id, ()):
                event.set()

    @contextlib.contextmanager
    def subscribe(self, stream_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``stream_id`` may have new SETs (and when the hub closes)."""
        event = asyncio.Event()
        if self.closed:
            event.set()
        self._waiters.setdefault(stream_id, set()).add(event)
        self._count += 1
        try:
            yield event
        finally:
            self._count -= 1
            waiters = self._waiters.get(stream_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[stream_id]

    def waiting(self) -> int:
        """How many polls are waiting now (a gauge; any thread may ask)."""
        return self._count

    def close(self) -> None:
        """The server is stopping: every waiting poll answers now, new ones do not wait."""
        self.closed = True
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()


POLL_HUB = web.AppKey("ssf_poll_hub", PollHub)


# -- the request ----------------------------------------------------------------------------------


def parse_poll_body(raw: Any) -> PollBody:
    """An RFC 8936 poll request (``None``: no body → a default long poll)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput(
            f"a poll request is a JSON object, not {type(raw).__name__}", field="body"
        )
    try:
        return PollBody.model_validate(raw)
    except ValidationError as error:
        raise invalid_from(error) from None


def _offer(
    app: web.Application,
    principal: Principal,
    stream_id: str,
    *,
    max_events: int | None,
    ack: Sequence[str],
    set_errs: Mapping[str, Mapping[str, str]],
    first: bool,
) -> Offered:
    """One look at the outbox (executor): the caller's poll stream (404 otherwise), then either
    the full poll (``first``: acks and setErrs too) or, on a recheck, a poll only when the
    cheap read says something is offerable."""
    stream = app[STREAMS].stream_for_poll(principal, stream_id)
    store = app[OUTBOX]
    deliver = stream.status == ENABLED
    reoffer_after = app[OPTIONS].poll_reoffer_after
    now = app[CLOCK].now()
    if not first and not store.has_offerable(stream.stream_id, deliver, reoffer_after, now):
        return {}, False
    return store.poll(
        stream.stream_id,
        max_events=max_events,
        ack=ack,
        set_errs=set_errs,
        deliver=deliver,
        reoffer_after=reoffer_after,
        now=now,
    )


def _answer(sets: Mapping[str, str], more: bool) -> web.Response:
    return json_response({"sets": dict(sets), "moreAvailable": more}, headers=NO_STORE)


async def poll(request: web.Request) -> web.StreamResponse:
    principal = await require_receiver(request)
    parse_query(request, NoQuery)
    body = parse_poll_body(await read_json(request, required=False))
    stream_id = request.match_info["stream_id"]
    app = request.app
    hub = app[POLL_HUB]
    set_errs = {
        jti: {"err": error.err, "description": error.description}
        for jti, error in body.set_errs.items()
    }
    with hub.subscribe(stream_id) as wake:  # before the first look: no signal is missed
        sets, more = await run_sync(
            request,
            _offer,
            app,
            principal,
            stream_id,
            max_events=body.max_events,
            ack=body.ack,
            set_errs=set_errs,
            first=True,
        )
        if sets or body.return_immediately or body.max_events == 0:
            return _answer(sets, more)
        options = app[OPTIONS]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.poll_timeout
        while not hub.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(remaining, options.poll_recheck_interval))
            if hub.closed:
                break
            wake.clear()
            sets, more = await run_sync(
                request,
                _offer,
                app,
                principal,
                stream_id,
                max_events=body.max_events,
                ack=(),
                set_errs={},
                first=False,
            )
            if sets:
                return _answer(sets, more)
    return _answer({}, False)


ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        POLL_PATH + "{stream_id}",
        poll,
        "ssf_poll",
        "Poll a stream for SETs, acknowledge and report errors (RFC 8936; long poll by default)",
        "ssf",
        {200: "PollResponse"},
        body=PollBody,
        roles=("receiver",),
        errors=(400, 401, 403, 404, 413, 415, 503),
        description="The stream's delivery.endpoint_url, for its receiver only. Without "
        "returnImmediately: true the request waits until a SET is available or the server's "
        'poll timeout (default 10 s) passes, then answers {"sets": {}}. Unacknowledged SETs '
        "are offered again after the server's re-offer interval (default 30 s).",
    ),
)

__all__ = ["NO_STORE", "POLL_HUB", "ROUTES", "PollHub", "parse_poll_body", "poll"]
