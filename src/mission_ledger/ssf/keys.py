"""SET signing keys: the key-store seam, a file-backed store and an in-memory one.

Keys are RS256 (RSA, 3072 bits by default, at least 2048: CAEP Interoperability Profile §2.6)
and ES256 (P-256). Each key's ``kid`` is its RFC 7638 JWK thumbprint (base64url SHA-256 of the
canonical public JWK), so it is stable and anyone can derive it from the published key.

Lifecycle of a key::

    active ──rotate(alg)──▶ retiring ──retire(kid)──▶ retired
    (signs, published)      (published only)          (unpublished; private key deleted)

A rotated-out key stays published (``retiring``) until no queued SET signed with it remains. The
store cannot know that; the outbox does, and calls :meth:`KeyStore.retire` once its queue holds no
SET signed with that ``kid`` (SSF digest §17.2; issue 4 item 1).

Private keys never appear in ``repr``, logs, exceptions or :meth:`KeyStore.jwks`.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import Conflict, InvalidInput, KeyStoreError, NotFound

__all__ = [
    "DEFAULT_RSA_BITS",
    "MIN_RSA_BITS",
    "SUPPORTED_ALGORITHMS",
    "FileKeyStore",
    "KeyStore",
    "KeyStoreError",
    "MemoryKeyStore",
    "SigningKey",
    "jwk_thumbprint",
    "public_jwk",
]

SUPPORTED_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
DEFAULT_RSA_BITS = 3072
MIN_RSA_BITS = 2048
INDEX_FILE = "index.json"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
Status = Literal["active", "retiring", "retired"]


@dataclass(frozen=True)
class SigningKey:
    """One signing key: its ``kid``, its JWS ``alg`` and the private key (never in ``repr``)."""

    kid: str
    alg: str
    private_key: PrivateKey = field(repr=False, compare=False)

    def public_jwk(self) -> dict[str, str]:
        """The public JWK with ``kid``, ``alg`` and ``use: sig`` (no private members)."""
        return {**public_jwk(self.private_key), "kid": self.kid, "alg": self.alg, "use": "sig"}


class KeyStore(Protocol):
    """The seam between signing and wherever private keys live."""

    def ensure_keys(self) -> None:
        """Create one active key per supported algorithm where there is none yet."""
        ...

    def active(self, alg: str) -> SigningKey:
        """The key that signs new SETs with ``alg`` (created on first use)."""
        ...

    def rotate(self, alg: str) -> SigningKey:
        """Make a new active key for ``alg``; the previous one becomes ``retiring``."""
        ...

    def retire(self, kid: str) -> None:
        """Unpublish a ``retiring`` key (the outbox calls this once no queued SET uses it)."""
        ...

    def jwks(self) -> dict[str, Any]:
        """``{"keys": [...]}``: the public keys of every active and retiring key."""
        ...

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every key known, oldest first: ``kid``, ``alg``, ``status``, ``created_at``."""
        ...


# --- JWK helpers (RFC 7517/7518) and thumbprints (RFC 7638) ---------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(size, "big"))


def public_jwk(key: PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public members of ``key`` as a JWK (RFC 7518 §6.2/§6.3): ``kty`` and key members."""
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        public = key.public_key()
    else:
        public = key
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    if not isinstance(public.curve, ec.SECP256R1):
        raise InvalidInput(f"unsupported curve {public.curve.name}; ES256 needs P-256", field="alg")
    point = public.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _uint(point.x, 32), "y": _uint(point.y, 32)}


_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 §3: base64url SHA-256 of the required members, sorted, without whitespace."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _generate(alg: str, rsa_bits: int) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return ec.generate_private_key(ec.SECP256R1())


def _check_alg(alg: str) -> None:
    if alg not in SUPPORTED_ALGORITHMS:
        raise InvalidInput(
            f"unsupported signing algorithm {alg!r}; use one of {', '.join(SUPPORTED_ALGORITHMS)}",
            field="alg",
        )


# --- The shared logic; subclasses say where the index and the private keys live --------------


class _IndexedKeyStore:
    """Key lifecycle over an index (kid → alg, created_at, status) and a private-key storage.

    Parsed private keys are cached by ``kid``; the index is re-read on every operation so that a
    ``keys rotate`` run by another process is seen by a running server.
    """

    def __init__(self, *, rsa_bits: int, now: Callable[[], datetime] | None) -> None:
        if rsa_bits < MIN_RSA_BITS:
            raise InvalidInput(
                f"RSA keys need at least {MIN_RSA_BITS} bits, got {rsa_bits}", field="rsa_bits"
            )
        self._rsa_bits = rsa_bits
        self._now = now if now is not None else (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._cache: dict[str, PrivateKey] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # storage hooks
    def _read_index(self) -> dict[str, dict[str, str]]:
        raise NotImplementedError

    def _write_index(self, index: dict[str, dict[str, str]]) -> None:
        raise NotImplementedError

    def _read_private(self, kid: str) -> PrivateKey:
        raise NotImplementedError

    def _write_private(self, kid: str, key: PrivateKey) -> None:
        raise NotImplementedError

    def _delete_private(self, kid: str) -> None:
        raise NotImplementedError

    # lifecycle
    def _private(self, kid: str) -> PrivateKey:
        key = self._cache.get(kid)
        if key is None:
            key = self._cache[kid] = self._read_private(kid)
        return key

    @staticmethod
    def _active_kid(index: dict[str, dict[str, str]], alg: str) -> str | None:
        for kid, row in index.items():
            if row["alg"] == alg and row["status"] == "active":
                return kid
        return None

    def _new_key(self, index: dict[str, dict[str, str]], alg: str) -> SigningKey:
        key = _generate(alg, self._rsa_bits)
        kid = jwk_thumbprint(public_jwk(key))
        self._write_private(kid, key)
        self._cache[kid] = key
        created = self._now().astimezone(UTC).isoformat(timespec="seconds")
        index[kid] = {"alg": alg, "created_at": created, "status": "active"}
        return SigningKey(kid=kid, alg=alg, private_key=key)

    def ensure_keys(self) -> None:
        with self._lock:
            index = self._read_index()
            missing = [a for a in SUPPORTED_ALGORITHMS if self._active_kid(index, a) is None]
            for alg in missing:
                self._new_key(index, alg)
            if missing:
                self._write_index(index)

    def active(self, alg: str) -> SigningKey:
        _check_alg(alg)
        with self._lock:
            index = self._read_index()
            kid = self._active_kid(index, alg)
            if kid is None:
                key = self._new_key(index, alg)
                self._write_index(index)
                return key
            return SigningKey(kid=kid, alg=alg, private_key=self._private(kid))

    def rotate(self, alg: str) -> SigningKey:
        _check_alg(alg)
        with self._lock:
            index = self._read_index()
            old = self._active_kid(index, alg)
            if old is not None:
                index[old]["status"] = "retiring"
            key = self._new_key(index, alg)
            self._write_index(index)
            return key

    def retire(self, kid: str) -> None:
        with self._lock:
            index = self._read_index()
            row = index.get(kid)
            if row is None:
                raise NotFound(f"no signing key with kid {kid!r}", kid=kid)
            if row["status"] == "retired":
                return
            if row["status"] == "active":
                raise Conflict(
                    f"key {kid} is active; rotate {row['alg']} first, then retire it", kid=kid
                )
            row["status"] = "retired"
            self._write_index(index)
            self._cache.pop(kid, None)
            self._delete_private(kid)

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            index = self._read_index()
            rows = sorted(index.items(), key=lambda item: (item[1]["created_at"], item[0]))
            keys = [
                SigningKey(kid=kid, alg=row["alg"], private_key=self._private(kid)).public_jwk()
                for kid, row in rows
                if row["status"] in ("active", "retiring")
            ]
            return {"keys": keys}

    def list(self) -> builtins.list[dict[str, Any]]:
        with self._lock:
            index = self._read_index()
        rows = sorted(index.items(), key=lambda item: (item[1]["created_at"], item[0]))
        return [{"kid": kid, **row} for kid, row in rows]


class MemoryKeyStore(_IndexedKeyStore):
    """Keys in process memory only (tests, ``memory:`` deployments)."""

    def __init__(
        self, *, rsa_bits: int = DEFAULT_RSA_BITS, now: Callable[[], datetime] | None = None
    ) -> None:
        super().__init__(rsa_bits=rsa_bits, now=now)
        self._index: dict[str, dict[str, str]] = {}
        self._keys: dict[str, PrivateKey] = {}

    def _read_index(self) -> dict[str, dict[str, str]]:
        return {kid: dict(row) for kid, row in self._index.items()}

    def _write_index(self, index: dict[str, dict[str, str]]) -> None:
        self._index = {kid: dict(row) for kid, row in index.items()}

    def _read_private(self, kid: str) -> PrivateKey:
        return self._keys[kid]

    def _write_private(self, kid: str, key: PrivateKey) -> None:
        self._keys[kid] = key

    def _delete_private(self, kid: str) -> None:
        self._keys.pop(kid, None)


class FileKeyStore(_IndexedKeyStore):
    """Keys as PKCS#8 PEM files (mode 0600) plus ``index.json``, in ``<data_dir>/ssf-keys/``.

    The directory is created with mode 0700. The index is replaced atomically; concurrent
    rotations from two processes are not coordinated (operators rotate one at a time).
    """

    def __init__(
        self,
        directory: Path,
        *,
        rsa_bits: int = DEFAULT_RSA_BITS,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(rsa_bits=rsa_bits, now=now)
        self._dir = Path(directory)

    def __repr__(self) -> str:
        return f"FileKeyStore({str(self._dir)!r})"

    def _path(self, kid: str) -> Path:
        return self._dir / f"{kid}.pem"

    def _read_index(self) -> dict[str, dict[str, str]]:
        path = self._dir / INDEX_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise KeyStoreError(f"cannot read the key index {path}: {error}") from None
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, dict):
            raise KeyStoreError(f"the key index {path} has no 'keys' object")
        return {str(kid): {k: str(v) for k, v in row.items()} for kid, row in keys.items()}

    def _write_index(self, index: dict[str, dict[str, str]]) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._dir / INDEX_FILE
        tmp = path.with_suffix(".json.tmp")
        body = json.dumps({"version": 1, "keys": index}, indent=2, sort_keys=True) + "\n"
        try:
            tmp.write_text(body, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as error:
            raise KeyStoreError(f"cannot write the key index {path}: {error}") from None

    def _read_private(self, kid: str) -> PrivateKey:
        path = self._path(kid)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            # Never chain the parser's error: it could quote key material.
            raise KeyStoreError(f"cannot load the private key for kid {kid} from {path}") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"{path} does not hold an RSA or EC private key")
        return key

    def _write_private(self, kid: str, key: PrivateKey) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self._path(kid)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            os.chmod(path, 0o600)
        except OSError as error:
            raise KeyStoreError(f"cannot write the private key file {path}: {error}") from None

    def _delete_private(self, kid: str) -> None:
        self._path(kid).unlink(missing_ok=True)
