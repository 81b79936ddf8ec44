"""The push retry policy without I/O: how an answer is classified, Retry-After, the schedules."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from mission_ledger.domain.errors import InvalidInput
from mission_ledger.ssf.push import PushOptions, RetrySchedule
from mission_ledger.ssf.rfc8935_push import Kind, classify_answer, parse_retry_after


def _error(err: str, description: str | None = "why") -> bytes:
    body: dict[str, str] = {"err": err}
    if description is not None:
        body["description"] = description
    return json.dumps(body).encode()


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_is_delivered(status: int) -> None:
    assert classify_answer(status, b"", None).kind is Kind.DELIVERED


@pytest.mark.parametrize(
    "err", ["invalid_request", "invalid_issuer", "invalid_audience", "invalid_state", "made_up"]
)
def test_permanent_errors_and_unknown_codes_dead_letter_at_once(err: str) -> None:
    attempt = classify_answer(400, _error(err, "told you"), None, "Bad Request")
    assert attempt.kind is Kind.PERMANENT
    assert attempt.reported == (err, "told you")
    assert attempt.error == f"HTTP 400 Bad Request: {err}: told you"


@pytest.mark.parametrize("err", ["invalid_key", "authentication_failed", "access_denied"])
def test_fixable_errors_go_on_the_slow_schedule(err: str) -> None:
    attempt = classify_answer(400, _error(err, None), None)
    assert attempt.kind is Kind.SLOW
    assert attempt.reported == (err, None)


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"description": "no err"}'])
def test_a_400_without_an_rfc8935_body_is_permanent(body: bytes) -> None:
    attempt = classify_answer(400, body, None)
    assert attempt.kind is Kind.PERMANENT
    assert attempt.reported == ("http_400", None)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, Kind.SLOW),
        (403, Kind.SLOW),
        (404, Kind.SLOW),
        (410, Kind.SLOW),
        (413, Kind.SLOW),
        (408, Kind.FAST),
        (425, Kind.FAST),
        (429, Kind.FAST),
        (500, Kind.FAST),
        (502, Kind.FAST),
        (503, Kind.FAST),
        (504, Kind.FAST),
        (100, Kind.FAST),
    ],
)
def test_other_statuses(status: int, kind: Kind) -> None:
    attempt = classify_answer(status, b"", 3.0)
    assert attempt.kind is kind
    assert attempt.retry_after == 3.0
    assert attempt.status == status


def test_a_long_description_is_shortened_in_last_error_but_reported_whole() -> None:
    attempt = classify_answer(400, _error("invalid_request", "x" * 900), None)
    assert attempt.error is not None
    assert len(attempt.error) < 330
    assert attempt.reported == ("invalid_request", "x" * 900)


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now) == 90.0
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(earlier, now) == 0.0
    for junk in ("", "-5", "soon", "1.5", "Mon, 99 Foo 2026"):
        assert parse_retry_after(junk, now) is None, junk


def test_full_jitter_stays_within_the_exponential_ceiling() -> None:
    schedule = RetrySchedule(base=0.5, cap=60.0, attempts=20)
    assert [schedule.ceiling(n) for n in range(1, 10)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
    ]
    assert schedule.ceiling(10_000) == 60.0
    rng = random.Random(7)
    delays = [schedule.delay(4, rng) for _ in range(500)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert min(delays) < 1.0 < 3.0 < max(delays)  # spread over the whole range: full jitter


def test_schedules_parse_and_refuse_nonsense() -> None:
    assert RetrySchedule.parse("0.5, 60, 20") == RetrySchedule(0.5, 60.0, 20)
    for text in ("1,2", "a,b,c", "0,1,1", "2,1,1", "1,2,0"):
        with pytest.raises(InvalidInput):
            RetrySchedule.parse(text)


def test_push_options_refuse_nonsense() -> None:
    assert PushOptions().concurrency == 64
    assert (PushOptions().connect_timeout, PushOptions().total_timeout) == (2.0, 10.0)
    for bad in ({"concurrency": 0}, {"total_timeout": 0}, {"scan_interval": 0}):
        with pytest.raises(InvalidInput):
            PushOptions(**bad)  # type: ignore[arg-type]
