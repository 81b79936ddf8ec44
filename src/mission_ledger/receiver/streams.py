"""The SSF stream management client (OpenID SSF 1.0 §8) and the RFC 8936 poll request.

:class:`StreamClient` talks to the endpoints a :class:`~.discovery.TransmitterMetadata` names,
with the receiver's bearer token in the ``Authorization`` header (never in a URL). Every stream
configuration it returns (create, read, list, update, replace) has been checked to carry
``iss`` == the metadata ``issuer`` (SSF §8.1.1): a mismatch is an :class:`IssuerMismatch`.
HTTP errors become the typed :class:`~.errors.TransmitterError` subclasses (400, 401, 403, 404,
409, 429 with ``retry_after``, else server error).

=====================  ============================================  ========================
method                 request                                       success
=====================  ============================================  ========================
``create``             ``POST configuration_endpoint``               201 → StreamConfig
``get``                ``GET configuration_endpoint?stream_id=``     200 → StreamConfig
``list``               ``GET configuration_endpoint``                200 → [StreamConfig]
``update``             ``PATCH configuration_endpoint``              200 → StreamConfig
``replace``            ``PUT configuration_endpoint``                200 → StreamConfig
``delete``             ``DELETE configuration_endpoint?stream_id=``  204
``get_status``         ``GET status_endpoint?stream_id=``            200 → StreamStatus
``set_status``         ``POST status_endpoint``                      200 → StreamStatus
``add_subject``        ``POST add_subject_endpoint``                 200 (or 204)
``remove_subject``     ``POST remove_subject_endpoint``              204 (or 200)
``request_verification`` ``POST verification_endpoint``             204
``poll``               ``POST <poll endpoint_url>``                  200 → PollResponse
=====================  ============================================  ========================

A 202 to update/replace/set_status ("accepted, not processed yet", SSF §8.1.1.3, §8.1.2.2)
returns what a fresh read shows at that moment.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from ._http import DEFAULT_TIMEOUT, Reply, check_url, request
from .discovery import POLL, PUSH, TransmitterMetadata
from .errors import DiscoveryError, InvalidResponse, IssuerMismatch, StreamNotFound

__all__ = [
    "Delivery",
    "PollResponse",
    "StreamClient",
    "StreamConfig",
    "StreamStatus",
]

M = TypeVar("M", bound=BaseModel)

DEFAULT_POLL_TIMEOUT = 60.0  # seconds: longer than any sane transmitter long-poll hold


class Delivery(BaseModel):
    """A stream's ``delivery`` object (SSF §6.1)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str
    endpoint_url: str | None = None
    authorization_header: str | None = None


class StreamConfig(BaseModel):
    """A Stream Configuration (SSF §8.1.1). Unknown members are kept (``model_extra``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    stream_id: str
    iss: str
    aud: str | tuple[str, ...]
    delivery: Delivery
    events_delivered: tuple[str, ...]
    events_supported: tuple[str, ...] | None = None
    events_requested: tuple[str, ...] | None = None
    description: str | None = None
    min_verification_interval: int | None = None
    inactivity_timeout: int | None = None

    @property
    def audiences(self) -> tuple[str, ...]:
        return (self.aud,) if isinstance(self.aud, str) else self.aud

    @property
    def poll_url(self) -> str | None:
        """The transmitter-assigned poll URL of a poll stream, else ``None``."""
        return self.delivery.endpoint_url if self.delivery.method == POLL else None


class StreamStatus(BaseModel):
    """A stream's status (SSF §8.1.2): ``enabled``, ``paused`` or ``disabled``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    stream_id: str
    status: str
    reason: str | None = None


class PollResponse(BaseModel):
    """An RFC 8936 §2.3 poll response: ``sets`` (jti → compact SET) and ``moreAvailable``."""

    model_config = ConfigDict(frozen=True)

    sets: dict[str, str]
    more_available: bool = False


def _model(cls: type[M], document: Any, what: str, url: str) -> M:
    try:
        return cls.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise InvalidResponse(
            f"{what} from {url} is not valid: {where}: {first['msg']}", url=url
        ) from None


class StreamClient:
    """Manage this receiver's streams at one transmitter (see the module doc).

    ``token`` is the receiver's OAuth bearer token (for our Authority: a ``receiver`` token from
    ``mission-ledger tokens create --role receiver``); assign :attr:`token` to rotate it.
    """

    def __init__(
        self,
        metadata: TransmitterMetadata,
        token: str,
        session: aiohttp.ClientSession,
        *,
        allow_http: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.metadata = metadata
        self.token = token
        self.session = session
        self.allow_http = allow_http
        self.timeout = timeout

    def __repr__(self) -> str:  # never the token
        return f"StreamClient(issuer={self.metadata.issuer!r})"

    # -- plumbing ----------------------------------------------------------------------------

    def _url(self, member: str) -> str:
        url = self.metadata.endpoint(member)
        return check_url(url, member, allow_http=self.allow_http)

    async def _call(
        self,
        method: str,
        member: str,
        operation: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        ok: tuple[int, ...],
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        return await request(
            self.session,
            method,
            self._url(member),
            operation=operation,
            token=self.token,
            body=body,
            params=params,
            ok=ok,
            headers=headers,
            timeout=self.timeout,
        )

    def _config(self, document: Any, url: str) -> StreamConfig:
        config = _model(StreamConfig, document, "the stream configuration", url)
        if config.iss != self.metadata.issuer:
            raise IssuerMismatch(
                f"stream {config.stream_id} from {url} names iss {config.iss!r}, not the "
                f"discovered issuer {self.metadata.issuer!r} (SSF §8.1.1 requires them to be "
                "identical); do not use this stream",
                expected=self.metadata.issuer,
                actual=config.iss,
            )
        return config

    # -- configuration ------------------------------------------------------------------------

    async def create(
        self,
        events_requested: Sequence[str] | None = None,
        *,
        endpoint_url: str | None = None,
        authorization_header: str | None = None,
        description: str | None = None,
        **extra: Any,
    ) -> StreamConfig:
        """Create a stream: poll by default, push when ``endpoint_url`` is given.

        ``authorization_header`` (push only) is what the transmitter must send, verbatim, as the
        ``Authorization`` header of every push (give :func:`~.push.push_handler` the same value
        as ``expected_authorization``). ``extra``: more receiver-supplied members (ours:
        ``mission_capabilities_supported``, ``set_signing_alg``).
        """
        delivery: dict[str, Any]
        if endpoint_url is not None:
            method = PUSH
            delivery = {"method": PUSH, "endpoint_url": endpoint_url}
            if authorization_header is not None:
                delivery["authorization_header"] = authorization_header
        else:
            if authorization_header is not None:
                raise ValueError("authorization_header is for push streams (give endpoint_url)")
            method = POLL
            delivery = {"method": POLL}
        if not self.metadata.supports(method):
            raise DiscoveryError(
                f"the transmitter {self.metadata.issuer} does not advertise delivery method "
                f"{method} (delivery_methods_supported: {self.metadata.delivery_methods_supported})"
            )
        body: dict[str, Any] = {"delivery": delivery, **extra}
        if events_requested is not None:
            body["events_requested"] = list(events_requested)
        if description is not None:
            body["description"] = description
        reply = await self._call(
            "POST", "configuration_endpoint", "create stream", body=body, ok=(201, 200)
        )
        return self._config(reply.json(), reply.url)

    async def get(self, stream_id: str) -> StreamConfig:
        """One stream's configuration (404 → :class:`~.errors.StreamNotFound`)."""
        reply = await self._call(
            "GET",
            "configuration_endpoint",
            "read stream",
            params={"stream_id": stream_id},
            ok=(200,),
        )
        return self._config(reply.json(), reply.url)

    async def list(self) -> list[StreamConfig]:
        """Every stream of this receiver (``[]`` when none; a 404 is taken as none)."""
        try:
            reply = await self._call("GET", "configuration_endpoint", "list streams", ok=(200,))
        except StreamNotFound:
            return []
        document = reply.json()
        if isinstance(document, dict):  # a transmitter with one stream may answer an object
            document = [document]
        if not isinstance(document, list):
            raise InvalidResponse(
                f"the stream list from {reply.url} is not a JSON array", url=reply.url
            )
        return [self._config(item, reply.url) for item in document]

    async def update(self, stream_id: str, **members: Any) -> StreamConfig:
        """PATCH: change the receiver-supplied ``members`` given; the others stay."""
        body = {**members, "stream_id": stream_id}
        reply = await self._call(
            "PATCH", "configuration_endpoint", "update stream", body=body, ok=(200, 202)
        )
        if reply.status == 202:
            return await self.get(stream_id)
        return self._config(reply.json(), reply.url)

    async def replace(self, stream_id: str, **members: Any) -> StreamConfig:
        """PUT: ``members`` are the full set of receiver-supplied members; absent ones are
        removed by the transmitter."""
        body = {**members, "stream_id": stream_id}
        reply = await self._call(
            "PUT", "configuration_endpoint", "replace stream", body=body, ok=(200, 202)
        )
        if reply.status == 202:
            return await self.get(stream_id)
        return self._config(reply.json(), reply.url)

    async def delete(self, stream_id: str) -> None:
        await self._call(
            "DELETE",
            "configuration_endpoint",
            "delete stream",
            params={"stream_id": stream_id},
            ok=(204, 200),
        )

    # -- status, subjects, verification ---------------------------------------------------

    async def get_status(self, stream_id: str) -> StreamStatus:
        reply = await self._call(
            "GET",
            "status_endpoint",
            "read stream status",
            params={"stream_id": stream_id},
            ok=(200,),
        )
        return _model(StreamStatus, reply.json(), "the stream status", reply.url)

    async def set_status(
        self, stream_id: str, status: str, reason: str | None = None
    ) -> StreamStatus:
        """Ask for ``enabled``, ``paused`` or ``disabled`` (SSF §8.1.2.2)."""
        body: dict[str, Any] = {"stream_id": stream_id, "status": status}
        if reason is not None:
            body["reason"] = reason
        reply = await self._call(
            "POST", "status_endpoint", "update stream status", body=body, ok=(200, 202)
        )
        if reply.status == 202 or not reply.text.strip():
            return await self.get_status(stream_id)
        return _model(StreamStatus, reply.json(), "the stream status", reply.url)

    async def add_subject(
        self, stream_id: str, subject: Mapping[str, Any], *, verified: bool | None = None
    ) -> None:
        """Add a subject (a subject identifier, SSF §8.1.3.2). Success says nothing about
        whether events will follow (SSF §9.1)."""
        body: dict[str, Any] = {"stream_id": stream_id, "subject": dict(subject)}
        if verified is not None:
            body["verified"] = verified
        await self._call(
            "POST", "add_subject_endpoint", "add subject", body=body, ok=(200, 202, 204)
        )

    async def remove_subject(self, stream_id: str, subject: Mapping[str, Any]) -> None:
        body = {"stream_id": stream_id, "subject": dict(subject)}
        await self._call(
            "POST", "remove_subject_endpoint", "remove subject", body=body, ok=(204, 200, 202)
        )

    async def request_verification(self, stream_id: str, state: str | None = None) -> str:
        """Ask for a verification SET (SSF §8.1.4.2) echoing ``state`` (a fresh random one by
        default); returns the state. Register it first with
        :meth:`~.tracker.MissionTracker.expect_verification` so the event is recognised —
        :meth:`~.tracker.MissionTracker.request_verification` does both, in that order."""
        if state is None:
            state = secrets.token_urlsafe(24)
        await self._call(
            "POST",
            "verification_endpoint",
            "request verification",
            body={"stream_id": stream_id, "state": state},
            ok=(204, 200, 202),
        )
        return state

    # -- polling -----------------------------------------------------------------------------

    async def poll_url(self, stream: str) -> str:
        """``stream`` if it is already a URL, else the poll URL of stream id ``stream``."""
        if stream.startswith(("https://", "http://")):
            return check_url(stream, "the poll URL", allow_http=self.allow_http)
        config = await self.get(stream)
        if config.poll_url is None:
            raise InvalidResponse(
                f"stream {stream} is delivered by {config.delivery.method}, not poll "
                f"({POLL}); it has no poll URL"
            )
        return check_url(config.poll_url, "the poll URL", allow_http=self.allow_http)

    async def poll(
        self,
        url: str,
        *,
        max_events: int | None = None,
        return_immediately: bool = False,
        ack: Sequence[str] = (),
        set_errs: Mapping[str, Mapping[str, str]] | None = None,
        timeout: float = DEFAULT_POLL_TIMEOUT,
    ) -> PollResponse:
        """One RFC 8936 poll request (ack and setErrs included when non-empty).

        ``setErrs`` entries are ``{"err": code, "description": text}``; a request carrying them
        also carries ``Content-Language: en`` (RFC 8936 §2.4.4).
        """
        check_url(url, "the poll URL", allow_http=self.allow_http)
        body: dict[str, Any] = {"returnImmediately": return_immediately}
        if max_events is not None:
            body["maxEvents"] = max_events
        if ack:
            body["ack"] = list(ack)
        headers: dict[str, str] = {}
        if set_errs:
            body["setErrs"] = {jti: dict(value) for jti, value in set_errs.items()}
            headers["Content-Language"] = "en"
        reply = await request(
            self.session,
            "POST",
            url,
            operation="poll",
            token=self.token,
            body=body,
            headers=headers,
            ok=(200,),
            timeout=timeout,
        )
        document = reply.json()
        if not isinstance(document, dict):
            raise InvalidResponse(f"the poll response from {url} is not a JSON object", url=url)
        more = document.get("moreAvailable", False)
        return _model(
            PollResponse,
            {"sets": document.get("sets"), "more_available": more},
            "the poll response",
            url,
        )
