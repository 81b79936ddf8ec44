#!/usr/bin/env python3
"""A small ERP Service that follows Mission suspensions and revocations from a Mission ledger.

It discovers the transmitter from ``--issuer``, creates an SSF stream with the receiver token
``--token`` (``mission-ledger tokens create --role receiver --name erp --audience
https://erp.example.com --resource https://erp.example.com/``), receives SETs by poll (default)
or push, keeps the set of Missions it may rely on, and prints one line per event. Ctrl-C (or
SIGTERM) deletes the stream and exits.

    export MISSION_LEDGER_RECEIVER_TOKEN=mlt_...      # or --token mlt_...
    python examples/erp_service.py --issuer http://127.0.0.1:8080
    python examples/erp_service.py --issuer http://127.0.0.1:8080 --mode push \\
        --listen 127.0.0.1:9090

Push needs a transmitter that can reach ``--listen`` (for a local Authority:
``mission-ledger serve --allow-insecure-push --allow-private-push-targets``); port 0 listens on
any free port. ``--json`` prints one JSON object per line instead, each with ``at``, the wall
clock time (seconds since the epoch) at which the line's fact happened — for a SET, when it
arrived verified, before it is applied (``scripts/demo`` measures propagation with it).
``--caep`` also requests CAEP ``session-revoked``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from mission_ledger.receiver import (
    CAEP_SESSION_REVOKED,
    MISSION_EVENTS,
    NAMESPACE,
    MissionTracker,
    Outcome,
    ReceiverError,
    SetVerifier,
    StreamClient,
    VerifiedSet,
    discover,
    http_mission_reader,
    poll_forever,
    push_handler,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: What the ERP needs to know whether it may still honour a Mission.
WANTED = [
    uri
    for uri in MISSION_EVENTS
    if uri.removeprefix(NAMESPACE)
    in {
        "mission-approved",
        "mission-suspended",
        "mission-resumed",
        "mission-scope-changed",
        "mission-revoked",
        "mission-expired",
        "mission-completed",
        "mission-cascaded",
        "mission-superseded",
    }
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issuer", required=True, help="the transmitter's exact issuer URL")
    parser.add_argument(
        "--token",
        default=os.environ.get("MISSION_LEDGER_RECEIVER_TOKEN"),
        help="the receiver's bearer token (default: $MISSION_LEDGER_RECEIVER_TOKEN, which keeps "
        "it out of the process list)",
    )
    parser.add_argument("--mode", choices=("poll", "push"), default="poll")
    parser.add_argument(
        "--listen", default="127.0.0.1:9090", help="HOST:PORT for push (default 127.0.0.1:9090)"
    )
    parser.add_argument(
        "--endpoint-url",
        help="the push URL the transmitter should call (default http://LISTEN/ssf/events)",
    )
    parser.add_argument(
        "--allow-http",
        action="store_true",
        help="allow plain http to a non-loopback transmitter (never in production)",
    )
    parser.add_argument(
        "--caep", action="store_true", help="also request CAEP session-revoked SETs"
    )
    parser.add_argument(
        "--description", help="the stream's description (default: ERP Service (MODE))"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON lines, each with `at` (epoch seconds) — for programs that watch it",
    )
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set MISSION_LEDGER_RECEIVER_TOKEN")
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen must be HOST:PORT, got {args.listen!r}")
    args.host, args.port = host, int(port)
    return args


class Erp:
    """The Service's state: which Missions it may rely on."""

    def __init__(self, tracker: MissionTracker, *, as_json: bool = False) -> None:
        self.tracker = tracker
        self.as_json = as_json

    async def on_event(self, verified: VerifiedSet) -> None:
        received = time.time()  # verified, not yet applied (a re-read may follow)
        outcome = await self.tracker.apply(verified)
        self.report(outcome, received)

    def say(self, text: str, status: str, **fields: Any) -> None:
        """A line about the Service itself: ``text``, or with ``--json`` ``{"status", …}``."""
        if self.as_json:
            print(json.dumps({"at": time.time(), "status": status, **fields}), flush=True)
        else:
            print(text, flush=True)

    def report(self, outcome: Outcome, received: float | None = None) -> None:
        name = outcome.event_type.rsplit("/", 1)[-1]
        active = len(self.tracker.active_missions())
        if self.as_json:
            m = outcome.mission
            line = {
                "at": time.time() if received is None else received,
                "kind": outcome.kind,
                "event": name,
                "jti": outcome.jti,
                "mission": m.mission_id if m else None,
                "state": m.state if m else None,
                "version": m.version if m else None,
                "active": m.active if m else None,
                "resynced": outcome.resynced,
                "detail": outcome.detail,
                "active_missions": active,
            }
            print(json.dumps(line), flush=True)
        elif outcome.mission is not None:
            m = outcome.mission
            flags = " (re-read)" if outcome.resynced else ""
            if not m.active and m.state == "active":
                flags += " (unconfirmed)"
            print(
                f"{outcome.kind:<15} {name:<24} mission={m.mission_id} state={m.state} "
                f"version={m.version}{flags} active_missions={active}",
                flush=True,
            )
        else:
            print(f"{outcome.kind:<15} {name:<24} {outcome.detail}", flush=True)


async def main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async with aiohttp.ClientSession() as session:
        metadata = await discover(args.issuer, session, allow_http=args.allow_http)
        client = StreamClient(metadata, args.token, session, allow_http=args.allow_http)
        reader = http_mission_reader(
            metadata.issuer, args.token, session, allow_http=args.allow_http
        )
        erp = Erp(MissionTracker(reader), as_json=args.json)
        wanted = [*WANTED, CAEP_SESSION_REVOKED] if args.caep else WANTED
        description = args.description or f"ERP Service ({args.mode})"
        runner: web.AppRunner | None = None
        handlers: dict[str, Handler] = {}
        secret = "Bearer " + secrets.token_urlsafe(32)
        endpoint = args.endpoint_url or f"http://{args.listen}/ssf/events"
        if args.mode == "push":
            # Listen first: the transmitter may push as soon as the stream exists.
            async def pushed(request: web.Request) -> web.StreamResponse:
                handler = handlers.get("push")
                if handler is None:  # the stream is being created
                    return web.Response(status=503, headers={"Retry-After": "1"})
                return await handler(request)

            app = web.Application()
            app.router.add_post("/ssf/events", pushed)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, args.host, args.port).start()
            if args.port == 0 and not args.endpoint_url:  # the port the system chose
                endpoint = f"http://{args.host}:{runner.addresses[0][1]}/ssf/events"
            config = await client.create(
                wanted,
                endpoint_url=endpoint,
                authorization_header=secret,
                description=description,
            )
        else:
            config = await client.create(wanted, description=description)
        erp.say(
            f"stream {config.stream_id} created ({config.delivery.method}); "
            f"delivered: {len(config.events_delivered)} event types",
            "stream-created",
            stream_id=config.stream_id,
            delivery=config.delivery.method,
            events_delivered=list(config.events_delivered),
        )
        verifier = SetVerifier(
            metadata.issuer,
            config.audiences[0],
            metadata.jwks_uri,
            session,
            allow_http=args.allow_http,
        )
        try:
            if args.mode == "push":
                handlers["push"] = push_handler(
                    verifier, erp.on_event, expected_authorization=secret
                )
                erp.say(f"listening for pushed SETs on {endpoint}", "listening", endpoint=endpoint)
            state = await erp.tracker.request_verification(client, config.stream_id)
            erp.say(f"verification requested (state {state[:8]}…)", "verification-requested")
            if args.mode == "poll":
                stats = await poll_forever(
                    client, config.stream_id, verifier, erp.on_event, stop_event=stop
                )
                erp.say(
                    f"stopped after {stats.polls} polls, {stats.acked} SETs acked",
                    "stopped",
                    polls=stats.polls,
                    acked=stats.acked,
                )
            else:
                await stop.wait()
        finally:
            with contextlib.suppress(ReceiverError):
                await client.delete(config.stream_id)
                erp.say(
                    f"stream {config.stream_id} deleted",
                    "stream-deleted",
                    stream_id=config.stream_id,
                )
            if runner is not None:
                await runner.cleanup()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except ReceiverError as error:
        print(f"error: {error.description}", file=sys.stderr)
        sys.exit(1)
