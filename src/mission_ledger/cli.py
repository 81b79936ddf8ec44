"""The ``mission-ledger`` command line: every ledger command and read, for operators and scripts.

Output is human-readable by default (aligned ``key: value`` lines, tables for lists); ``--json``
prints the JSON documents instead. Exit codes: 0 success, 1 storage unavailable or an unexpected
failure, 2 invalid input (usage errors included), 3 not found, 4 conflict or illegal transition,
5 ``audit verify`` found a break. Errors go to stderr as ``error: …`` (or a JSON object with
``--json``), never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from .bootstrap import open_ledger
from .config import ENV_DATABASE_URL, Settings
from .domain.anchors import KNOWN_TYPS, anchor
from .domain.errors import InvalidInput, MissionLedgerError, NotFound
from .domain.timefmt import parse_rfc3339
from .ledger import DEFAULT_SYSTEM_ACTOR, CommandResult, MissionLedger

PROG = "mission-ledger"
EXIT_AUDIT_BREAK = 5

WALKTHROUGH = f"""\
walk-through (each command prints the id the next one needs):
  {PROG} propose --file proposal.json                 → proposal_id
  {PROG} approve PROPOSAL_ID                          → mission_id (an active Mission)
  {PROG} delegate MISSION_ID --agent agent-7 --authority-file child.json   → child mission_id
  {PROG} suspend MISSION_ID --reason "incident 42"    (live children are suspended too)
  {PROG} resume MISSION_ID                            (and the children it suspended)
  {PROG} revoke MISSION_ID --reason "done with it"    (live children are cascaded)
  {PROG} audit verify                                 (recompute every hash chain)

storage: --data DIR (SQLite files, default ./var or $MISSION_LEDGER_DATA) or
--database-url postgresql://USER@HOST:PORT/DB[?schema=NAME] (or ${ENV_DATABASE_URL}).
Global options may be given before or after the command.
exit codes: 0 ok, 1 storage unavailable, 2 invalid input, 3 not found,
4 conflict or illegal transition, 5 audit break found."""


class UsageError(Exception):
    """An argparse usage error, raised instead of exiting so ``main`` can format it."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


@dataclasses.dataclass
class Output:
    """What a handler produced: a JSON document and its human rendering, plus the exit code."""

    document: Any
    text: str
    exit_code: int = 0


# -- input ----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json(source: str, *, option: str) -> Any:
    """Read a JSON value from a file (``-`` = stdin); InvalidInput naming the option on failure."""
    where = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidInput(
            f"cannot read {option} {where}: {error.strerror or error}", field=option
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{option} {where} is not UTF-8 text", field=option) from None
    if not text.strip():
        raise InvalidInput(f"{option} {where} is empty; it must hold a JSON value", field=option)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f"{option} {where} is not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno})",
            field=option,
        ) from None
    except ValueError as error:
        raise InvalidInput(f"{option} {where} is not valid JSON: {error}", field=option) from None


def _maybe_json(source: str | None, option: str) -> Any:
    return None if source is None else read_json(source, option=option)


# -- rendering ------------------------------------------------------------------------------------


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def render_fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """Aligned ``key: value`` lines; ``None`` values are left out."""
    shown = [(k, v) for k, v in pairs if v is not None]
    if not shown:
        return ""
    width = max(len(k) for k, _ in shown) + 1
    return "\n".join(f"{k + ':':<{width}} {_compact(v)}" for k, v in shown)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _mission_pairs(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    parent = doc.get("parent")
    children = doc.get("children") or []
    intent = doc.get("intent") or {}
    return [
        ("mission_id", doc.get("mission_id")),
        ("state", doc.get("state")),
        ("version", doc.get("version")),
        ("user", doc.get("user")),
        ("agent", doc.get("agent")),
        ("goal", intent.get("goal") if isinstance(intent, dict) else None),
        ("authority_hash", doc.get("authority_hash")),
        ("authority_set", doc.get("authority_set")),
        ("expires_at", doc.get("expires_at")),
        ("stage", doc.get("stage")),
        ("parent", f"{parent['id']} (depth {parent.get('depth')})" if parent else None),
        ("children", [c.get("mission_id") for c in children] if children else None),
        ("predecessor", doc.get("predecessor")),
        ("successor", doc.get("successor")),
        ("suspend_until", doc.get("suspend_until")),
        ("on_expiry", doc.get("on_expiry")),
        ("suspended_by", doc.get("suspended_by")),
        ("reason", doc.get("reason")),
        ("proposal_id", doc.get("proposal_id")),
        ("head_hash", doc.get("head_hash")),
        ("as_of", doc.get("as_of")),
    ]


def _proposal_pairs(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    intent = doc.get("intent") or {}
    return [
        ("proposal_id", doc.get("proposal_id")),
        ("state", doc.get("state")),
        ("version", doc.get("version")),
        ("user", doc.get("user")),
        ("agent", doc.get("agent")),
        ("goal", intent.get("goal") if isinstance(intent, dict) else None),
        ("intent_hash", doc.get("intent_hash")),
        ("proposal_hash", doc.get("proposal_hash")),
        ("authority_set", doc.get("authority_set")),
        ("expires_at", doc.get("expires_at")),
        ("stages", doc.get("stages")),
        ("predecessor", doc.get("predecessor")),
        ("submitted_by", doc.get("submitted_by")),
        ("decided_by", doc.get("decided_by")),
        ("decision_reason", doc.get("decision_reason")),
        ("mission_id", doc.get("mission_id")),
    ]


def render_document(doc: dict[str, Any]) -> str:
    """A Mission or a Proposal as aligned lines (the Mission's events as a table, if present)."""
    if "mission_id" in doc and "proposal_hash" not in doc:
        text = render_fields(_mission_pairs(doc))
    elif "proposal_id" in doc:
        text = render_fields(_proposal_pairs(doc))
    else:
        text = render_fields(list(doc.items()))
    rests_on = doc.get("rests_on")
    if rests_on:
        table = render_table(
            ["VERSION", "TYPE", "TIMESTAMP", "EVENT_ID", "HASH"],
            [[e["version"], e["type"], e["timestamp"], e["event_id"], e["hash"]] for e in rests_on],
        )
        text += "\n\nrests on:\n" + table
    return text


def command_output(result: CommandResult, key: str | None = None) -> Output:
    """The output of a state-changing command (``changed``/``replayed`` surfaced)."""
    document = dict(result.document)
    document["changed"] = result.changed
    if result.replayed:
        document["replayed"] = True
    text = render_document(result.document)
    if result.replayed:
        text += f"\n(no change: already done; replayed the result of idempotency key {key!r})"
    elif not result.changed:
        text += f"\n(no change: already {result.document.get('state', 'so')})"
    return Output(document, text)


# -- handlers -------------------------------------------------------------------------------------

Handler = Callable[[MissionLedger, argparse.Namespace, Settings], Output]


def _key(args: argparse.Namespace) -> str | None:
    value: str | None = getattr(args, "idempotency_key", None)
    return value


def _expected(args: argparse.Namespace) -> int | None:
    value: int | None = getattr(args, "expected_version", None)
    return value


def cmd_propose(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    document = read_json(args.file, option="--file")
    result = ledger.propose(document, actor=s.actor, idempotency_key=_key(args))
    return command_output(result, _key(args))


def cmd_approve(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    if args.wildcard_reason and not args.allow_wildcard:
        raise InvalidInput(
            "--wildcard-reason only makes sense with --allow-wildcard", field="wildcard_reason"
        )
    result = ledger.approve(
        args.proposal_id,
        actor=s.actor,
        authority_set=_maybe_json(args.authority_file, "--authority-file"),
        evidence=_maybe_json(args.evidence_file, "--evidence-file"),
        method=args.method,
        template_id=args.template_id,
        template_version=args.template_version,
        rule_ids=args.rule_id,
        allow_wildcard=args.allow_wildcard,
        wildcard_reason=args.wildcard_reason,
        expires_at=args.expires_at,
        idempotency_key=_key(args),
    )
    return command_output(result, _key(args))


def cmd_deny(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    decide = ledger.deny if args.command == "deny" else ledger.withdraw
    result = decide(args.proposal_id, actor=s.actor, reason=args.reason, idempotency_key=_key(args))
    return command_output(result, _key(args))


def cmd_lifecycle(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    common: dict[str, Any] = {
        "actor": s.actor,
        "reason": args.reason,
        "idempotency_key": _key(args),
        "expected_version": _expected(args),
    }
    if args.command == "suspend":
        result = ledger.suspend(
            args.mission_id, until=args.until, on_expiry=args.on_expiry, **common
        )
    elif args.command == "resume":
        result = ledger.resume(args.mission_id, **common)
    elif args.command == "revoke":
        result = ledger.revoke(args.mission_id, **common)
    elif args.command == "complete":
        result = ledger.complete(args.mission_id, **common)
    elif args.command == "narrow":
        authority = read_json(args.authority_file, option="--authority-file")
        result = ledger.narrow(args.mission_id, authority, **common)
    else:  # stage
        result = ledger.advance_stage(args.mission_id, to_stage=args.to, **common)
    return command_output(result, _key(args))


def cmd_delegate(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    authority = read_json(args.authority_file, option="--authority-file")
    result = ledger.delegate(
        args.mission_id,
        agent=args.agent,
        authority_set=authority,
        actor=s.actor,
        expires_at=args.expires_at,
        idempotency_key=_key(args),
        expected_version=_expected(args),
    )
    return command_output(result, _key(args))


def cmd_expire_due(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    actor = args.actor if "actor" in vars(args) else DEFAULT_SYSTEM_ACTOR
    report = ledger.expire_due(actor=actor).to_dict()
    lines = [
        f"{name}: {len(ids)}" + (f"  {', '.join(ids)}" if ids else "")
        for name, ids in report.items()
        if name != "skipped"
    ]
    lines.extend(f"skipped: {item['id']}  ({item['why']})" for item in report["skipped"])
    if not any(report.values()):
        lines.append("(nothing was due)")
    return Output(report, "\n".join(lines))


def _kind_of(ledger: MissionLedger, ident: str) -> str:
    try:
        ledger.get_mission(ident)
        return "mission"
    except NotFound:
        pass
    try:
        ledger.get_proposal(ident)
        return "proposal"
    except NotFound:
        raise NotFound(f"no Mission or proposal {ident}") from None


def cmd_show(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    as_of = parse_rfc3339(args.as_of, field="as_of") if args.as_of else None
    if _kind_of(ledger, args.id) == "proposal":
        if as_of is not None or args.version is not None:
            raise InvalidInput(
                f"{args.id} is a proposal; --as-of and --version apply to Missions only "
                f"(see `{PROG} history {args.id}` for its events)",
                field="as_of" if as_of is not None else "version",
            )
        document = ledger.get_proposal(args.id).to_dict(ledger.clock.now())
    else:
        document = ledger.mission_as_of(args.id, as_of=as_of, version=args.version)
    return Output(document, render_document(document))


def cmd_history(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    events = ledger.history(args.id)
    table = render_table(
        ["VERSION", "TYPE", "TIMESTAMP", "ACTOR", "REASON", "HASH"],
        [
            [e["version"], e["type"], e["timestamp"], e.get("actor"), e.get("reason"), e["hash"]]
            for e in events
        ],
    )
    return Output({"id": args.id, "events": events}, table)


def cmd_list(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    now = ledger.clock.now()
    if args.proposals:
        if args.parent is not None:
            raise InvalidInput("--parent filters Missions, not proposals", field="parent")
        proposals = [
            p
            for p in ledger.list_proposals(state=args.state)
            if (args.user is None or p.user == args.user)
            and (args.agent is None or p.agent == args.agent)
        ]
        rows = [
            {**dataclasses.asdict(p), "state": p.effective_state(now), "stored_state": p.state}
            for p in proposals
        ]
        columns = ["proposal_id", "state", "version", "user", "agent", "expires_at", "mission_id"]
        table = render_table([c.upper() for c in columns], [[r[c] for c in columns] for r in rows])
        return Output({"proposals": rows}, table if rows else "(no proposals)")
    missions = ledger.list_missions(
        state=args.state, user=args.user, agent=args.agent, parent=args.parent
    )
    rows = [
        {**dataclasses.asdict(m), "state": m.effective_state(now), "stored_state": m.state}
        for m in missions
    ]
    columns = ["mission_id", "state", "version", "user", "agent", "parent", "expires_at"]
    table = render_table([c.upper() for c in columns], [[r[c] for c in columns] for r in rows])
    return Output({"missions": rows}, table if rows else "(no Missions)")


def cmd_hash(args: argparse.Namespace) -> Output:
    value = read_json(args.file, option="--file")
    try:
        result = anchor(args.typ, args.iss, value)
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"cannot hash this value: {error}", field="--file") from None
    return Output({"typ": args.typ, "iss": args.iss, "anchor": result}, result)


def _audit_module() -> Any:
    try:
        return importlib.import_module("mission_ledger.audit")
    except ModuleNotFoundError as error:
        if error.name != "mission_ledger.audit":
            raise
        raise MissionLedgerError(
            "audit support is not available in this installation (mission_ledger.audit is missing)"
        ) from None


def cmd_audit(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    audit = _audit_module()
    audit_dir = Path(args.audit_dir) if args.audit_dir else s.audit_dir()
    if args.audit_command == "verify":
        report = audit.verify(ledger, audit_dir=audit_dir)
        return Output(report.to_dict(), str(report.summary()), 0 if report.ok else EXIT_AUDIT_BREAK)
    if args.audit_command == "checkpoint":
        checkpoint: dict[str, Any] = audit.checkpoint(ledger, audit_dir=audit_dir)
        return Output(checkpoint, render_fields(list(checkpoint.items())))
    since = parse_rfc3339(args.since, field="since") if args.since else None
    if args.output in (None, "-"):
        count = int(audit.export(ledger, sys.stdout, audit_dir=audit_dir, since=since))
        sys.stdout.flush()
        print(f"exported {count} events", file=sys.stderr)
        return Output(None, "")
    try:
        target: Any = open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as error:
        raise InvalidInput(
            f"cannot write --output {args.output}: {error.strerror or error}", field="output"
        ) from None
    with target:
        count = int(audit.export(ledger, target, audit_dir=audit_dir, since=since))
    return Output(
        {"exported": count, "output": args.output}, f"exported {count} events to {args.output}"
    )


# -- the parser -----------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse ``type`` for whole numbers ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_command(
    where: Any, name: str, summary: str, epilog: str, common: argparse.ArgumentParser, **kwargs: Any
) -> argparse.ArgumentParser:
    """Add one (sub)command with a wrapped description, an epilog and the global options.

    ``where`` is argparse's subparsers action; every command module registers through this.
    """
    parser: argparse.ArgumentParser = where.add_parser(
        name,
        help=summary,
        description=textwrap.fill(summary, 88),
        epilog=epilog,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    return parser


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--data",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="keep the ledger in SQLite files in DIR (default ./var or $MISSION_LEDGER_DATA); "
        f"overrides ${ENV_DATABASE_URL}",
    )
    group.add_argument(
        "--database-url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="keep the ledger in PostgreSQL: postgresql://USER@HOST:PORT/DB[?schema=NAME] "
        f"(or ${ENV_DATABASE_URL}); not together with --data",
    )
    group.add_argument(
        "--issuer",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="this Authority's issuer URL, hashed into every anchor (or $MISSION_LEDGER_ISSUER)",
    )
    group.add_argument(
        "--actor",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help='who runs the command, recorded on every event (or $MISSION_LEDGER_ACTOR; "operator")',
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON documents (and JSON errors on stderr) instead of text",
    )


def _add_idempotency(parser: argparse.ArgumentParser, *, expected: bool = True) -> None:
    parser.add_argument(
        "--idempotency-key",
        metavar="K",
        help="make the command safe to retry: the same key and arguments replay the first result",
    )
    if expected:
        parser.add_argument(
            "--expected-version",
            metavar="N",
            type=int,
            help="refuse (exit 4) unless the Mission is still at version N",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=textwrap.fill(
            "The Mission ledger: propose, approve, delegate and end Missions (bounded "
            "delegations of authority to AI agents), and audit their hash-chained history.",
            88,
        ),
        epilog=WALKTHROUGH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser)
    common = _Parser(add_help=False)
    _add_global_options(common)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True

    def add(name: str, summary: str, example: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add_command(sub, name, summary, f"example:\n  {example}", common, **kwargs)

    p = add(
        "propose",
        "Submit a proposal document (user, agent, task, intent, authority_set …); prints the "
        "pending proposal with its intent_hash and proposal_hash.",
        f"{PROG} propose --file proposal.json --actor agent-1",
    )
    p.add_argument(
        "--file", required=True, metavar="F", help="the proposal JSON document, or - for stdin"
    )
    _add_idempotency(p, expected=False)
    p.set_defaults(handler=cmd_propose)

    p = add(
        "approve",
        "Approve a pending proposal: opens an active Mission (the approver must not be the "
        "proposing agent). By default the proposed Authority Set is granted as is.",
        f"{PROG} approve PROPOSAL_ID --actor alice --evidence-file ticket.json",
    )
    p.add_argument("proposal_id", metavar="PROPOSAL_ID")
    p.add_argument(
        "--authority-file", metavar="F", help="grant this Authority Set instead of the proposed one"
    )
    p.add_argument("--evidence-file", metavar="F", help="JSON evidence recorded with the approval")
    p.add_argument(
        "--method",
        choices=("manual", "template", "policy"),
        default="manual",
        help="how the Authority Set was compiled (default manual)",
    )
    p.add_argument("--template-id", metavar="ID", help="the template used (--method template)")
    p.add_argument("--template-version", metavar="V", help="the template's version")
    p.add_argument(
        "--rule-id",
        metavar="R",
        action="append",
        default=[],
        help="a policy rule that decided it (--method policy; repeatable)",
    )
    p.add_argument(
        "--allow-wildcard",
        action="store_true",
        help='grant the "*" action (needs --wildcard-reason; the Mission is flagged)',
    )
    p.add_argument("--wildcard-reason", metavar="TEXT", help="why the wildcard is acceptable")
    p.add_argument(
        "--expires-at", metavar="T", help="end the Mission earlier than proposed (RFC 3339)"
    )
    _add_idempotency(p, expected=False)
    p.set_defaults(handler=cmd_approve)

    for name, verb in (("deny", "Deny"), ("withdraw", "Withdraw")):
        p = add(
            name,
            f"{verb} a pending proposal (no Mission is created).",
            f'{PROG} {name} PROPOSAL_ID --reason "out of scope"',
        )
        p.add_argument("proposal_id", metavar="PROPOSAL_ID")
        p.add_argument("--reason", metavar="TEXT", help="recorded with the decision")
        _add_idempotency(p, expected=False)
        p.set_defaults(handler=cmd_deny)

    lifecycle = {
        "suspend": (
            "Suspend an active Mission; its live descendants are suspended with it. With "
            "--until the ledger resumes or revokes it when the deadline passes (expire-due).",
            f'{PROG} suspend MISSION_ID --reason "incident 42" '
            "--until 2026-07-01T00:00:00Z --on-expiry resume",
        ),
        "resume": (
            "Resume a suspended Mission and the descendants its suspension suspended.",
            f"{PROG} resume MISSION_ID --expected-version 3",
        ),
        "revoke": (
            "Revoke a Mission for good; every live descendant is cascaded.",
            f'{PROG} revoke MISSION_ID --reason "agent misbehaved"',
        ),
        "complete": (
            "Mark a Mission completed; every live descendant is cascaded.",
            f'{PROG} complete MISSION_ID --reason "invoices reconciled"',
        ),
        "narrow": (
            "Replace a Mission's Authority Set with a subset of it.",
            f"{PROG} narrow MISSION_ID --authority-file narrower.json",
        ),
        "stage": (
            "Advance a staged Mission to its next stage (or the named later one).",
            f"{PROG} stage MISSION_ID --to review",
        ),
    }
    for name, (summary, example) in lifecycle.items():
        p = add(name, summary, example)
        p.add_argument("mission_id", metavar="MISSION_ID")
        p.add_argument("--reason", metavar="TEXT", help="recorded on the event")
        if name == "suspend":
            p.add_argument("--until", metavar="T", help="deadline of the suspension (RFC 3339)")
            p.add_argument(
                "--on-expiry",
                choices=("resume", "revoke"),
                help="what happens at the --until deadline",
            )
        elif name == "narrow":
            p.add_argument(
                "--authority-file",
                metavar="F",
                required=True,
                help="the new (narrower) Authority Set JSON, or - for stdin",
            )
        elif name == "stage":
            p.add_argument("--to", metavar="STAGE", help="the stage to move to (default: next)")
        _add_idempotency(p)
        p.set_defaults(handler=cmd_lifecycle)

    p = add(
        "delegate",
        "Create a child Mission for another agent with a subset of this Mission's authority "
        "(the parent's entry must permit children for that agent); prints the child.",
        f"{PROG} delegate MISSION_ID --agent agent-7 --authority-file child.json --actor agent-1",
    )
    p.add_argument("mission_id", metavar="MISSION_ID", help="the parent Mission")
    p.add_argument("--agent", metavar="ID", required=True, help="the child Mission's agent")
    p.add_argument(
        "--authority-file",
        metavar="F",
        required=True,
        help="the child's Authority Set JSON, or - for stdin",
    )
    p.add_argument("--expires-at", metavar="T", help="end the child earlier than the parent")
    _add_idempotency(p)
    p.set_defaults(handler=cmd_delegate)

    p = add(
        "expire-due",
        "Record every expiry and suspension deadline that has passed (run it from cron); "
        f"acts as {DEFAULT_SYSTEM_ACTOR} unless --actor is given.",
        f"{PROG} expire-due --json",
    )
    p.set_defaults(handler=cmd_expire_due)

    p = add(
        "show",
        "Show a Mission (now, at a past instant, or at a version) with the events it rests on; "
        "for a proposal id, show the proposal.",
        f"{PROG} show MISSION_ID --as-of 2026-05-01T12:00:00Z",
    )
    p.add_argument("id", metavar="ID", help="a mission_id or a proposal_id")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--as-of", metavar="T", help="the Mission as it was at T (RFC 3339)")
    when.add_argument("--version", metavar="N", type=int, help="the Mission at version N")
    p.set_defaults(handler=cmd_show)

    p = add(
        "history",
        "List a Mission's (or proposal's) events, oldest first, with their hashes.",
        f"{PROG} history MISSION_ID",
    )
    p.add_argument("id", metavar="ID", help="a mission_id or a proposal_id")
    p.set_defaults(handler=cmd_history)

    p = add(
        "list",
        "List Missions (or, with --proposals, proposals), oldest first.",
        f"{PROG} list --state active --agent agent-1",
    )
    p.add_argument("--state", metavar="S", help="e.g. active, suspended, revoked, expired")
    p.add_argument("--user", metavar="U", help="only this user's")
    p.add_argument("--agent", metavar="A", help="only this agent's")
    p.add_argument("--parent", metavar="ID", help="only the children of this Mission")
    p.add_argument("--proposals", action="store_true", help="list proposals instead")
    p.set_defaults(handler=cmd_list)

    p = add(
        "hash",
        "Print the drafts' integrity anchor (sha-256:…) of a JSON value under TYP and --iss; "
        f"needs no storage. Known TYPs: {', '.join(KNOWN_TYPS)}.",
        f"echo '{{\"goal\": …}}' | {PROG} hash mission-intent --iss https://as.example.com",
    )
    p.add_argument("typ", metavar="TYP", help="the envelope typ, e.g. mission-intent")
    p.add_argument("--iss", metavar="URL", required=True, help="the issuer URL")
    p.add_argument("--file", metavar="F", default="-", help="the JSON value (default stdin)")
    p.set_defaults(handler=None)

    p = add(
        "audit",
        "Verify the hash chains, write a signed checkpoint, or export the event log.",
        f"{PROG} audit verify",
    )
    audit_sub = p.add_subparsers(dest="audit_command", metavar="ACTION", title="actions")
    audit_sub.required = True
    audit_help = {
        "verify": (
            "Recompute every event hash and check the checkpoints; exit 5 naming the first "
            "break (Mission, version, event).",
            f"{PROG} audit verify --json",
        ),
        "checkpoint": (
            "Record a signed checkpoint of the ledger's current heads in the audit directory.",
            f"{PROG} audit checkpoint",
        ),
        "export": (
            "Export the events (JSON lines) for an external auditor.",
            f"{PROG} audit export --since 2026-01-01T00:00:00Z --output events.jsonl",
        ),
    }
    for name, (summary, example) in audit_help.items():
        a: argparse.ArgumentParser = audit_sub.add_parser(
            name,
            help=summary,
            description=textwrap.fill(summary, 88),
            epilog=f"example:\n  {example}",
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        a.add_argument(
            "--audit-dir",
            metavar="DIR",
            help="where checkpoints and their key live (default DATA/audit)",
        )
        if name == "export":
            a.add_argument("--since", metavar="T", help="only events at or after T (RFC 3339)")
            a.add_argument("--output", metavar="F", help="write to F instead of stdout")
        a.set_defaults(handler=cmd_audit)
    from .cli_tokens import add_tokens_parser  # here: cli_tokens imports this module

    add_tokens_parser(sub, common)
    from .cli_keys import add_keys_parser  # here: cli_keys imports this module

    add_keys_parser(sub, common)
    from .cli_streams import add_streams_parser  # here: cli_streams imports this module

    add_streams_parser(sub, common)
    from .cli_serve import add_serve_parser  # here: cli_serve imports this module

    add_serve_parser(sub, common)
    from .cli_projections import add_projection_parsers  # here: it imports this module

    add_projection_parsers(sub, common)
    return parser


# -- running --------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    given = vars(args)
    if "data" in given and "database_url" in given:
        raise UsageError(
            "--data and --database-url are mutually exclusive: --data keeps the ledger in SQLite "
            "files in DIR, --database-url in PostgreSQL; give only one of them",
            "",
        )
    environ: dict[str, str] = dict(os.environ)
    if "data" in given:
        environ.pop(ENV_DATABASE_URL, None)  # an explicit --data beats the environment
    return Settings.from_env(
        environ,
        data_dir=Path(given["data"]) if "data" in given else None,
        database_url=given.get("database_url"),
        issuer=given.get("issuer"),
        actor=given.get("actor"),
    )


def _print_error(error: MissionLedgerError | UsageError, as_json: bool) -> None:
    if isinstance(error, UsageError):
        body: dict[str, Any] = {"code": "usage", "description": error.message}
        if not as_json and error.usage:
            print(error.usage.rstrip(), file=sys.stderr)
    else:
        body = error.to_dict()
    if as_json:
        print(json.dumps({"error": body}, ensure_ascii=False), file=sys.stderr)
        return
    print(f"error: {body['description']}", file=sys.stderr)
    for name, value in body.items():
        if name not in ("code", "description"):
            print(f"{name}: {_compact(value)}", file=sys.stderr)


def _emit(output: Output, as_json: bool, out: IO[str]) -> None:
    if as_json:
        if output.document is not None:
            print(json.dumps(output.document, indent=2, ensure_ascii=False), file=out)
    elif output.text:
        print(output.text, file=out)


def _run(args: argparse.Namespace, as_json: bool) -> int:
    if args.command == "hash":
        output = cmd_hash(args)
    else:
        settings = _settings(args)
        handler: Handler = args.handler
        ledger = open_ledger(settings)
        try:
            output = handler(ledger, args, settings)
        finally:
            ledger.close()
    _emit(output, as_json, sys.stdout)
    return output.exit_code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to ``sys.exit``)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in arguments
    try:
        args = build_parser().parse_args(arguments)
    except UsageError as error:
        _print_error(error, as_json)
        return 2
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    as_json = bool(getattr(args, "json", False))
    try:
        return _run(args, as_json)
    except UsageError as error:
        _print_error(error, as_json)
        return 2
    except MissionLedgerError as error:
        _print_error(error, as_json)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mission-ledger history M | head`: the reader has enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"error: unexpected failure: {type(error).__name__}: {message}", file=sys.stderr)
        return 1
