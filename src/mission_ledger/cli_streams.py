"""``mission-ledger streams``: the operator's view of the SSF streams, and the transmitter's
own status changes.

``list`` and ``show`` combine each stream's configuration (from the ledger, where streams are
event-sourced) with its delivery queue (from the outbox): queue depth, SETs offered to a poller
and not yet acknowledged, the age of the oldest undelivered SET, the last errors receivers
reported and, for push streams, the dead letters and the retry state of the queue's head.
``pause``, ``enable`` and ``disable`` are *transmitter-initiated* status changes (SSF §8.1.5):
the receiver is told with a stream-updated SET, which a receiver's own status change never
causes. ``dead-letters`` lists the SETs push delivery gave up on (a permanent error, or its
retries exhausted) and ``redeliver`` puts them back at the head of the queue, in their original
order, with their attempts reset (the same SETs: the same jtis).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from .cli import PROG, Output, add_command, render_fields, render_table
from .config import Settings
from .domain.stream import DISABLED, ENABLED, PAUSED, PUSH, Stream
from .ledger import MissionLedger
from .ssf.streams import StreamService

STREAMS_EPILOG = f"""\
examples:
  {PROG} streams list
  {PROG} streams show STREAM_ID --json
  {PROG} streams pause STREAM_ID --reason "receiver rejects our SETs; investigating"
  {PROG} streams enable STREAM_ID
  {PROG} streams dead-letters STREAM_ID
  {PROG} streams redeliver STREAM_ID --all

Receivers create and manage their streams through the SSF API (see docs/ssf-receivers.md).
A paused stream holds its SETs in order and delivers them when enabled again; a disabled stream
drops them. A status change made here sends the receiver a stream-updated SET. Push delivery
dead-letters a SET the receiver refuses for good (or after its retries); redeliver it once the
receiver is fixed."""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _stats(settings: Settings) -> Any:
    from .ssf.outbox_store import OutboxStore  # the outbox store opens its own connections

    return OutboxStore.open(settings)


def _document(service: StreamService, stream: Stream, stats: dict[str, Any]) -> dict[str, Any]:
    return {
        **service.render(stream),
        "status": stream.status,
        "reason": stream.reason,
        "receiver": {"principal_id": stream.receiver_id, "name": stream.receiver_name},
        "scope": "all Missions" if stream.all_missions else list(stream.resources),
        "subject_operations": list(stream.subject_operations),
        "created_at": stream.created_at,
        "updated_at": stream.updated_at,
        "version": stream.version,
        "queue": stats,
    }


def _empty_stats() -> dict[str, Any]:
    return {
        "queue_depth": 0,
        "offered_unacked": 0,
        "oldest_undelivered_age_seconds": None,
        "dead_letters": 0,
        "head_attempts": 0,
        "next_attempt_at": None,
        "head_last_error": None,
        "last_errors": [],
    }


def cmd_streams_list(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    service = StreamService(ledger)
    streams = service.all_streams()
    store = _stats(s)
    try:
        stats = store.all_stream_stats(ledger.clock.now())
    finally:
        store.close()
    documents = [_document(service, st, stats.get(st.stream_id, _empty_stats())) for st in streams]
    rows = [
        [
            d["stream_id"],
            d["receiver"]["name"],
            "push" if d["delivery"]["method"].endswith("8935") else "poll",
            d["status"],
            len(d["events_delivered"]),
            d["queue"]["queue_depth"],
            _age(d["queue"]["oldest_undelivered_age_seconds"]),
            d["queue"]["dead_letters"],
            len(d["queue"]["last_errors"]),
        ]
        for d in documents
    ]
    headers = [
        "STREAM_ID",
        "RECEIVER",
        "METHOD",
        "STATUS",
        "TYPES",
        "QUEUED",
        "OLDEST",
        "DEAD",
        "ERRORS",
    ]
    text = render_table(headers, rows) if rows else "(no streams: receivers create them via SSF)"
    return Output(documents, text)


def cmd_streams_show(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    service = StreamService(ledger)
    stream = service.stream(args.stream_id)
    store = _stats(s)
    try:
        stats = store.stream_stats(stream.stream_id, ledger.clock.now())
    finally:
        store.close()
    document = _document(service, stream, stats)
    pairs: list[tuple[str, Any]] = [
        ("stream_id", stream.stream_id),
        ("receiver", f"{stream.receiver_name} ({stream.receiver_id})"),
        ("aud", stream.aud),
        ("scope", document["scope"]),
        ("delivery", document["delivery"]["method"]),
        ("endpoint_url", document["delivery"]["endpoint_url"]),
        ("status", stream.status),
        ("reason", stream.reason),
        ("events_delivered", document["events_delivered"] or "(none)"),
        ("set_signing_alg", stream.signing_alg),
        ("subject_operations", len(stream.subject_operations)),
        ("queue_depth", stats["queue_depth"]),
        ("offered_unacked", stats["offered_unacked"]),
        ("oldest_undelivered", _age(stats["oldest_undelivered_age_seconds"])),
    ]
    if stream.delivery_method == PUSH:
        pairs += [
            ("dead_letters", stats["dead_letters"]),
            ("head_attempts", stats["head_attempts"]),
            ("next_attempt_at", stats["next_attempt_at"] or "-"),
            ("head_last_error", stats["head_last_error"] or "-"),
        ]
    pairs += [
        ("created_at", stream.created_at),
        ("updated_at", stream.updated_at),
    ]
    text = render_fields(pairs)
    if stats["last_errors"]:
        rows = [
            [e["recorded_at"], e["jti"], e["err"], e.get("description") or ""]
            for e in stats["last_errors"]
        ]
        text += "\nlast errors reported by the receiver:\n" + render_table(
            ["RECORDED_AT", "JTI", "ERR", "DESCRIPTION"], rows
        )
    return Output(document, text)


def cmd_streams_status(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    status = {"pause": PAUSED, "enable": ENABLED, "disable": DISABLED}[args.streams_command]
    service = StreamService(ledger)
    stream, changed = service.set_status_as_transmitter(
        args.stream_id, status=status, reason=args.reason, actor=s.actor
    )
    document = {**service.status_of(stream), "changed": changed}
    if changed:
        text = f"stream {stream.stream_id} is now {status}; the receiver gets a stream-updated SET"
    else:
        text = f"stream {stream.stream_id} was already {status} (nothing changed)"
    return Output(document, text)


def cmd_streams_dead_letters(
    ledger: MissionLedger, args: argparse.Namespace, s: Settings
) -> Output:
    stream = StreamService(ledger).stream(args.stream_id)
    store = _stats(s)
    try:
        dead = store.push.dead_letters(stream.stream_id)
    finally:
        store.close()
    rows = [
        [
            d["jti"],
            d["event_type"].rsplit("/", 1)[-1],
            d["attempts"],
            d["dead_lettered_at"],
            d["last_error"] or "",
        ]
        for d in dead
    ]
    headers = ["JTI", "EVENT", "ATTEMPTS", "DEAD_LETTERED_AT", "LAST_ERROR"]
    text = (
        render_table(headers, rows)
        if rows
        else f"(no dead letters: stream {stream.stream_id} delivered or is delivering every SET)"
    )
    return Output(dead, text)


def cmd_streams_redeliver(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    stream = StreamService(ledger).stream(args.stream_id)
    store = _stats(s)
    try:
        redelivered = store.push.redeliver(stream.stream_id, None if args.all else args.jti)
    finally:
        store.close()
    document = {"stream_id": stream.stream_id, "redelivered": redelivered}
    if not redelivered:
        return Output(document, f"stream {stream.stream_id} has no dead letters (nothing changed)")
    text = (
        f"{len(redelivered)} dead letter(s) of stream {stream.stream_id} are queued again, "
        "first in line, in their original order (same jtis):\n" + "\n".join(redelivered)
    )
    return Output(document, text)


def add_streams_parser(
    sub: Any,  # argparse's private _SubParsersAction
    common: argparse.ArgumentParser,
) -> None:
    """Register ``streams list|show|pause|enable|disable`` on the top-level subparsers."""

    parser = functools.partial(add_command, common=common)

    streams = parser(
        sub,
        "streams",
        "Inspect the SSF streams receivers created (status, queue depth, oldest undelivered SET, "
        "last errors, push dead letters), pause, enable or disable them as the transmitter, and "
        "redeliver dead letters.",
        STREAMS_EPILOG,
    )
    actions = streams.add_subparsers(dest="streams_command", metavar="ACTION", title="actions")
    actions.required = True

    p = parser(
        actions,
        "list",
        "List every stream, oldest first, with its receiver, status and delivery queue.",
        f"example:\n  {PROG} streams list --json",
    )
    p.set_defaults(handler=cmd_streams_list)

    p = parser(
        actions,
        "show",
        "Show one stream: its configuration, status, scope, subjects and delivery queue, with "
        "the last errors its receiver reported (poll setErrs).",
        f"example:\n  {PROG} streams show STREAM_ID",
    )
    p.add_argument("stream_id", metavar="STREAM_ID", help="from `streams list`")
    p.set_defaults(handler=cmd_streams_show)

    for name, what in (
        ("pause", "Pause a stream: SETs are held in order and delivered when it is enabled."),
        ("enable", "Enable a stream: held SETs are delivered, new ones flow again."),
        ("disable", "Disable a stream: queued SETs are dropped and new ones are not kept."),
    ):
        p = parser(
            actions,
            name,
            f"{what} The receiver is told with a stream-updated SET (SSF §8.1.5).",
            f'example:\n  {PROG} streams {name} STREAM_ID --reason "maintenance until 14:00"',
        )
        p.add_argument("stream_id", metavar="STREAM_ID", help="from `streams list`")
        p.add_argument("--reason", metavar="TEXT", help="sent to the receiver in the SET")
        p.set_defaults(handler=cmd_streams_status)

    p = parser(
        actions,
        "dead-letters",
        "List a push stream's dead letters: SETs the receiver refused for good (e.g. 400 "
        "invalid_request) or whose retries ran out, oldest first, with the last error.",
        f"example:\n  {PROG} streams dead-letters STREAM_ID --json",
    )
    p.add_argument("stream_id", metavar="STREAM_ID", help="from `streams list`")
    p.set_defaults(handler=cmd_streams_dead_letters)

    p = parser(
        actions,
        "redeliver",
        "Queue a push stream's dead letters again (after the receiver was fixed): they go "
        "first, in their original order, with their attempts reset; the same SETs, the same "
        "jtis.",
        f"examples:\n  {PROG} streams redeliver STREAM_ID --all\n"
        f"  {PROG} streams redeliver STREAM_ID --jti JTI [JTI ...]",
    )
    p.add_argument("stream_id", metavar="STREAM_ID", help="from `streams list`")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--jti",
        nargs="+",
        action="extend",
        metavar="JTI",
        help="these dead letters (from `streams dead-letters`); none changes if one is not",
    )
    which.add_argument("--all", action="store_true", help="every dead letter of the stream")
    p.set_defaults(handler=cmd_streams_redeliver)
