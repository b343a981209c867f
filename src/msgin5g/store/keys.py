"""OSCORE keys and their mutable state in the document store, shared by the SQLite and PostgreSQL
back ends (RFC 8613; TS 24.546 6.2.1.2; SPEC D12).

One table beside the documents, in the same file or database — a fleet of a million UEs is a
million rows, never a file per key:

- ``tls_ca`` (one row: the CA of the coaps+tcp / coaps+ws client certificates) and ``tls_certs``
  (serial, identity, created, revoked) — :mod:`msgin5g.security.tls`;
- ``oscore_keys(number, identity, algorithm, secret, salt, created, revoked, seq_mark, rw_index,
  rw_bits)`` — one row per key. ``number`` is the key number; the key identifier (the client's
  OSCORE Sender ID) is its big-endian bytes (:func:`msgin5g.security.keys.kid_for`). At most one
  active key per identity (a partial unique index). The mutable state shared by every SCM-S
  process that serves the key set:

  * ``seq_mark`` — the server's sender sequence numbers below it are leased (RFC 8613 App. B.1.1):
    a process takes ``[seq_mark, seq_mark + K)`` with one atomic ``UPDATE … RETURNING`` before it
    uses any of them, so no two processes, and no process after a restart, reuse a number;
  * ``rw_index`` / ``rw_bits`` — the replay window of the client's requests (RFC 8613 §7.4, the
    ``ReplayWindow`` of aiocoap). A request is accepted after successful decryption only when a
    compare-and-set on these two columns succeeds, so a request is accepted at most once across
    all processes and nodes, and a restarted process needs no Echo round trip (App. B.1.2).

All SQL lives here, written once with a placeholder mark (``?`` for sqlite3, ``%s`` for psycopg);
:class:`KeyStoreMixin` implements the key methods on each back end's transaction helper.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

#: DDL with the back end's types filled in
_DDL = (
    """CREATE TABLE IF NOT EXISTS oscore_keys (
        number     {int} PRIMARY KEY,
        identity   TEXT NOT NULL,
        algorithm  TEXT NOT NULL,
        secret     {blob} NOT NULL,
        salt       {blob} NOT NULL,
        created    TEXT NOT NULL,
        revoked    TEXT,
        seq_mark   {int} NOT NULL DEFAULT 0,
        rw_index   {int} NOT NULL DEFAULT 0,
        rw_bits    {int} NOT NULL DEFAULT 0)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS oscore_keys_active ON oscore_keys (identity) WHERE revoked IS NULL",
    """CREATE TABLE IF NOT EXISTS tls_ca (
        id         INTEGER PRIMARY KEY,
        cert_pem   TEXT NOT NULL,
        key_pem    TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tls_certs (
        serial     TEXT PRIMARY KEY,
        identity   TEXT NOT NULL,
        created    TEXT NOT NULL,
        revoked    TEXT)""",
)
SQLITE_KEYS_DDL = tuple(s.format(int="INTEGER", blob="BLOB") for s in _DDL)
POSTGRES_KEYS_DDL = tuple(s.format(int="bigint", blob="bytea") for s in _DDL)

_COLUMNS = "number, identity, algorithm, secret, salt, created, revoked, seq_mark, rw_index, rw_bits"
_NEXT = "SELECT coalesce(max(number), 0) + 1 FROM oscore_keys"
_ACTIVE_OF = "SELECT identity FROM oscore_keys WHERE revoked IS NULL AND identity = {m}"
_INSERT = (
    "INSERT INTO oscore_keys (number, identity, algorithm, secret, salt, created) "
    "VALUES ({m}, {m}, {m}, {m}, {m}, {m})"
)
_GET = f"SELECT {_COLUMNS} FROM oscore_keys WHERE number = {{m}}"
_GET_ACTIVE = f"SELECT {_COLUMNS} FROM oscore_keys WHERE identity = {{m}} AND revoked IS NULL"
_PAGE = f"SELECT {_COLUMNS} FROM oscore_keys WHERE number > {{m}}{{where}} ORDER BY number LIMIT {{m}}"
_COUNT = "SELECT count(*) FROM oscore_keys WHERE revoked IS NULL"
_REVOKE_NUMBER = (
    "UPDATE oscore_keys SET revoked = {m} WHERE number = {m} AND revoked IS NULL RETURNING number, identity"
)
_CA_INSERT = "INSERT INTO tls_ca (id, cert_pem, key_pem) VALUES (1, {m}, {m}) ON CONFLICT (id) DO NOTHING"
_CA_GET = "SELECT cert_pem, key_pem FROM tls_ca WHERE id = 1"
_CERT_INSERT = "INSERT INTO tls_certs (serial, identity, created) VALUES ({m}, {m}, {m})"
_CERT_ACTIVE = "SELECT identity FROM tls_certs WHERE serial = {m} AND revoked IS NULL"
_CERT_REVOKE = "UPDATE tls_certs SET revoked = {m} WHERE identity = {m} AND revoked IS NULL"
_REVOKE_IDENTITY = (
    "UPDATE oscore_keys SET revoked = {m} WHERE identity = {m} AND revoked IS NULL RETURNING number, identity"
)
_LEASE = "UPDATE oscore_keys SET seq_mark = seq_mark + {m} WHERE number = {m} RETURNING seq_mark"
_WINDOW = "SELECT rw_index, rw_bits, revoked FROM oscore_keys WHERE number = {m}"
_CAS_WINDOW = (
    "UPDATE oscore_keys SET rw_index = {m}, rw_bits = {m} "
    "WHERE number = {m} AND rw_index = {m} AND rw_bits = {m} AND revoked IS NULL"
)
PAGE = 5_000


class KeyStoreError(Exception):
    """A key operation that cannot be done (already active, nothing to revoke)."""


@dataclass(frozen=True)
class KeyRow:
    """One row of ``oscore_keys``."""

    number: int
    identity: str
    algorithm: str
    secret: bytes
    salt: bytes
    created: str
    revoked: str | None
    seq_mark: int
    rw_index: int
    rw_bits: int

    @property
    def active(self) -> bool:
        return self.revoked is None


@dataclass(frozen=True)
class NewKey:
    """A key to insert (its number is assigned by :meth:`KeyStoreMixin.add_keys`)."""

    identity: str
    algorithm: str
    secret: bytes
    salt: bytes


def _row(r) -> KeyRow:
    return KeyRow(r[0], r[1], r[2], bytes(r[3]), bytes(r[4]), r[5], r[6], r[7], r[8], r[9])


class KeyStoreMixin:
    """OSCORE key storage for a back end that provides ``_keys_tx(write)`` — a context manager
    yielding an object with ``execute(sql, params)`` and ``executemany`` inside one transaction,
    serialized against other key writers — and ``_mark``."""

    _mark: str = "?"

    def _keys_tx(self, write: bool) -> AbstractContextManager:  # pragma: no cover - per back end
        raise NotImplementedError

    def _keys_serialize(self, db) -> None:
        """Make concurrent :meth:`add_keys` wait for each other (SQLite: BEGIN IMMEDIATE does)."""

    def _ksql(self, template: str, **parts: str) -> str:
        return template.format(m=self._mark, **parts)

    def add_keys(self, keys: list[NewKey], created: str) -> list[int]:
        """Insert keys in one transaction and return their numbers (consecutive, above every number
        ever used: a revoked key keeps its number, so a kid never names two identities). Raises
        :class:`KeyStoreError` naming an identity that already has an active key (or appears twice)."""
        seen: set[str] = set()
        for k in keys:
            if k.identity in seen:
                raise KeyStoreError(f"{k.identity} appears twice")
            seen.add(k.identity)
        with self._keys_tx(write=True) as db:
            self._keys_serialize(db)
            first = db.execute(_NEXT).fetchone()[0]
            active = self._already_active(db, [k.identity for k in keys])
            if active:
                raise KeyStoreError(f"{active} already has an active key; revoke it first")
            rows = [
                (first + i, k.identity, k.algorithm, k.secret, k.salt, created) for i, k in enumerate(keys)
            ]
            db.executemany(self._ksql(_INSERT), rows)
        return [first + i for i in range(len(keys))]

    def _already_active(self, db, identities: list[str]) -> str | None:
        if len(identities) <= 16:
            for ident in identities:
                if db.execute(self._ksql(_ACTIVE_OF), (ident,)).fetchone() is not None:
                    return ident
            return None
        wanted = set(identities)
        for (ident,) in db.execute("SELECT identity FROM oscore_keys WHERE revoked IS NULL"):
            if ident in wanted:
                return ident
        return None

    def get_key(self, number: int) -> KeyRow | None:
        with self._keys_tx(write=False) as db:
            r = db.execute(self._ksql(_GET), (number,)).fetchone()
        return None if r is None else _row(r)

    def active_key(self, identity: str) -> KeyRow | None:
        """The active key of ``identity`` (at most one, by the partial unique index), else None."""
        with self._keys_tx(write=False) as db:
            r = db.execute(self._ksql(_GET_ACTIVE), (identity,)).fetchone()
        return None if r is None else _row(r)

    def get_keys(self, numbers: Iterable[int]) -> dict[int, KeyRow]:
        """:meth:`get_key` of several keys in one transaction (missing numbers are left out)."""
        numbers = list(numbers)
        out: dict[int, KeyRow] = {}
        with self._keys_tx(write=False) as db:
            for i in range(0, len(numbers), 500):
                chunk = numbers[i : i + 500]
                marks = ", ".join([self._mark] * len(chunk))
                for r in db.execute(f"SELECT {_COLUMNS} FROM oscore_keys WHERE number IN ({marks})", chunk):
                    out[r[0]] = _row(r)
        return out

    def iter_keys(self, include_revoked: bool = False) -> Iterator[KeyRow]:
        """Every key in number order, page by page."""
        where = "" if include_revoked else " AND revoked IS NULL"
        last = 0
        while True:
            with self._keys_tx(write=False) as db:
                rows = db.execute(self._ksql(_PAGE, where=where), (last, PAGE)).fetchall()
            yield from (_row(r) for r in rows)
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    def count_keys(self) -> int:
        """Active keys."""
        with self._keys_tx(write=False) as db:
            return db.execute(_COUNT).fetchone()[0]

    def revoke_keys(self, now: str, *, identity: str | None = None, number: int | None = None) -> list[tuple]:
        """Revoke the active key of ``identity`` or the key ``number``, and the identity's TLS client
        certificates; returns (number, identity) of each revoked key — (None, identity) when the
        identity had certificates only (empty: nothing active matched). Running servers refuse it from their
        next request on (the replay check below fails on a revoked row)."""
        if (identity is None) == (number is None):
            raise ValueError("give an identity or a key number")
        sql, arg = (_REVOKE_IDENTITY, identity) if identity is not None else (_REVOKE_NUMBER, number)
        with self._keys_tx(write=True) as db:
            done = [tuple(r) for r in db.execute(self._ksql(sql), (now, arg)).fetchall()]
            for ident in {i for _, i in done} | ({identity} if identity is not None else set()):
                # its TLS client certificates go with it: (None, identity) when only those existed
                certs = db.execute(self._ksql(_CERT_REVOKE), (now, ident)).rowcount
                if certs and not any(i == ident for _, i in done):
                    done.append((None, ident))
        return done

    # -- the TLS CA and client certificates (msgin5g.security.tls) -------------------------------------
    def tls_ca(self, make) -> tuple[str, str]:
        """The store's CA (certificate PEM, key PEM); ``make()`` creates one if there is none yet
        (two processes racing keep the first)."""
        with self._keys_tx(write=False) as db:
            row = db.execute(_CA_GET).fetchone()
        if row is not None:
            return row[0], row[1]
        cert, key = make()
        with self._keys_tx(write=True) as db:
            db.execute(self._ksql(_CA_INSERT), (cert, key))
            row = db.execute(_CA_GET).fetchone()
        return row[0], row[1]

    def add_cert(self, serial: int, identity: str, created: str) -> None:
        with self._keys_tx(write=True) as db:
            db.execute(self._ksql(_CERT_INSERT), (format(serial, "x"), identity, created))

    def cert_identity(self, serial: int) -> str | None:
        """The identity of an unrevoked certificate issued by this store, else None."""
        with self._keys_tx(write=False) as db:
            row = db.execute(self._ksql(_CERT_ACTIVE), (format(serial, "x"),)).fetchone()
        return None if row is None else row[0]

    def lease_sequence_numbers(self, number: int, count: int) -> tuple[int, int]:
        """Lease ``count`` server sender sequence numbers of key ``number`` (RFC 8613 App. B.1.1):
        returns ``[start, end)``, persisted before it is returned."""
        with self._keys_tx(write=True) as db:
            row = db.execute(self._ksql(_LEASE), (count, number)).fetchone()
        if row is None:
            raise KeyStoreError(f"no key number {number}")
        return row[0] - count, row[0]

    def replay_window(self, number: int) -> tuple[int, int, bool] | None:
        """(index, bits, active) of key ``number``'s shared replay window, None if no such key."""
        with self._keys_tx(write=False) as db:
            r = db.execute(self._ksql(_WINDOW), (number,)).fetchone()
        return None if r is None else (r[0], r[1], r[2] is None)

    def swap_replay_window(self, number: int, old: tuple[int, int], new: tuple[int, int]) -> bool:
        """Compare-and-set of the shared replay window: True when it still was ``old`` (and the key
        is active) and now is ``new``."""
        with self._keys_tx(write=True) as db:
            cur = db.execute(self._ksql(_CAS_WINDOW), (*new, number, *old))
            return cur.rowcount == 1

    def replay_windows(self, numbers: Iterable[int]) -> dict[int, tuple[int, int, bool]]:
        """:meth:`replay_window` of several keys in one transaction (missing keys are left out)."""
        numbers = list(numbers)
        out: dict[int, tuple[int, int, bool]] = {}
        with self._keys_tx(write=False) as db:
            for i in range(0, len(numbers), 500):
                chunk = numbers[i : i + 500]
                marks = ", ".join([self._mark] * len(chunk))
                sql = f"SELECT number, rw_index, rw_bits, revoked FROM oscore_keys WHERE number IN ({marks})"
                for r in db.execute(sql, chunk).fetchall():
                    out[r[0]] = (r[1], r[2], r[3] is None)
        return out

    def swap_replay_windows(self, swaps: list[tuple[int, tuple[int, int], tuple[int, int]]]) -> list[bool]:
        """:meth:`swap_replay_window` for each ``(number, old, new)`` in order, in one transaction
        (the claims of concurrent requests share one commit); one result per swap."""
        sql = self._ksql(_CAS_WINDOW)
        with self._keys_tx(write=True) as db:
            return [db.execute(sql, (*new, number, *old)).rowcount == 1 for number, old, new in swaps]

    def revoked_among(self, numbers: Iterable[int]) -> set[int]:
        """Which of the key ``numbers`` are revoked (or gone)."""
        numbers = list(numbers)
        gone: set[int] = set()
        with self._keys_tx(write=False) as db:
            for i in range(0, len(numbers), 500):
                chunk = numbers[i : i + 500]
                marks = ", ".join([self._mark] * len(chunk))
                sql = f"SELECT number FROM oscore_keys WHERE revoked IS NULL AND number IN ({marks})"
                alive = {r[0] for r in db.execute(sql, chunk).fetchall()}
                gone.update(n for n in chunk if n not in alive)
        return gone
