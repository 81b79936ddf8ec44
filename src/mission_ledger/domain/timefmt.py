"""RFC 3339 timestamps as the ledger reads and writes them (timezone-aware; UTC on output)."""

from __future__ import annotations

from datetime import UTC, datetime

from .errors import InvalidInput


def parse_rfc3339(value: object, *, field: str) -> datetime:
    """Parse an RFC 3339 date-time with an explicit offset (``Z`` or ``±hh:mm``)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(
            f"{field} must be an RFC 3339 date-time string such as 2026-12-31T23:59:59Z",
            field=field,
        )
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{field} is not an RFC 3339 date-time: {value!r} (expected e.g. 2026-12-31T23:59:59Z)",
            field=field,
        ) from None
    if "T" not in text.upper() or parsed.tzinfo is None:
        raise InvalidInput(
            f"{field} must be a full date-time with a timezone, e.g. 2026-12-31T23:59:59Z; "
            f"got {value!r}",
            field=field,
        )
    return parsed.astimezone(UTC)


def format_rfc3339(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with a ``Z`` suffix."""
    if moment.tzinfo is None:
        raise ValueError("naive datetimes are not allowed in the ledger")
    utc = moment.astimezone(UTC)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")
