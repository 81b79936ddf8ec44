"""``GET /metrics``: Prometheus text exposition (format 0.0.4), written by hand.

Series:

- ``mission_ledger_http_requests_total{method,route,status}`` (counter);
- ``mission_ledger_http_request_duration_seconds{method,route}`` (histogram, seconds);
- ``mission_ledger_ledger_position`` (gauge: the newest notification id in the event store);
- ``mission_ledger_projection_lag_events`` (gauge: ledger position minus the mission index's);
- ``mission_ledger_authorization_view_position`` (gauge) and
  ``mission_ledger_authorization_view_healthy`` (0/1).

``route`` is the route's pattern (``/missions/{id}``), never the raw path, so the number of
series stays bounded; requests that match no route are counted under ``route="unmatched"``.
The endpoint needs a bearer token of any role: traffic volumes and positions describe the
Authority's use and are not public (configure Prometheus with ``authorization: {credentials:
<token>}`` of, say, an auditor principal).
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler

BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
access_log = logging.getLogger("mission_ledger.http.access")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Histogram:
    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)  # per bucket, not cumulative
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        index = bisect_left(BUCKETS, seconds)
        if index < len(BUCKETS):
            self.counts[index] += 1
        self.count += 1
        self.total += seconds


class HttpMetrics:
    """Request counters and latency histograms; thread-safe, cheap to update."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._durations: dict[tuple[str, str], _Histogram] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            histogram = self._durations.get((method, route))
            if histogram is None:
                histogram = self._durations[(method, route)] = _Histogram()
            histogram.observe(seconds)

    def render(self, gauges: Iterable[tuple[str, str, float]]) -> str:
        """The exposition text; ``gauges`` are ``(name, help, value)``."""
        lines = [
            "# HELP mission_ledger_http_requests_total HTTP requests served, by route and status.",
            "# TYPE mission_ledger_http_requests_total counter",
        ]
        with self._lock:
            requests = sorted(self._requests.items())
            durations = sorted(
                (key, list(h.counts), h.count, h.total) for key, h in self._durations.items()
            )
        for (method, route, status), count in requests:
            labels = _labels((("method", method), ("route", route), ("status", status)))
            lines.append(f"mission_ledger_http_requests_total{labels} {count}")
        name = "mission_ledger_http_request_duration_seconds"
        lines.append(f"# HELP {name} Time to serve an HTTP request, by route.")
        lines.append(f"# TYPE {name} histogram")
        for (method, route), counts, count, total in durations:
            cumulative = 0
            for bound, in_bucket in zip(BUCKETS, counts, strict=True):
                cumulative += in_bucket
                labels = _labels((("method", method), ("route", route), ("le", _number(bound))))
                lines.append(f"{name}_bucket{labels} {cumulative}")
            labels = _labels((("method", method), ("route", route), ("le", "+Inf")))
            lines.append(f"{name}_bucket{labels} {count}")
            base = _labels((("method", method), ("route", route)))
            lines.append(f"{name}_sum{base} {_number(total)}")
            lines.append(f"{name}_count{base} {count}")
        for gauge, help_text, value in gauges:
            lines.append(f"# HELP {gauge} {help_text}")
            lines.append(f"# TYPE {gauge} gauge")
            lines.append(f"{gauge} {_number(value)}")
        return "\n".join(lines) + "\n"


METRICS = web.AppKey("http_metrics", HttpMetrics)


def route_name(request: web.Request) -> str:
    """The matched route's pattern, or ``unmatched``."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"
    canonical: str = resource.canonical
    return canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count, time and log every request (outermost, so it sees the final status)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = route_name(request)
        request.app[METRICS].observe(request.method, route, status, elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "remote": request.remote,
                },
            )
