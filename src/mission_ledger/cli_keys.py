"""``mission-ledger keys``: list and rotate the keys that sign the Authority's SETs.

Like every other command these work on the store directly (``--data`` / ``--database-url``), so
an operator can rotate while the server runs: the stores are read on every use, and a running
server publishes the new key and signs with it at once. ``keys rotate`` without ``--alg``
rotates both algorithms: a rotation is usually a response to "these keys may be exposed" or a
schedule, neither of which spares one algorithm, and it is harmless (the old key stays published
until the SETs signed with it are delivered). ``--alg`` narrows it to one.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from .cli import PROG, Output, add_command, render_table
from .config import Settings
from .domain.errors import InvalidInput
from .ledger import MissionLedger
from .ssf.keys import SUPPORTED_ALGORITHMS, KeyStore, key_store_location, open_key_store

KEYS_EXPLAINED = """\
what a kid is: the key's RFC 7638 thumbprint (base64url SHA-256 of its public JWK). Every SET
names the key that signed it in its header's "kid"; receivers pick that key from GET /jwks.json.

where the keys live: with --data DIR (SQLite), PEM files (mode 0600) and index.json in
DIR/ssf-keys on this host; with --database-url (PostgreSQL), the table ssf_signing_keys in the
store's schema, shared by every server, worker and CLI on any host. The server creates one
RS256 and one ES256 key on its first start.

rotation: a key is active (signs new SETs, published) → retiring (published only) → retired
(unpublished, private key deleted). `keys rotate` makes a new active key; the old one stays in
/jwks.json as retiring until no queued SET signed with it remains, and then the SET outbox
retires it by itself, so receivers can always verify what is still in flight. A running server
sees a rotation at once: no restart."""

KEYS_EPILOG = f"""\
examples:
  {PROG} keys list                          # every key, oldest first
  {PROG} keys rotate                        # a new RS256 and a new ES256 key
  {PROG} keys rotate --alg RS256 --json     # one algorithm; the new kid in JSON

{KEYS_EXPLAINED}"""

NO_KEYS = (
    "(no signing keys yet: the server creates one RS256 and one ES256 key on its first start; "
    f"`{PROG} keys rotate` creates them now)"
)


def _store(settings: Settings) -> KeyStore:
    if settings.backend() == "memory":
        raise InvalidInput(
            "a memory: store's signing keys live and die with the server process that made them; "
            "give --data DIR or --database-url URL to manage persistent keys",
            field="database_url",
        )
    return open_key_store(settings)


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "kid": row["kid"],
        "alg": row["alg"],
        "state": row["status"],
        "created_at": row["created_at"],
        "rotated_at": row.get("rotated_at"),
    }


def cmd_keys_list(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    store = _store(s)
    try:
        rows = [_row(r) for r in store.list()]
    finally:
        store.close()
    where = key_store_location(s)
    document = {"location": where, "keys": rows}
    if not rows:
        return Output(document, f"{NO_KEYS}\nkeys in: {where}")
    columns = ["kid", "alg", "state", "created_at", "rotated_at"]
    table = render_table([c.upper() for c in columns], [[r[c] for c in columns] for r in rows])
    return Output(document, f"{table}\n\nkeys in: {where}")


def cmd_keys_rotate(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    algs = [args.alg] if args.alg else list(SUPPORTED_ALGORITHMS)
    store = _store(s)
    try:
        # Informational: which key each rotation retires (read just before; another process
        # rotating at the same moment could make it stale, never the rotation itself).
        before = {r["alg"]: r["kid"] for r in store.list() if r["status"] == "active"}
        rotated = []
        for alg in algs:
            key = store.rotate(alg)
            previous = before.get(alg)
            rotated.append(
                {
                    "alg": alg,
                    "kid": key.kid,
                    "previous_kid": previous,
                    "previous_state": "retiring" if previous else None,
                }
            )
    finally:
        store.close()
    lines = []
    for entry in rotated:
        lines.append(f"{entry['alg']}: new active key {entry['kid']}")
        if entry["previous_kid"]:
            lines.append(
                f"  previous key {entry['previous_kid']} is now retiring: still published in "
                "/jwks.json so receivers can verify SETs already signed with it; the SET outbox "
                "retires it (unpublishes it, deletes its private key) once no queued SET signed "
                "with it remains"
            )
        else:
            lines.append("  (there was no active key to retire)")
    return Output({"location": key_store_location(s), "rotated": rotated}, "\n".join(lines))


def add_keys_parser(
    sub: Any,  # argparse's private _SubParsersAction
    common: argparse.ArgumentParser,
) -> None:
    """Register ``keys list|rotate`` on the top-level subparsers."""

    parser = functools.partial(add_command, common=common)

    keys = parser(
        sub,
        "keys",
        "List and rotate the keys that sign the Authority's Security Event Tokens (SETs), "
        "published at GET /jwks.json.",
        KEYS_EPILOG,
    )
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", title="actions")
    actions.required = True

    p = parser(
        actions,
        "list",
        "List every signing key, oldest first: kid, alg, state (active, retiring, retired), "
        "created_at and rotated_at (when it stopped signing; PostgreSQL stores only). Never "
        "prints private keys.",
        f"example:\n  {PROG} keys list --json\n\n{KEYS_EXPLAINED}",
    )
    p.set_defaults(handler=cmd_keys_list)

    p = parser(
        actions,
        "rotate",
        "Make a new active signing key for --alg (default: both RS256 and ES256) and print its "
        "kid. The previous key becomes retiring: it stays published until no queued SET signed "
        "with it remains, then the SET outbox retires it automatically.",
        f"examples:\n  {PROG} keys rotate\n  {PROG} keys rotate --alg ES256\n\n{KEYS_EXPLAINED}",
    )
    p.add_argument(
        "--alg",
        choices=SUPPORTED_ALGORITHMS,
        help="rotate only this algorithm's key (default: both)",
    )
    p.set_defaults(handler=cmd_keys_rotate)
