"""The RFC 8936 poll loop: fetch SETs, verify, hand them to the Service, acknowledge.

:func:`poll_forever` repeats one combined request (RFC 8936 §2.4.3)::

    {"maxEvents": 100, "returnImmediately": false, "ack": [...], "setErrs": {...}}

- ``ack`` lists the ``jti`` of every SET of the previous answer that verified **and** that
  ``on_event`` (the persistence hook) accepted — duplicates included (the transmitter
  redelivers until acknowledged);
- ``setErrs`` maps the ``jti`` of every refused SET to ``{"err", "description"}`` (the RFC 8935
  code from the verifier, or from ``on_event`` raising a
  :class:`~mission_ledger.errors.SetVerificationError`, e.g. ``invalid_state``); the request then
  carries ``Content-Language: en``;
- a SET that could not be judged — the JWKS unreachable, an unknown ``kid`` while the JWKS
  refresh is rate-limited, ``on_event`` failing with another exception — is neither: the
  transmitter redelivers it later.

Acknowledgements are only dropped once a request carrying them succeeded. Errors: network
failures, 5xx, 429 (``Retry-After`` honoured) and malformed answers are retried with exponential
backoff and jitter; 400, 401, 403, 404 and 409 are raised (the token, the stream or the request
is wrong: retrying cannot help). Setting ``stop_event`` ends the loop promptly: an outstanding
long poll is abandoned (its SETs, if any, are redelivered), pending acknowledgements are sent in
one last acknowledge-only request, and the counters are returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import InvalidSetKey, SetVerificationError
from .errors import (
    InvalidResponse,
    JwksUnavailable,
    ReceiverError,
    TransmitterRateLimited,
    TransmitterServerError,
    TransmitterUnavailable,
)
from .push import EventHandler, call_handler
from .streams import DEFAULT_POLL_TIMEOUT, StreamClient
from .verifier import SetVerifier

__all__ = ["Backoff", "PollStats", "poll_forever"]

log = logging.getLogger("mission_ledger.receiver")

T = TypeVar("T")
RETRYABLE = (
    TransmitterUnavailable,
    TransmitterServerError,
    TransmitterRateLimited,
    InvalidResponse,
)
FLUSH_TIMEOUT = 10.0


@dataclass
class Backoff:
    """Exponential backoff with "equal jitter": the n-th delay is uniform in
    ``[d/2, d]`` where ``d = min(maximum, initial * factor**n)``."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    attempt: int = 0
    _random: random.Random = field(default_factory=random.SystemRandom, repr=False)

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class PollStats:
    """What a :func:`poll_forever` run did."""

    polls: int = 0  # successful poll requests
    received: int = 0  # SETs received (redeliveries included)
    acked: int = 0  # acknowledged
    refused: int = 0  # reported in setErrs
    deferred: int = 0  # left for redelivery
    errors: int = 0  # failed poll requests (retried)
    set_errs: dict[str, dict[str, str]] = field(default_factory=dict)  # every one reported


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> bool:
    """Wait ``delay`` seconds or until ``stop`` is set; whether it was set."""
    if delay <= 0:
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        return False
    return True


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run ``work`` until it finishes or ``stop`` is set (then it is cancelled):
    ``(True, result)`` or ``(False, None)``."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False, None
    return True, task.result()


async def poll_forever(
    client: StreamClient,
    stream: str,
    verifier: SetVerifier,
    on_event: EventHandler,
    *,
    stop_event: asyncio.Event | None = None,
    max_events: int = 100,
    return_immediately: bool = False,
    idle_delay: float = 0.0,
    backoff: Backoff | None = None,
    request_timeout: float = DEFAULT_POLL_TIMEOUT,
) -> PollStats:
    """Poll ``stream`` (a stream id, or its poll URL) until ``stop_event`` is set (see the
    module doc). ``idle_delay``: seconds to wait after an empty answer (for transmitters that
    do not hold long polls). Returns the counters."""
    if max_events < 1:
        raise ValueError("max_events must be at least 1 (0 is an acknowledge-only request)")
    stop = stop_event if stop_event is not None else asyncio.Event()
    backoff = backoff if backoff is not None else Backoff()
    stats = PollStats()
    ack: list[str] = []
    errs: dict[str, dict[str, str]] = {}

    url: str | None = None
    while url is None:
        try:
            finished, url = await _unless_stopped(stop, client.poll_url(stream))
        except RETRYABLE as error:
            stats.errors += 1
            log.warning("cannot resolve the poll URL; retrying", extra={"error": str(error)})
            if await _sleep_or_stop(stop, backoff.next_delay()):
                return stats
            continue
        if not finished:
            return stats
    backoff.reset()

    async def handle(jti: str, token: str) -> None:
        try:
            verified = await verifier.verify(token)
            if verified.jti != jti:
                raise SetVerificationError(
                    f"the SET's jti {verified.jti!r} is not the key it was delivered under"
                )
            await call_handler(on_event, verified)
        except InvalidSetKey as error:
            if error.details.get("refreshed") is False:
                stats.deferred += 1  # maybe a key published after our last fetch: later
                return
            errs[jti] = {"err": error.code, "description": error.description}
        except SetVerificationError as error:
            errs[jti] = {"err": error.code, "description": error.description}
        except JwksUnavailable as error:
            stats.deferred += 1
            log.warning("cannot verify a polled SET now", extra={"error": error.description})
        except Exception:
            stats.deferred += 1
            log.exception("the poll event handler failed; the SET will be redelivered")
        else:
            ack.append(jti)

    while not stop.is_set():
        sent_ack, sent_errs = list(ack), dict(errs)
        try:
            finished, response = await _unless_stopped(
                stop,
                client.poll(
                    url,
                    max_events=max_events,
                    return_immediately=return_immediately,
                    ack=sent_ack,
                    set_errs=sent_errs,
                    timeout=request_timeout,
                ),
            )
        except RETRYABLE as error:
            stats.errors += 1
            delay = backoff.next_delay()
            if isinstance(error, TransmitterRateLimited) and error.retry_after is not None:
                delay = max(delay, error.retry_after)
            log.warning("poll failed; retrying", extra={"error": error.description, "delay": delay})
            if await _sleep_or_stop(stop, delay):
                break
            continue
        if not finished or response is None:
            break
        stats.polls += 1
        stats.acked += len(sent_ack)
        stats.refused += len(sent_errs)
        stats.set_errs.update(sent_errs)
        ack, errs = [], {}
        for jti, token in response.sets.items():
            stats.received += 1
            await handle(jti, token)
        if ack or errs or not response.sets:
            backoff.reset()
        if response.sets and not ack and not errs:
            # Nothing could be judged (JWKS down, handler failing): do not spin on redeliveries.
            if await _sleep_or_stop(stop, backoff.next_delay()):
                break
        elif not response.sets and idle_delay > 0 and await _sleep_or_stop(stop, idle_delay):
            break

    if ack or errs:  # the last acknowledgements, in an acknowledge-only request
        try:
            await client.poll(
                url,
                max_events=0,
                return_immediately=True,
                ack=ack,
                set_errs=errs,
                timeout=FLUSH_TIMEOUT,
            )
        except ReceiverError as error:
            log.warning(
                "could not send the last acknowledgements; the transmitter will redeliver",
                extra={"error": error.description},
            )
        else:
            stats.acked += len(ack)
            stats.refused += len(errs)
            stats.set_errs.update(errs)
    return stats
