"""What a verification found: problems and the report the CLI prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

_SUMMARY_LIMIT = 10
_HEADLINE = frozenset(
    {"originator_id", "originator_version", "timestamp", "event_id", "actor", "prev_hash", "hash"}
)


@dataclass(frozen=True)
class Problem:
    """One integrity break. ``aggregate_id`` is ``""`` for breaks of the checkpoint log itself."""

    kind: str
    aggregate_id: str
    version: int | None
    event_id: str | None
    description: str


@dataclass
class VerifyReport:
    """What :func:`verify` found; ``problems`` is ordered so that the first one is the first break.

    Problems of one stream are in version order; streams are ordered by the notification position
    of their earliest broken row; breaks found only against the checkpoint come last.
    ``checkpoint`` summarises the checkpoint compared against (not its full list of heads).
    """

    ok: bool
    streams: int
    events: int
    position: int | None
    checkpoint: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "streams": self.streams,
            "events": self.events,
            "position": self.position,
            "checkpoint": self.checkpoint,
            "first_break": asdict(self.problems[0]) if self.problems else None,
            "problems": [asdict(p) for p in self.problems],
        }

    def summary(self) -> str:
        """Human text: the verdict, the first break (id, version, event id), then a few more."""
        scope = f"{self.streams} streams, {self.events} events, position {self.position or 0}"
        if self.ok:
            if self.checkpoint is None:
                return (
                    f"ledger verified: {scope}. No checkpoint yet, so dropping the newest "
                    "events cannot be detected; run `audit checkpoint`."
                )
            return (
                f"ledger verified: {scope}; consistent with the checkpoint of "
                f"{self.checkpoint['created_at']} (position {self.checkpoint['position']}, "
                f"{self.checkpoint['stream_count']} streams)."
            )
        lines = [
            f"LEDGER INTEGRITY BROKEN: {len(self.problems)} problem(s) in {scope}.",
            f"First break: {_headline(self.problems[0])}",
        ]
        rest = self.problems[1 : 1 + _SUMMARY_LIMIT]
        lines.extend(f"  also: {_headline(p)}" for p in rest)
        if len(self.problems) > 1 + _SUMMARY_LIMIT:
            lines.append(f"  … and {len(self.problems) - 1 - _SUMMARY_LIMIT} more")
        return "\n".join(lines)


def _headline(problem: Problem) -> str:
    """``kind [event id]: description`` (the description names the aggregate and version)."""
    event = f" [event {problem.event_id}]" if problem.event_id else ""
    return f"{problem.kind}{event}: {problem.description}"
