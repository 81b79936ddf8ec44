"""The read-model contract: which projections exist, their tables, and their DDL files.

The DDL lives in the repository's top-level ``projections/`` folder (one file per projection and
backend, ``<projection>.<backend>.sql``) and is applied from there, so what other tools read can
never drift from what runs. An installed wheel carries the same folder as
``mission_ledger/_contracts/projections`` (``pyproject.toml`` force-includes it).

The SSF outbox's DDL lives there too (``ssf_outbox.<backend>.sql``), but its tables are a delivery
queue, not a view: they are listed apart (:data:`NOT_REBUILDABLE_TABLES`) and ``rebuild`` never
touches them.
"""

from __future__ import annotations

from pathlib import Path

from ..domain.errors import InvalidInput

MISSION_INDEX = "mission_index"
DELEGATION_GRAPH = "delegation_graph"
AUTHORIZATION = "authorization"

#: projection name → the tables its DDL file creates (dropped and recreated by ``rebuild``).
PROJECTION_TABLES: dict[str, tuple[str, ...]] = {
    MISSION_INDEX: ("mission_index",),
    DELEGATION_GRAPH: ("delegation_graph",),
    AUTHORIZATION: ("mission_authorization",),  # AUTHORIZATION is reserved in SQL
}
PROJECTIONS: tuple[str, ...] = tuple(PROJECTION_TABLES)

SSF_OUTBOX = "ssf_outbox"
#: Delivery state with DDL files here too, but NOT a view: a queue of signed SETs that can never
#: be rebuilt from the ledger (a replay would re-send history under new jtis), so ``rebuild``
#: neither drops nor replays it (see :mod:`mission_ledger.ssf.outbox_store`).
NOT_REBUILDABLE_TABLES: dict[str, tuple[str, ...]] = {
    SSF_OUTBOX: ("ssf_streams", "ssf_missions", "ssf_queue", "ssf_set_errors", "ssf_push_secrets"),
}

_HERE = Path(__file__).resolve()
_INSTALLED = _HERE.parents[1] / "_contracts" / "projections"  # mission_ledger/_contracts/…
_CHECKOUT = _HERE.parents[3] / "projections"  # <repo>/src/mission_ledger/projections/ → <repo>


def projections_dir() -> Path:
    """Where the projection DDL files are: the wheel's copy, else the repository checkout's."""
    for candidate in (_INSTALLED, _CHECKOUT):
        if (candidate / f"{MISSION_INDEX}.sqlite.sql").is_file():
            return candidate
    raise FileNotFoundError(
        "the projection DDL files are missing: looked in "
        f"{_INSTALLED} (installed wheel) and {_CHECKOUT} (repository checkout)"
    )


def ddl_statements(projection: str, backend: str) -> list[str]:
    """The statements of ``projections/<projection>.<backend>.sql`` (comments stripped).

    The files hold plain DDL separated by ``;`` (no procedural bodies), so a split suffices.
    """
    if projection not in PROJECTION_TABLES and projection not in NOT_REBUILDABLE_TABLES:
        raise ValueError(f"unknown projection {projection!r}")
    if backend not in ("sqlite", "postgres"):
        raise ValueError(f"unknown backend {backend!r}")
    text = (projections_dir() / f"{projection}.{backend}.sql").read_text(encoding="utf-8")
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def resolve_projections(names: str | None) -> tuple[str, ...]:
    """``None`` or ``"all"``: every projection; else the one named (InvalidInput if unknown)."""
    if names is None or names == "all":
        return PROJECTIONS
    if names in NOT_REBUILDABLE_TABLES:
        raise InvalidInput(
            f"{names} is a delivery queue, not a view: rebuilding it would re-send every Security "
            f"Event Token in the ledger's history, so it cannot be rebuilt; choose one of "
            f"{', '.join(PROJECTIONS)}, or all (which leaves it alone)",
            field="projection",
        )
    if names not in PROJECTION_TABLES:
        raise InvalidInput(
            f"unknown projection {names!r}: choose one of {', '.join(PROJECTIONS)}, or all",
            field="projection",
        )
    return (names,)
