"""SET signing keys: the key-store seam and its three stores, one per storage backend.

Keys are RS256 (RSA, 2048 bits by default — the CAEP Interoperability Profile's minimum, §2.6;
signing cost decides fan-out latency, see docs/decisions.md — and larger through ``rsa_bits``)
and ES256 (P-256). Each key's ``kid`` is its RFC 7638 JWK thumbprint (base64url SHA-256 of the
canonical public JWK), so it is stable and anyone can derive it from the published key.

Lifecycle of a key::

    active ──rotate(alg)──▶ retiring ──retire(kid)──▶ retired
    (signs, published)      (published only)          (unpublished; private key deleted)

A rotated-out key stays published (``retiring``) until no queued SET signed with it remains. The
store cannot know that; the outbox does, and calls :meth:`KeyStore.retire` once its queue holds no
SET signed with that ``kid`` (SSF digest §17.2; issue 4 item 1).

**Where the keys live follows the event store** (:func:`open_key_store`):

- ``memory:`` → :class:`MemoryKeyStore` (the process's memory, like the ledger itself);
- SQLite (``--data DIR``) → :class:`FileKeyStore`: PKCS#8 PEM files (0600) and ``index.json`` in
  ``DIR/ssf-keys``. One host, like the SQLite files next to it.
- PostgreSQL → :class:`PostgresKeyStore`: the table ``ssf_signing_keys`` in the configured
  schema. Every Authority process (servers behind a load balancer, the worker, the CLI) on any
  host signs with, and publishes, the same keys; a per-host directory would give each host its
  own keys, so a receiver would see a different JWKS depending on which host answered. Key
  creation and rotation are serialised by a transaction-level advisory lock
  (:func:`signing_keys_lock_key`), and a partial unique index makes "one active key per
  algorithm" a database invariant as well. The private key is a PEM column: whoever may read
  that table may sign SETs as this Authority, so grant it like the ledger's own tables. ``retire``
  sets the column to NULL; PostgreSQL keeps the old row version until VACUUM, and backups keep
  whatever they copied.

Every store re-reads its keys on every call, so a ``mission-ledger keys rotate`` run by another
process is seen at once by a running server. Private keys never appear in ``repr``, logs,
exceptions or :meth:`KeyStore.jwks`; store failures are :class:`~mission_ledger.errors.Unavailable`
(unreachable, retryable) or :class:`~mission_ledger.errors.KeyStoreError` (unusable), naming
``host:port/db`` or the file, never a password.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import psycopg
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from psycopg import sql
from psycopg.types.json import Jsonb

from ..errors import Conflict, InvalidInput, KeyStoreError, NotFound, Unavailable, first_line

if TYPE_CHECKING:
    from ..config import PostgresTarget, Settings

__all__ = [
    "DEFAULT_RSA_BITS",
    "MIN_RSA_BITS",
    "PG_TABLE",
    "SUPPORTED_ALGORITHMS",
    "FileKeyStore",
    "KeyStore",
    "KeyStoreError",
    "MemoryKeyStore",
    "PostgresKeyStore",
    "SigningKey",
    "jwk_thumbprint",
    "key_store_location",
    "open_key_store",
    "public_jwk",
    "signing_keys_lock_key",
]

SUPPORTED_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
DEFAULT_RSA_BITS = 2048  # ≈3× faster to sign than 3072; every receiver costs one signature
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
        """Every key known, oldest first: ``kid``, ``alg``, ``status``, ``created_at`` and
        ``rotated_at`` (when it stopped signing; ``None`` while active, and in stores that do
        not record it)."""
        ...

    def close(self) -> None:
        """Release what the store holds open (a database connection); it may be used again."""
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
        return [{"kid": kid, "rotated_at": row.get("rotated_at"), **row} for kid, row in rows]

    def close(self) -> None:
        """Nothing to release: files are opened per call."""


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


# --- PostgreSQL: the keys in the database every Authority process shares ---------------------

PG_TABLE = "ssf_signing_keys"
PG_APPLICATION_NAME = "mission-ledger/ssf-keys"
PG_LOCK_TIMEOUT_MS = 30_000  # waiting longer for another process's key change is Unavailable

_T = TypeVar("_T")


def signing_keys_lock_key(schema: str) -> int:
    """The signed 64-bit advisory lock key that serialises key creation and rotation in
    ``schema`` (locks are per database; distinct from the schema-DDL and views' keys)."""
    digest = hashlib.sha256(f"mission_ledger/ssf-signing-keys/{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


class _Slot:
    """The store's one connection; a ``weakref.finalize`` closes it with the store."""

    def __init__(self) -> None:
        self.conn: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()


class PostgresKeyStore:
    """Keys as rows of ``<schema>.ssf_signing_keys``, shared by every process on the store.

    Columns: ``kid`` (primary key), ``alg``, ``state`` (active, retiring, retired),
    ``created_at``, ``rotated_at`` (when it stopped signing), ``public_jwk`` (the public members,
    what ``jwks()`` serves) and ``private_key_pem`` (PKCS#8; NULL once retired). The table is
    created on first use under the store's schema lock (:func:`..bootstrap.schema_lock`).

    One connection per store (autocommit; each operation is one explicit transaction), opened
    lazily and shared by the store's threads under a lock. Reads, ``ensure_keys`` and ``retire``
    are idempotent and retried once on a fresh connection when the old one failed (a server
    restart); ``rotate`` is not, so it checks the connection before its transaction instead.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        rsa_bits: int = DEFAULT_RSA_BITS,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if settings.backend() != "postgres":
            raise InvalidInput(
                "PostgresKeyStore needs a postgresql:// database URL", field="database_url"
            )
        if rsa_bits < MIN_RSA_BITS:
            raise InvalidInput(
                f"RSA keys need at least {MIN_RSA_BITS} bits, got {rsa_bits}", field="rsa_bits"
            )
        self._settings = settings
        self._target: PostgresTarget = settings.postgres_target()
        self._table = sql.Identifier(self._target.schema, PG_TABLE)
        self._lock_key = signing_keys_lock_key(self._target.schema)
        self._rsa_bits = rsa_bits
        self._now = now if now is not None else (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._cache: dict[str, PrivateKey] = {}
        self._slot = _Slot()
        self._ready = False
        weakref.finalize(self, self._slot.close)

    def __repr__(self) -> str:
        return f"PostgresKeyStore({self._target.where!r}, schema={self._target.schema!r})"

    def close(self) -> None:
        with self._lock:
            self._slot.close()

    # -- connection, errors, DDL ----------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        password = self._target.password
        return text.replace(password, "***") if password else text

    def _unavailable(self, error: BaseException) -> Unavailable:
        return Unavailable(
            f"cannot reach PostgreSQL at {self._target.where} for the SET signing keys "
            f"({self._scrub(first_line(error))}); check --database-url and retry"
        )

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._slot.conn
        if conn is None or conn.closed:
            self._slot.close()
            conn = self._target.connect(autocommit=True, application_name=PG_APPLICATION_NAME)
            self._slot.conn = conn
        if not self._ready:
            self._create_table(conn)
            self._ready = True
        return conn

    def _create_table(self, conn: psycopg.Connection[Any]) -> None:
        from ..bootstrap import schema_lock  # bootstrap imports the ledger; keep keys.py light

        table, schema = self._table, self._target.schema
        one_active = sql.Identifier(f"{PG_TABLE}_one_active_per_alg")
        with schema_lock(self._settings), conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(
                sql.SQL(
                    """CREATE TABLE IF NOT EXISTS {} (
                        kid text PRIMARY KEY,
                        alg text NOT NULL CHECK (alg IN ('RS256', 'ES256')),
                        state text NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
                        created_at timestamptz NOT NULL,
                        rotated_at timestamptz,
                        public_jwk jsonb NOT NULL,
                        private_key_pem text,
                        CHECK ((state = 'retired') = (private_key_pem IS NULL)),
                        CHECK ((state = 'active') = (rotated_at IS NULL))
                    )"""
                ).format(table)
            )
            conn.execute(
                sql.SQL(
                    "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (alg) WHERE state = 'active'"
                ).format(one_active, table)
            )

    def _run(self, work: Callable[[psycopg.Connection[Any]], _T], *, retry: bool) -> _T:
        """Run ``work`` in one transaction; map the driver's errors to the ledger's."""
        with self._lock:
            attempts = 2 if retry else 1
            for attempt in range(1, attempts + 1):
                reused = self._slot.conn is not None and not self._slot.conn.closed
                try:
                    conn = self._connection()
                    with conn.transaction():
                        return work(conn)
                except psycopg.errors.LockNotAvailable:
                    raise Unavailable(
                        f"another process has held the signing-key lock on "
                        f"{self._target.where} for over {PG_LOCK_TIMEOUT_MS // 1000} s; retry"
                    ) from None
                except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                    self._slot.close()
                    if reused and attempt < attempts:
                        continue  # the connection died while idle: once more, on a new one
                    raise self._unavailable(error) from None
                except psycopg.IntegrityError:
                    raise Conflict(
                        f"the signing keys on {self._target.where} changed concurrently; retry"
                    ) from None
                except psycopg.Error as error:  # permissions, a damaged table, …
                    raise KeyStoreError(
                        f"cannot use the signing-key table {self._target.schema}.{PG_TABLE} on "
                        f"{self._target.where}: {self._scrub(first_line(error))}"
                    ) from None
            raise AssertionError("unreachable")  # pragma: no cover

    def _take_lock(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{PG_LOCK_TIMEOUT_MS}ms"))
        )
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._lock_key])

    # -- rows -----------------------------------------------------------------------------------

    def _load(self, kid: str, pem: str | None) -> PrivateKey:
        key = self._cache.get(kid)
        if key is not None:
            return key
        where = f"{self._target.schema}.{PG_TABLE} on {self._target.where}"
        if pem is None:
            raise KeyStoreError(f"the private key for kid {kid} is missing from {where}")
        try:
            loaded = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeError, UnsupportedAlgorithm):
            # Never chain the parser's error: it could quote key material.
            raise KeyStoreError(f"cannot load the private key for kid {kid} from {where}") from None
        if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"the key for kid {kid} in {where} is not an RSA or EC key")
        if jwk_thumbprint(public_jwk(loaded)) != kid:
            raise KeyStoreError(f"the private key stored for kid {kid} in {where} has another kid")
        self._cache[kid] = loaded
        return loaded

    def _active(self, conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str | None]]:
        rows = conn.execute(
            sql.SQL("SELECT alg, kid, private_key_pem FROM {} WHERE state = 'active'").format(
                self._table
            )
        ).fetchall()
        return {alg: (kid, pem) for alg, kid, pem in rows}

    def _insert(self, conn: psycopg.Connection[Any], alg: str, key: PrivateKey) -> str:
        kid = jwk_thumbprint(public_jwk(key))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (kid, alg, state, created_at, public_jwk, private_key_pem) "
                "VALUES (%s, %s, 'active', %s, %s, %s)"
            ).format(self._table),
            [kid, alg, self._now(), Jsonb(public_jwk(key)), _pem(key)],
        )
        return kid

    def _create_missing(self, algs: Sequence[str]) -> None:
        """Make an active key for each of ``algs`` that has none, once across processes.

        Keys are generated before the lock is taken (RSA takes a while); under the lock the
        active keys are read again, and a key another process created meanwhile wins.
        """
        fresh = {alg: _generate(alg, self._rsa_bits) for alg in algs}

        def insert(conn: psycopg.Connection[Any]) -> None:
            self._take_lock(conn)
            present = self._active(conn)
            for alg, key in fresh.items():
                if alg not in present:
                    self._insert(conn, alg, key)

        self._run(insert, retry=True)

    # -- the KeyStore protocol ------------------------------------------------------------------

    def ensure_keys(self) -> None:
        with self._lock:
            present = self._run(self._active, retry=True)
            missing = [alg for alg in SUPPORTED_ALGORITHMS if alg not in present]
            if missing:
                self._create_missing(missing)

    def active(self, alg: str) -> SigningKey:
        _check_alg(alg)
        with self._lock:
            row = self._run(self._active, retry=True).get(alg)
            if row is None:
                self._create_missing([alg])
                row = self._run(self._active, retry=True).get(alg)
                if row is None:
                    raise KeyStoreError(f"no active {alg} key after creating one; retry")
            kid, pem = row
            return SigningKey(kid=kid, alg=alg, private_key=self._load(kid, pem))

    def rotate(self, alg: str) -> SigningKey:
        _check_alg(alg)
        key = _generate(alg, self._rsa_bits)
        with self._lock:
            self._run(lambda conn: None, retry=True)  # a live connection before the one-shot
            kid = ""

            def swap(conn: psycopg.Connection[Any]) -> None:
                nonlocal kid
                self._take_lock(conn)
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET state = 'retiring', rotated_at = %s "
                        "WHERE alg = %s AND state = 'active'"
                    ).format(self._table),
                    [self._now(), alg],
                )
                kid = self._insert(conn, alg, key)

            self._run(swap, retry=False)
            self._cache[kid] = key
            return SigningKey(kid=kid, alg=alg, private_key=key)

    def retire(self, kid: str) -> None:
        def unpublish(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute(
                sql.SQL("SELECT alg, state FROM {} WHERE kid = %s FOR UPDATE").format(self._table),
                [kid],
            ).fetchone()
            if row is None:
                raise NotFound(f"no signing key with kid {kid!r}", kid=kid)
            alg, state = row
            if state == "retired":
                return
            if state == "active":
                raise Conflict(f"key {kid} is active; rotate {alg} first, then retire it", kid=kid)
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET state = 'retired', private_key_pem = NULL WHERE kid = %s"
                ).format(self._table),
                [kid],
            )

        with self._lock:
            self._run(unpublish, retry=True)
            self._cache.pop(kid, None)

    def _forget_unpublished(self, published: set[str]) -> None:
        """Drop cached private keys that another process retired (or rotated away and retired)."""
        for kid in [k for k in self._cache if k not in published]:
            del self._cache[kid]

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            rows = self._run(
                lambda conn: conn.execute(
                    sql.SQL(
                        "SELECT kid, alg, public_jwk FROM {} "
                        "WHERE state IN ('active', 'retiring') ORDER BY created_at, kid"
                    ).format(self._table)
                ).fetchall(),
                retry=True,
            )
            self._forget_unpublished({kid for kid, _, _ in rows})
        keys = []
        for kid, alg, stored in rows:
            kty = stored.get("kty") if isinstance(stored, dict) else None
            members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
            if members is None or not all(isinstance(stored.get(m), str) for m in members):
                raise KeyStoreError(f"the public key stored for kid {kid} is not a usable JWK")
            jwk = {m: stored[m] for m in members}  # the public members only, whatever is stored
            if jwk_thumbprint(jwk) != kid:
                raise KeyStoreError(f"the public key stored for kid {kid} has another kid")
            keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": keys}

    def list(self) -> builtins.list[dict[str, Any]]:
        with self._lock:
            rows = self._run(
                lambda conn: conn.execute(
                    sql.SQL(
                        "SELECT kid, alg, state, created_at, rotated_at FROM {} "
                        "ORDER BY created_at, kid"
                    ).format(self._table)
                ).fetchall(),
                retry=True,
            )
            self._forget_unpublished({kid for kid, _, state, _, _ in rows if state != "retired"})
        return [
            {
                "kid": kid,
                "alg": alg,
                "status": state,
                "created_at": _timestamp(created),
                "rotated_at": _timestamp(rotated),
            }
            for kid, alg, state, created, rotated in rows
        ]


# --- Choosing the store ------------------------------------------------------------------------


def open_key_store(settings: Settings, *, rsa_bits: int = DEFAULT_RSA_BITS) -> KeyStore:
    """The key store of ``settings``' backend: memory → :class:`MemoryKeyStore`, SQLite →
    :class:`FileKeyStore` in ``<data_dir>/ssf-keys``, PostgreSQL → :class:`PostgresKeyStore`.

    Nothing is opened or created until the store is first used."""
    backend = settings.backend()
    if backend == "memory":
        return MemoryKeyStore(rsa_bits=rsa_bits)
    if backend == "sqlite":
        return FileKeyStore(settings.data_dir / "ssf-keys", rsa_bits=rsa_bits)
    return PostgresKeyStore(settings, rsa_bits=rsa_bits)


def key_store_location(settings: Settings) -> str:
    """Where :func:`open_key_store` keeps the keys of ``settings``, in words (no password)."""
    backend = settings.backend()
    if backend == "memory":
        return "memory (this process only)"
    if backend == "sqlite":
        return str(settings.data_dir / "ssf-keys")
    target = settings.postgres_target()
    return f"PostgreSQL {target.where}, table {target.schema}.{PG_TABLE}"
