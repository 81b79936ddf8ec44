"""HTTP plumbing shared by discovery, the stream client, the verifier and the poll loop."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from .errors import InsecureUrl, TransmitterUnavailable, error_for_status

DEFAULT_TIMEOUT = 10.0  # seconds, one management call or JWKS fetch
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str, *, allow_http: bool = False) -> str:
    """``url`` if it is an absolute https URL (http only to loopback, or with ``allow_http``).

    SSF §7.1 requires TLS for every endpoint; a bearer token must never travel in clear text
    (RFC 8936 §4.4). Loopback http is allowed for development and tests.
    """
    if not isinstance(url, str) or not url:
        raise InsecureUrl(f"{what} is not a URL: {url!r}")
    parts = urlsplit(url)
    if not parts.hostname:
        raise InsecureUrl(f"{what} is not an absolute URL: {url!r}")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and (allow_http or is_loopback(parts.hostname)):
        return url
    raise InsecureUrl(
        f"{what} must be an https URL (plain http only to a loopback host, or with "
        f"allow_http=True); got {url!r}"
    )


async def read_limited(content: aiohttp.StreamReader, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a body (one more than allowed tells it is too large)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str
    url: str

    def json(self) -> Any:
        """The parsed JSON body, or ``None`` when empty or not JSON."""
        if not self.text.strip():
            return None
        try:
            return json.loads(self.text)
        except ValueError:
            return None


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    operation: str,
    token: str | None = None,
    body: Any = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ok: tuple[int, ...] = (200,),
) -> Reply:
    """One HTTP exchange; an error status raises its typed :class:`TransmitterError`.

    The token goes in the ``Authorization`` header only (never in the URL, RFC 6750 §2.3).
    Redirects are not followed: a token must not be forwarded to another location.
    """
    sent: dict[str, str] = {"Accept": "application/json"}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data: bytes | None = None
    if body is not None:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    try:
        async with session.request(
            method,
            url,
            params=params,
            data=data,
            headers=sent,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            raw = await read_limited(response.content, MAX_RESPONSE_BYTES)
            status = response.status
            reply_headers = response.headers
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
        kind = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
        raise TransmitterUnavailable(
            f"{operation}: {method} {url} failed ({kind}: {error}); the transmitter may be "
            "down or unreachable, retry later",
            url=url,
        ) from None
    if len(raw) > MAX_RESPONSE_BYTES:
        raise TransmitterUnavailable(
            f"{operation}: the answer from {url} is larger than {MAX_RESPONSE_BYTES} bytes",
            url=url,
        )
    reply = Reply(status, reply_headers, raw.decode("utf-8", errors="replace"), url)
    if status not in ok:
        raise error_for_status(operation, status, url, reply.json() or reply.text, reply_headers)
    return reply
