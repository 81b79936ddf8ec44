"""``mission-ledger tokens``: create, list and revoke the principals that call the HTTP API.

These commands work on the store directly (``--data`` / ``--database-url``), like every other
command, so an operator with access to the database can always mint or revoke a token, even when
no operator token exists (or the last one was revoked). The token is printed once, alone on
stdout, so ``TOKEN=$(mission-ledger tokens create …)`` captures it; only its hash is stored.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from .cli import PROG, Output, add_command, render_fields, render_table
from .config import Settings
from .ledger import MissionLedger
from .principals import ROLES, Principal, PrincipalRegistry

TOKENS_EPILOG = f"""\
examples:
  {PROG} tokens create --role operator --name alice@example.com
  {PROG} tokens create --role approver --name bob@example.com
  {PROG} tokens create --role harness --name invoice-bot --agent agent:invoice-bot
  {PROG} tokens create --role auditor --name audit-team
  {PROG} tokens create --role receiver --name erp --audience https://erp.example.com \\
      --resource https://erp.example.com/invoices/ --resource https://erp.example.com/payments/
  {PROG} tokens create --role receiver --name siem --audience https://siem.example.com \\
      --all-missions
  {PROG} tokens list --all
  {PROG} tokens revoke PRINCIPAL_ID

roles: operator (everything), approver (approve/deny proposals), harness (one agent's
proposals and Missions), auditor (reads everything), receiver (a Service: sees the Missions
whose Authority Set touches its --resource prefixes, or all with --all-missions).
A token is printed once; store it now. Lost tokens cannot be recovered: revoke and create
another (names are unique among live principals)."""


def _principal_pairs(p: Principal) -> list[tuple[str, Any]]:
    return [
        ("principal_id", p.principal_id),
        ("name", p.name),
        ("role", p.role),
        ("actor", p.actor),
        ("agent", p.agent),
        ("audience", p.audience),
        ("resources", list(p.resources) if p.resources else None),
        ("all_missions", True if p.all_missions else None),
        ("state", "revoked" if p.revoked else "active"),
        ("created_at", p.created_at),
    ]


def cmd_tokens_create(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    registry = PrincipalRegistry(ledger)
    principal, token = registry.create(
        role=args.role,
        name=args.name,
        actor=s.actor,
        agent=args.agent,
        audience=args.audience,
        resources=args.resource,
        all_missions=args.all_missions,
    )
    if not getattr(args, "json", False):
        print(
            f"created {principal.role} {principal.name} ({principal.principal_id}); "
            "its token (on stdout) is shown only this once: store it now",
            file=sys.stderr,
        )
    return Output({"token": token, **principal.to_dict()}, token)


def cmd_tokens_list(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    principals = PrincipalRegistry(ledger).list(include_revoked=args.all)
    rows = [
        [
            p.principal_id,
            p.name,
            p.role,
            "revoked" if p.revoked else "active",
            p.agent or p.audience,
            "(all Missions)" if p.all_missions else " ".join(p.resources),
            p.created_at,
        ]
        for p in principals
    ]
    headers = ["PRINCIPAL_ID", "NAME", "ROLE", "STATE", "AGENT/AUDIENCE", "RESOURCES", "CREATED_AT"]
    empty = "(no principals)" if args.all else "(no live principals; --all shows revoked ones)"
    return Output([p.to_dict() for p in principals], render_table(headers, rows) if rows else empty)


def cmd_tokens_revoke(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    principal = PrincipalRegistry(ledger).revoke(
        args.principal_id, actor=s.actor, reason=args.reason
    )
    return Output(principal.to_dict(), render_fields(_principal_pairs(principal)))


def add_tokens_parser(
    sub: Any,  # argparse's private _SubParsersAction
    common: argparse.ArgumentParser,
) -> None:
    """Register ``tokens create|list|revoke`` on the top-level subparsers."""

    parser = functools.partial(add_command, common=common)

    tokens = parser(
        sub,
        "tokens",
        "Create, list and revoke the principals (and their bearer tokens) that may call the "
        "Authority's HTTP API.",
        TOKENS_EPILOG,
    )
    actions = tokens.add_subparsers(dest="tokens_command", metavar="ACTION", title="actions")
    actions.required = True

    p = parser(
        actions,
        "create",
        "Register a principal and print its bearer token, alone on stdout (with --json: the "
        "token and the principal). The token is shown only this once.",
        "examples:\n"
        f"  TOKEN=$({PROG} tokens create --role approver --name bob@example.com)\n"
        f"  {PROG} tokens create --role harness --name invoice-bot --agent agent:invoice-bot\n"
        f"  {PROG} tokens create --role receiver --name erp --audience https://erp.example.com "
        "--resource https://erp.example.com/invoices/\n\n"
        "A --resource prefix covers the resources under it, matched at a path boundary:\n"
        "https://erp.example.com/invoices covers …/invoices/42 but not …/invoices-archive;\n"
        "end a prefix with * to match any continuation (…/inv* covers …/inventory too).",
    )
    p.add_argument("--role", required=True, choices=ROLES, help="what the principal may do")
    p.add_argument(
        "--name",
        required=True,
        metavar="NAME",
        help="unique among live principals; 1–64 of A-Z a-z 0-9 . _ : @ -",
    )
    p.add_argument("--agent", metavar="ID", help="harness only: the agent id it acts for")
    p.add_argument(
        "--audience", metavar="AUD", help="receiver only: its audience (e.g. its base URL)"
    )
    p.add_argument(
        "--resource",
        metavar="PREFIX",
        action="append",
        default=[],
        help="receiver only: see Missions touching resources under this URI prefix (repeatable)",
    )
    p.add_argument(
        "--all-missions",
        action="store_true",
        help="receiver only: see every Mission (instead of --resource)",
    )
    p.set_defaults(handler=cmd_tokens_create)

    p = parser(
        actions,
        "list",
        "List the live principals (with --all, revoked ones too), oldest first; never tokens.",
        f"example:\n  {PROG} tokens list --all --json",
    )
    p.add_argument("--all", action="store_true", help="include revoked principals")
    p.set_defaults(handler=cmd_tokens_list)

    p = parser(
        actions,
        "revoke",
        "Revoke a principal: its token stops working at once (a running server notices within "
        "a second). Revoking a revoked principal changes nothing.",
        f'example:\n  {PROG} tokens revoke PRINCIPAL_ID --reason "laptop lost"',
    )
    p.add_argument("principal_id", metavar="PRINCIPAL_ID", help="from `tokens list`")
    p.add_argument("--reason", metavar="TEXT", help="recorded on the event")
    p.set_defaults(handler=cmd_tokens_revoke)
