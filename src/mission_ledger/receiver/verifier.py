"""Verify the SETs a transmitter delivers, with its JWKS fetched, cached and refreshed.

:class:`SetVerifier` wraps :func:`mission_ledger.ssf.rfc8417_set.verify_set` (the checks
themselves live there, once): algorithms pinned (RS256/ES256 by default — never ``none``, never
HMAC), header ``typ`` exactly ``secevent+jwt``, the key chosen by ``kid``, the signature checked
before any claim, then ``iss`` (the issuer), ``aud`` (this receiver's audience, string or
array), no ``sub``, no ``exp``, exactly one event. What this class adds is the JWKS:

- fetched on first use from ``jwks_uri`` and cached;
- a SET whose ``kid`` is not in the cached set triggers **one** refresh — but at most one fetch
  per ``refresh_interval`` seconds (default 60) whatever the number of SETs, so SETs with random
  ``kid`` values cannot make this receiver hammer the transmitter — and is then verified against
  the refreshed set; still unknown → :class:`~mission_ledger.errors.InvalidSetKey`
  (``invalid_key``). Concurrent verifications share one fetch.
- an unreachable JWKS is :class:`~.errors.JwksUnavailable` (not the SET's fault: push answers 503,
  poll leaves the SET unacknowledged).

An unknown-``kid`` refusal that happened without a refresh (the rate limit held it back) has
``error.details["refreshed"] is False``: the poll loop leaves such a SET unacknowledged so the
transmitter redelivers it once a refresh is allowed (a key rotated just after our last fetch).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..errors import InvalidSetKey
from ..ssf.keys import SUPPORTED_ALGORITHMS
from ..ssf.rfc8417_set import verify_set
from ._http import DEFAULT_TIMEOUT, check_url, request
from .errors import JwksUnavailable, TransmitterError, TransmitterUnavailable

__all__ = ["DEFAULT_REFRESH_INTERVAL", "SetVerifier", "VerifiedSet"]

log = logging.getLogger("mission_ledger.receiver")

DEFAULT_REFRESH_INTERVAL = 60.0  # seconds between two JWKS fetches triggered by unknown kids
FAILED_FETCH_RETRY = 5.0  # seconds between attempts while no JWKS could be fetched at all


@dataclass(frozen=True)
class VerifiedSet:
    """A SET whose signature and claims checked out: the claims, and the one event."""

    token: str = field(repr=False)
    claims: dict[str, Any]
    event_type: str
    event: dict[str, Any]

    @classmethod
    def from_claims(cls, token: str, claims: dict[str, Any]) -> VerifiedSet:
        ((event_type, event),) = claims["events"].items()
        return cls(token=token, claims=claims, event_type=event_type, event=dict(event))

    @property
    def jti(self) -> str:
        return str(self.claims["jti"])

    @property
    def iss(self) -> str:
        return str(self.claims["iss"])

    @property
    def txn(self) -> str | None:
        txn = self.claims.get("txn")
        return txn if isinstance(txn, str) else None

    @property
    def iat(self) -> int | float | None:
        iat = self.claims.get("iat")
        return iat if isinstance(iat, int | float) and not isinstance(iat, bool) else None

    @property
    def sub_id(self) -> dict[str, Any]:
        sub_id = self.claims.get("sub_id")
        return sub_id if isinstance(sub_id, dict) else {}


def _kids(jwks: Mapping[str, Any]) -> set[str]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        return set()
    return {k["kid"] for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}


class SetVerifier:
    """Verify SETs from ``issuer`` addressed to ``audience`` (see the module doc).

    ``clock`` (monotonic seconds) is injectable for tests; :attr:`fetches` counts JWKS fetches.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_uri: str,
        session: aiohttp.ClientSession,
        *,
        algorithms: Iterable[str] = SUPPORTED_ALGORITHMS,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        allow_http: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        pinned = tuple(algorithms)
        if not pinned or any(a not in SUPPORTED_ALGORITHMS for a in pinned):
            raise ValueError(
                f"SET algorithms are pinned to a non-empty subset of {SUPPORTED_ALGORITHMS} "
                f"(never 'none', never HMAC); got {pinned}"
            )
        if refresh_interval < 0:
            raise ValueError("refresh_interval must not be negative")
        self.issuer = issuer
        self.audience = audience
        self.jwks_uri = check_url(jwks_uri, "jwks_uri", allow_http=allow_http)
        self.session = session
        self.algorithms = pinned
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self._clock = clock
        self._jwks: dict[str, Any] | None = None
        self._fetched_at: float | None = None
        self._failure: tuple[float, JwksUnavailable] | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def __repr__(self) -> str:
        return f"SetVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    # -- the JWKS ----------------------------------------------------------------------------

    async def _fetch(self) -> dict[str, Any]:
        self.fetches += 1
        self._fetched_at = self._clock()
        try:
            reply = await request(
                self.session, "GET", self.jwks_uri, operation="fetch JWKS", timeout=self.timeout
            )
        except (TransmitterError, TransmitterUnavailable) as error:
            raise JwksUnavailable(
                f"the transmitter's JWKS at {self.jwks_uri} cannot be fetched: {error.description}",
                url=self.jwks_uri,
            ) from None
        document = reply.json()
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise JwksUnavailable(
                f"the document at {self.jwks_uri} is not a JWK Set (RFC 7517 §5: an object with "
                "a 'keys' array)",
                url=self.jwks_uri,
            )
        self._jwks = document
        self._failure = None
        log.info(
            "fetched the transmitter's JWKS",
            extra={"jwks_uri": self.jwks_uri, "kids": sorted(_kids(document))},
        )
        return document

    async def jwks(self) -> dict[str, Any]:
        """The cached JWKS (fetched on first use; after a failed first fetch, fetched again
        at most every :data:`FAILED_FETCH_RETRY` seconds, the failure repeated meanwhile)."""
        if self._jwks is not None:
            return self._jwks
        async with self._lock:
            if self._jwks is not None:
                return self._jwks
            failed = self._failure
            if failed is not None and self._clock() - failed[0] < FAILED_FETCH_RETRY:
                raise JwksUnavailable(failed[1].description, url=self.jwks_uri)
            try:
                return await self._fetch()
            except JwksUnavailable as error:
                self._failure = (self._clock(), error)
                raise

    async def refresh(self) -> dict[str, Any]:
        """Fetch the JWKS now, whatever the rate limit (e.g. on an operator's request)."""
        async with self._lock:
            return await self._fetch()

    async def _refresh_for(self, kid: str) -> bool:
        """Refresh for an unknown ``kid`` unless the rate limit forbids it; whether a fetch
        happened (here, or concurrently by someone else since ``kid`` was found missing)."""
        async with self._lock:
            if self._jwks is not None and kid in _kids(self._jwks):
                return True  # another task refreshed while we waited
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < self.refresh_interval:
                log.warning(
                    "SET with unknown kid; JWKS refresh rate-limited",
                    extra={"kid": kid, "refresh_interval": self.refresh_interval},
                )
                return False
            await self._fetch()
            return True

    # -- verification ------------------------------------------------------------------------

    def _check(self, token: str, jwks: Mapping[str, Any]) -> dict[str, Any]:
        return verify_set(
            token, jwks, issuer=self.issuer, audience=self.audience, algorithms=self.algorithms
        )

    async def verify(self, token: str) -> VerifiedSet:
        """The verified SET, or a :class:`~mission_ledger.errors.SetVerificationError` whose
        ``code`` is the RFC 8935 ``err`` to report; :class:`~.errors.JwksUnavailable` when the
        keys cannot be had."""
        jwks = await self.jwks()
        try:
            claims = self._check(token, jwks)
        except InvalidSetKey as error:
            kid = error.details.get("kid")
            if not isinstance(kid, str) or kid in _kids(jwks):
                raise  # no kid, or a known key that is unacceptable: refreshing cannot help
            if not await self._refresh_for(kid):
                raise InvalidSetKey(
                    f"no published key has kid {kid!r} (the JWKS was fetched less than "
                    f"{self.refresh_interval:g} s ago; not refreshed again yet)",
                    kid=kid,
                    refreshed=False,
                ) from None
            assert self._jwks is not None
            try:
                claims = self._check(token, self._jwks)
            except InvalidSetKey as again:
                if again.details.get("kid") == kid:
                    raise InvalidSetKey(
                        f"no published key has kid {kid!r}, even after refreshing the JWKS",
                        kid=kid,
                        refreshed=True,
                    ) from None
                raise
        return VerifiedSet.from_claims(token, claims)
