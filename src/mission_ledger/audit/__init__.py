"""Tamper evidence for the event store: verify the hash chains, sign checkpoints, export.

Threat model
============

The adversary can write to the event store (the SQLite file or the PostgreSQL schema): a DBA, a
compromised host, a careless migration, a restore of an old backup. They cannot read or write the
audit directory's *private* signing key (keep it on another volume or host), and the verifier
holds the *public* key and the checkpoint log from a place the adversary does not control.

:func:`verify` reads the stored rows directly with SQL (for the in-memory backend, the recorder's
list), never through the repository, the aggregate cache or the snapshots, in one read
transaction (a consistent snapshot) and one ordered, streamed pass; it recomputes every chain.
It detects, with no checkpoint at all:

* a changed byte in an event's stored state — the state no longer decodes (``undecodable``), or
  decodes to different values than the event's own ``hash`` covers (``hash_mismatch``), or to the
  same values through bytes the writer would never have produced, such as ``T`` → ``t`` in an ISO
  timestamp (``noncanonical_state``), or breaks the next event's link (``broken_link``), or moves
  the event to another id (``event_id_mismatch``);
* a changed topic: another event class changes the hashed payload (``hash_mismatch``), an alias of
  the same class is flagged (``topic_mismatch``), an unknown one does not decode;
* a deleted event in the middle or at the start of a stream (``missing_version``);
* swapped or renumbered events (``event_id_mismatch`` and ``hash_mismatch``; ``out_of_order``
  when the notification order disagrees with the version order);
* a snapshot whose ``head_hash`` is not the hash of the event at its version, that points at a
  missing event, or whose state differs from replaying the stream (``snapshot_mismatch``); this
  matters because ``repository.get`` starts from the snapshot.

The chain is *unkeyed*: anyone who can write the store can also recompute hashes. So three things
are detected only against a signed checkpoint (:func:`checkpoint`; Ed25519, key outside the
store), for the history the checkpoint covers:

* dropping the newest events of a stream, or a whole stream, or rolling the store back to an
  older backup (``truncated``; also when the store's highest notification id falls below the
  checkpointed position);
* rewriting a stream consistently, every hash recomputed (``rewritten``);
* an edited or forged checkpoint line (``bad_checkpoint_signature``).

Not detected:

* anything newer than the latest checkpoint: its newest events can be dropped or consistently
  rewritten, and new streams with valid chains appended. The chain proves that history was not
  edited since it was checkpointed, not who wrote an event. Checkpoint often.
* deletion of checkpoint lines or of the whole log, or replacing both the public key and the log.
  Ship each checkpoint line (``export`` includes them) and the public key to a separate,
  append-only place; anyone holding the private key can sign anything.
* other tables (tracking, projections) and the group-commit boundaries; wrong but consistently
  recorded timestamps (the writer's clock is trusted).

Should event classes ever gain ``class_version`` upcasters, ``noncanonical_state`` must compare
against the stored version's encoding; today no event class is versioned.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

from eventsourcing.utils import get_topic

from ..domain.canonical import canonicalize
from ..domain.timefmt import format_rfc3339
from ..errors import AuditError, CheckpointRefused
from ..ledger import MissionLedger, event_type_name
from .chain_check import _Verifier
from .checkpoints import (
    ALG,
    CHECKPOINTS_FILE,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    _b64url,
    _read_checkpoints,
    _signing_key,
    _thumbprint,
)
from .report import _HEADLINE, Problem, VerifyReport, _headline
from .stored_rows import PAGE_SIZE, _open_source

__all__ = [
    "ALG",
    "CHECKPOINTS_FILE",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "AuditError",
    "CheckpointRefused",
    "Problem",
    "VerifyReport",
    "checkpoint",
    "export",
    "verify",
]


# -- the API --------------------------------------------------------------------------------------


def _verify(
    ledger: MissionLedger, audit_dir: Path, *, collect_heads: bool
) -> tuple[VerifyReport, dict[str, dict[str, Any]]]:
    checkpoints = _read_checkpoints(audit_dir)
    with _open_source(ledger) as source:
        position = source.max_position()
        verifier = _Verifier(ledger, source, checkpoints.heads(), collect_heads)
        verifier.run()
    problems = verifier.problems()
    if checkpoints.body is not None and (position or 0) < checkpoints.body["position"]:
        problems.append(
            Problem(
                "truncated",
                "",
                None,
                None,
                f"the store's highest notification id is {position or 0}, below the "
                f"checkpointed position {checkpoints.body['position']}: events were deleted or "
                "an older backup was restored",
            )
        )
    problems += checkpoints.problems
    report = VerifyReport(
        ok=not problems,
        streams=verifier.streams,
        events=verifier.events,
        position=position,
        checkpoint=checkpoints.summary(),
        problems=problems,
    )
    return report, verifier.heads


def verify(ledger: MissionLedger, *, audit_dir: Path) -> VerifyReport:
    """Recompute every chain from the stored rows and compare with the latest checkpoint."""
    report, _ = _verify(ledger, audit_dir, collect_heads=False)
    return report


def checkpoint(ledger: MissionLedger, *, audit_dir: Path) -> dict[str, Any]:
    """Sign the current heads of every stream and append the record to the checkpoint log.

    Refused (:class:`CheckpointRefused`) unless the ledger verifies cleanly: a checkpoint vouches
    for the history it covers.
    """
    report, heads = _verify(ledger, audit_dir, collect_heads=True)
    if not report.ok:
        first = report.problems[0]
        raise CheckpointRefused(
            f"refusing to checkpoint a ledger that does not verify: {len(report.problems)} "
            f"problem(s), first {_headline(first)}. Run `audit verify` and "
            "investigate before checkpointing.",
            problems=len(report.problems),
            first_problem=asdict(first),
        )
    key = _signing_key(audit_dir)
    body = {
        "issuer": ledger.issuer,
        "created_at": format_rfc3339(ledger.clock.now()),
        "position": report.position or 0,
        "streams": heads,
        "stream_count": report.streams,
        "event_count": report.events,
    }
    record = {
        "checkpoint": body,
        "signature": _b64url(key.sign(canonicalize(body))),
        "public_key_thumbprint": _thumbprint(key.public_key()),
        "alg": ALG,
    }
    line = canonicalize(record) + b"\n"
    path = audit_dir / CHECKPOINTS_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "ab") as log:
            fcntl.flock(log.fileno(), fcntl.LOCK_EX)
            log.write(line)
            log.flush()
            os.fsync(log.fileno())
    except OSError as error:
        raise AuditError(f"cannot append to {path}: {error}") from None
    return record


def _json_default(value: object) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return format_rfc3339(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def export(
    ledger: MissionLedger, out: TextIO, *, audit_dir: Path, since: datetime | None = None
) -> int:
    """Write every event (notification order) and then every checkpoint as JSON Lines.

    Each event line carries what its ``hash`` covers, so an auditor can recompute the chains
    offline: ``fields`` holds every field but the headline ones (``originator_topic`` included,
    which :func:`mission_ledger.ledger.event_document` leaves out), ``topic`` is the hashed topic
    and ``timestamp`` parses back to the hashed instant. A row that does not decode is written as
    ``{"kind": "undecodable", …}`` with its raw state, and not counted. Returns the number of
    event lines.
    """
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    count = 0
    start = 1
    while True:
        page = ledger.recorder.select_notifications(start, PAGE_SIZE)
        if not page:
            break
        for notification in page:
            try:
                event: Any = ledger.mapper.to_domain_event(notification)
            except Exception as error:  # evidence is exported, not dropped
                out.write(
                    _dumps(
                        {
                            "kind": "undecodable",
                            "position": notification.id,
                            "aggregate_id": str(notification.originator_id),
                            "version": notification.originator_version,
                            "topic": notification.topic,
                            "state_b64": base64.b64encode(notification.state).decode("ascii"),
                            "error": f"{type(error).__name__}: {error}",
                        }
                    )
                    + "\n"
                )
                continue
            if since is not None and event.timestamp < since:
                continue
            state = vars(event)
            topic = get_topic(type(event))
            document = {
                "kind": "event",
                "position": notification.id,
                "aggregate_id": str(event.originator_id),
                "version": event.originator_version,
                "type": event_type_name(topic),
                "topic": topic,
                "timestamp": format_rfc3339(event.timestamp),
                "event_id": state.get("event_id"),
                "actor": state.get("actor"),
                "prev_hash": state.get("prev_hash"),
                "hash": state.get("hash"),
                "fields": {k: v for k, v in state.items() if k not in _HEADLINE},
            }
            out.write(_dumps(document) + "\n")
            count += 1
        start = page[-1].id + 1
    path = audit_dir / CHECKPOINTS_FILE
    if path.exists():
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    out.write(_dumps({"kind": "checkpoint", **record}) + "\n")
    return count
