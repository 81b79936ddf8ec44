"""Transmitter discovery (OpenID SSF 1.0 §7): where the metadata is, and what it must say.

:func:`well_known_url` inserts ``/.well-known/ssf-configuration`` between the issuer's host and
path (a trailing ``/`` of the path is dropped first), so ``https://tr.example/tenant`` is
discovered at ``https://tr.example/.well-known/ssf-configuration/tenant``. :func:`discover`
fetches it and checks that

- the answer is a JSON object, with ``issuer`` **byte-identical** to the issuer used to build the
  URL (SSF §7.2: otherwise a SET's ``iss`` cannot be trusted either);
- ``jwks_uri`` is present (SSF makes it mandatory when SETs are signed; ours always are);
- every member this SDK uses has the SSF type (URLs are strings, lists are arrays of strings,
  ``default_subjects`` is ``ALL`` or ``NONE``) and every URL is https (plain http only to a
  loopback host, or with ``allow_http=True``).

Members SSF defines but this SDK does not use, and members it does not define, are kept (the
model allows extras) and otherwise ignored.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from ._http import DEFAULT_TIMEOUT, check_url, request
from .errors import (
    DiscoveryError,
    InsecureUrl,
    IssuerMismatch,
    TransmitterError,
    TransmitterUnavailable,
)

__all__ = [
    "POLL",
    "PUSH",
    "WELL_KNOWN",
    "AuthorizationScheme",
    "TransmitterMetadata",
    "discover",
    "well_known_url",
]

WELL_KNOWN = "/.well-known/ssf-configuration"
PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"

_URL_MEMBERS = (
    "jwks_uri",
    "configuration_endpoint",
    "status_endpoint",
    "add_subject_endpoint",
    "remove_subject_endpoint",
    "verification_endpoint",
)


class AuthorizationScheme(BaseModel):
    """One ``authorization_schemes`` entry (SSF §7.1.1)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    spec_urn: str


class TransmitterMetadata(BaseModel):
    """Transmitter Configuration Metadata (SSF §7.1), as validated by :func:`discover`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    issuer: str
    jwks_uri: str
    spec_version: str | None = None
    delivery_methods_supported: tuple[str, ...] | None = None
    configuration_endpoint: str | None = None
    status_endpoint: str | None = None
    add_subject_endpoint: str | None = None
    remove_subject_endpoint: str | None = None
    verification_endpoint: str | None = None
    critical_subject_members: tuple[str, ...] | None = None
    authorization_schemes: tuple[AuthorizationScheme, ...] | None = None
    default_subjects: Literal["ALL", "NONE"] | None = None

    def supports(self, method: str) -> bool:
        """Whether ``method`` (:data:`PUSH`, :data:`POLL`) is advertised; an absent
        ``delivery_methods_supported`` (it is only RECOMMENDED) is taken as "maybe": True."""
        methods = self.delivery_methods_supported
        return methods is None or method in methods

    def endpoint(self, name: str) -> str:
        """The URL of endpoint member ``name`` (e.g. ``"configuration_endpoint"``), or a
        :class:`DiscoveryError` saying the transmitter does not offer it."""
        value = getattr(self, name, None)
        if not isinstance(value, str):
            raise DiscoveryError(
                f"the transmitter {self.issuer} advertises no {name} in its SSF metadata, so "
                "this operation is not available"
            )
        return value


def _check_issuer(issuer: str) -> tuple[str, str, str]:
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise DiscoveryError(f"the issuer must be an absolute https URL, got {issuer!r}")
    if parts.query or parts.fragment or "?" in issuer or "#" in issuer:
        raise DiscoveryError(
            f"the issuer must not have a query or fragment (SSF §7.1), got {issuer!r}"
        )
    return parts.scheme, parts.netloc, parts.path


def well_known_url(issuer: str) -> str:
    """The metadata URL of ``issuer`` (SSF §7.2): the well-known path goes between host and path.

    >>> well_known_url("https://tr.example.com")
    'https://tr.example.com/.well-known/ssf-configuration'
    >>> well_known_url("https://tr.example.com/issuer1/")
    'https://tr.example.com/.well-known/ssf-configuration/issuer1'
    """
    scheme, netloc, path = _check_issuer(issuer)
    return urlunsplit((scheme, netloc, WELL_KNOWN + path.rstrip("/"), "", ""))


def _field(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(p) for p in first["loc"]) or "(document)"
    return f"{location}: {first['msg']}"


def parse_metadata(
    document: Any, issuer: str, *, url: str, allow_http: bool = False
) -> TransmitterMetadata:
    """Validate a metadata document fetched from ``url`` for ``issuer`` (see the module doc)."""
    if not isinstance(document, dict):
        raise DiscoveryError(f"the SSF metadata at {url} is not a JSON object")
    if "issuer" not in document:
        raise DiscoveryError(f"the SSF metadata at {url} has no issuer (REQUIRED, SSF §7.1)")
    if document["issuer"] != issuer:
        raise IssuerMismatch(
            f"the SSF metadata at {url} names issuer {document['issuer']!r}, not {issuer!r}: "
            "SSF §7.2 requires them to be identical (a trailing '/' counts); use exactly the "
            "issuer the transmitter publishes",
            expected=issuer,
            actual=document["issuer"],
        )
    if "jwks_uri" not in document:
        raise DiscoveryError(
            f"the SSF metadata at {url} has no jwks_uri: SETs cannot be verified without the "
            "transmitter's keys (SSF §7.1)"
        )
    try:
        metadata = TransmitterMetadata.model_validate(document)
    except ValidationError as error:
        raise DiscoveryError(
            f"the SSF metadata at {url} is not valid: {_field(error)}", url=url
        ) from None
    for name in _URL_MEMBERS:
        value = getattr(metadata, name)
        if value is not None:
            try:
                check_url(value, f"the metadata's {name}", allow_http=allow_http)
            except InsecureUrl as error:
                raise DiscoveryError(f"the SSF metadata at {url} is not usable: {error}") from None
    return metadata


async def discover(
    issuer: str,
    session: aiohttp.ClientSession,
    *,
    allow_http: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> TransmitterMetadata:
    """Fetch and validate the SSF metadata of ``issuer`` (see the module doc).

    Raises :class:`DiscoveryError` (unreachable, not found, not JSON, missing or mistyped
    members), :class:`IssuerMismatch` or :class:`InsecureUrl`.
    """
    url = well_known_url(issuer)
    check_url(url, "the issuer", allow_http=allow_http)
    try:
        reply = await request(
            session, "GET", url, operation="SSF discovery", timeout=timeout, ok=(200,)
        )
    except TransmitterError as error:
        raise DiscoveryError(
            f"no SSF metadata at {url} (HTTP {error.status}); is {issuer!r} the transmitter's "
            "exact issuer?",
            url=url,
            status=error.status,
        ) from None
    except TransmitterUnavailable as error:
        raise DiscoveryError(error.description, url=url) from None
    document = reply.json()
    if document is None:
        raise DiscoveryError(f"the SSF metadata at {url} is not JSON", url=url)
    return parse_metadata(document, issuer, url=url, allow_http=allow_http)
