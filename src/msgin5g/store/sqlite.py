"""SQLite document store: the embedded default back end of the SCM-S (TS 24.546 C.3; SPEC D4, D6).

Layout (schema version in ``PRAGMA user_version``):

- ``docs(seq, service_id, doc_id, version, vendor, body)`` — one row per UeConfigDoc, the body as
  the CBOR map that travels on the wire (unknown keys survive untouched); ``vendor`` mirrors the
  ``ueVendor`` extension key for admin queries.
- ``doc_keys(service_id, kind, key, wide, lo, hi, seq)`` — the index entries of
  :func:`~msgin5g.store.base.index_rows`, clustered (WITHOUT ROWID) so that a UE lookup is a few
  B-tree seeks: ``wide`` separates single serial numbers (``lo = hi``, found by equality) from
  intervals, so a TAC with many listed serial numbers is never scanned. Entries point at the
  document by its integer ``seq`` (creation order), which keeps the index small and bulk inserts
  append-only.
- ``gateways(gateway_id, coverage)`` — the gateway registry (SPEC D6, D12), coverage as CBOR.
- ``profiles`` — VAL user profiles (TS 24.546 C.2; SPEC D16), see :mod:`msgin5g.store.profiles`.
- ``oscore_keys`` — OSCORE keys and their shared state (SPEC D12), see :mod:`msgin5g.store.keys`.

Several SCM-S processes may share one file: WAL journal, ``busy_timeout`` and ``BEGIN IMMEDIATE``
for every write, so writers queue instead of failing. Inside one process a single connection is
guarded by a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import cbor2

from ..applicability import matches_any
from ..model import VENDOR_KEY, UeIdentity
from . import shared
from .base import (
    DocNotFound,
    Store,
    StoredDoc,
    StoreError,
    VersionMismatch,
    index_rows,
    new_doc_id,
    with_id,
)
from .keys import SQLITE_KEYS_DDL, KeyStoreMixin
from .profiles import SQLITE_DDL, ProfileStoreMixin

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000


@contextmanager
def locked_transaction(
    lock: threading.Lock, db: sqlite3.Connection, write: bool
) -> Iterator[sqlite3.Connection]:
    """One transaction on ``db`` under the process lock; writers take the file lock up front
    (IMMEDIATE) so that concurrent processes wait on busy_timeout rather than fail on lock upgrade."""
    with lock:
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


IMPORT_CHUNK = 20_000  # documents per executemany inside the single import transaction
MANY_CHUNK = 5_000  # UEs per batched lookup of candidates_many
PAGE = 1_000  # documents per page of iter_all

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    seq        INTEGER PRIMARY KEY,
    service_id TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    version    INTEGER NOT NULL,
    vendor     TEXT,
    body       BLOB NOT NULL,
    UNIQUE (service_id, doc_id)
);
CREATE INDEX IF NOT EXISTS docs_vendor ON docs (service_id, vendor) WHERE vendor IS NOT NULL;
CREATE TABLE IF NOT EXISTS doc_keys (
    service_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    wide       INTEGER NOT NULL,
    lo         INTEGER NOT NULL,
    hi         INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (service_id, kind, key, wide, lo, hi, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS doc_keys_seq ON doc_keys (seq);
CREATE TABLE IF NOT EXISTS gateways (
    gateway_id TEXT PRIMARY KEY,
    coverage   BLOB NOT NULL
);
"""

_SHARED = shared.sql("?")
_INSERT_DOC = "INSERT INTO docs (seq, service_id, doc_id, version, vendor, body) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_KEY = "INSERT INTO doc_keys (service_id, kind, key, wide, lo, hi, seq) VALUES (?, ?, ?, ?, ?, ?, ?)"


def vendor_of(doc: dict) -> str | None:
    """The ``ueVendor`` extension key, kept in a column for admin queries (SPEC D4)."""
    v = doc.get(VENDOR_KEY)
    return v if isinstance(v, str) else None


def key_rows(service_id: str, seq: int, doc: dict) -> list[tuple]:
    """doc_keys rows of one document: index_rows (TS 24.546 7.2.5) plus the ``wide`` flag."""
    return [(service_id, kind, key, int(hi > lo), lo, hi, seq) for kind, key, lo, hi in set(index_rows(doc))]


def candidates_sql(service_id: str, ue: UeIdentity, mark: str = "?") -> tuple[str, list]:
    """The lookup of :meth:`Store.candidates` for one UE (TS 24.546 7.2.5; SPEC D3, D4): URI,
    serial number under TAC (a point by equality, an interval by range), the whole TAC when the
    serial number is unknown, and domain-wide — each a seek on the doc_keys primary index.
    Returns (sql, parameters); ``mark`` is the driver's placeholder (PostgreSQL shares this)."""
    sel = f"SELECT seq FROM doc_keys WHERE service_id = {mark} AND "
    parts = [sel + "kind = 'all' AND key = ''"]
    params: list = [service_id]
    if ue.uri is not None:
        parts.append(sel + f"kind = 'uri' AND key = {mark}")
        params += [service_id, ue.uri]
    if ue.tac is not None and ue.snr is not None:
        parts.append(sel + f"kind = 'tac' AND key = {mark} AND wide = 0 AND lo = {mark}")
        parts.append(sel + f"kind = 'tac' AND key = {mark} AND wide = 1 AND lo <= {mark} AND hi >= {mark}")
        params += [service_id, ue.tac, ue.snr, service_id, ue.tac, ue.snr, ue.snr]
    elif ue.tac is not None:
        parts.append(sel + f"kind = 'tac' AND key = {mark}")
        params += [service_id, ue.tac]
    sql = (
        "SELECT doc_id, version, body FROM docs WHERE seq IN (" + " UNION ALL ".join(parts) + ") ORDER BY seq"
    )
    return sql, params


def query_any_sql(
    service_id: str, uri: str | None, tac: str | None, snr: int | None, vendor: str | None, mark: str = "?"
) -> tuple[str, list]:
    """The index superset of an admin any-match query (Table C.3.1.2.2.3.1-2; SPEC D4), at least
    one parameter given; ``matches_any`` then keeps the exact answer."""
    sel = f"SELECT seq FROM doc_keys WHERE service_id = {mark} AND "
    parts: list[str] = []
    params: list = []
    if uri is not None:
        parts.append(sel + f"kind = 'uri' AND key = {mark}")
        params += [service_id, uri]
    if tac is not None:
        parts.append(sel + f"kind = 'tac' AND key = {mark}")
        params += [service_id, tac]
    if snr is not None:
        parts.append(sel + f"kind = 'tac' AND lo <= {mark} AND hi >= {mark}")
        params += [service_id, snr, snr]
    if vendor is not None:
        parts.append(f"SELECT seq FROM docs WHERE service_id = {mark} AND vendor = {mark}")
        params += [service_id, vendor]
    sql = "SELECT doc_id, version, body FROM docs WHERE seq IN (" + " UNION ".join(parts) + ") ORDER BY seq"
    return sql, params


# candidates_many: one join per kind of match between the chunk of UEs (a JSON array of
# [uri, tac, snr] expanded by json_each) and doc_keys; CROSS JOIN keeps the UEs as the outer loop.
MANY_KEYS_SQL = """
WITH q(i, uri, tac, snr) AS (
    SELECT key, json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
    FROM json_each(:q)
)
SELECT q.i, k.seq FROM q CROSS JOIN doc_keys AS k
    WHERE k.service_id = :s AND k.kind = 'uri' AND k.key = q.uri
UNION ALL
SELECT q.i, k.seq FROM q CROSS JOIN doc_keys AS k
    WHERE q.snr IS NOT NULL AND k.service_id = :s AND k.kind = 'tac' AND k.key = q.tac
      AND k.wide = 0 AND k.lo = q.snr
UNION ALL
SELECT q.i, k.seq FROM q CROSS JOIN doc_keys AS k
    WHERE q.snr IS NOT NULL AND k.service_id = :s AND k.kind = 'tac' AND k.key = q.tac
      AND k.wide = 1 AND k.lo <= q.snr AND k.hi >= q.snr
UNION ALL
SELECT q.i, k.seq FROM q CROSS JOIN doc_keys AS k
    WHERE q.snr IS NULL AND k.service_id = :s AND k.kind = 'tac' AND k.key = q.tac
"""


class SqliteStore(KeyStoreMixin, ProfileStoreMixin, Store):
    """UeConfigDoc and ProfileDoc store in one SQLite file (TS 24.546 C.2, C.3; SPEC D4, D6, D12, D16)."""

    _mark = "?"

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            for pragma in (
                f"busy_timeout = {BUSY_TIMEOUT_MS}",
                "journal_mode = WAL",
                "synchronous = NORMAL",
                "cache_size = -16384",  # 16 MiB page cache; the OS page cache holds the rest
                "temp_store = MEMORY",
                "journal_size_limit = 67108864",  # give the disk back after a big import
            ):
                self._db.execute(f"PRAGMA {pragma}")
            self._create_schema()
        except BaseException:
            self._db.close()
            raise

    def _create_schema(self) -> None:
        with self._tx(write=True) as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {version} is newer than {SCHEMA_VERSION}")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            for stmt in (*SQLITE_DDL, *SQLITE_KEYS_DDL, *shared.SQLITE_SCHEMA):
                db.execute(stmt)
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _tx(self, write: bool):
        return locked_transaction(self._lock, self._db, write)

    def _profile_tx(self, write: bool):
        return self._tx(write=write)

    def _keys_tx(self, write: bool):
        return self._tx(write=write)

    def _select(self, sql: str, args) -> list:
        """One SELECT under the process lock. In autocommit mode a single statement is its own
        transaction, so the hot read paths skip the BEGIN/COMMIT round trips of :meth:`_tx`."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- documents -------------------------------------------------------------------------------
    @staticmethod
    def _stored(service_id: str, doc_id: str, version: int, body: bytes) -> StoredDoc:
        return StoredDoc(service_id, doc_id, version, cbor2.loads(body))

    @staticmethod
    def _next_seq(db: sqlite3.Connection) -> int:
        return db.execute("SELECT coalesce(max(seq), 0) + 1 FROM docs").fetchone()[0]

    @staticmethod
    def _current(
        db: sqlite3.Connection, service_id: str, doc_id: str, expected: int | None
    ) -> tuple[int, int]:
        """(seq, version) of a document, checking the caller's version (→ 4.04 / 4.12)."""
        row = db.execute(
            "SELECT seq, version FROM docs WHERE service_id = ? AND doc_id = ?", (service_id, doc_id)
        ).fetchone()
        if row is None:
            raise DocNotFound(f"{service_id}/{doc_id}")
        if expected is not None and row[1] != expected:
            raise VersionMismatch(f"{service_id}/{doc_id}: version {row[1]}, expected {expected}")
        return row

    def create(self, service_id: str, doc: dict) -> StoredDoc:
        """POST on the collection (TS 24.546 C.3.2.2.3.2): a fresh ueConfigDocId, version 1."""
        with self._tx(write=True) as db:
            seq = self._next_seq(db)
            while True:
                doc_id = new_doc_id()
                body = with_id(doc, doc_id)
                try:
                    db.execute(_INSERT_DOC, (seq, service_id, doc_id, 1, vendor_of(body), cbor2.dumps(body)))
                except sqlite3.IntegrityError:  # id collision: draw again
                    continue
                break
            db.executemany(_INSERT_KEY, key_rows(service_id, seq, body))
        return StoredDoc(service_id, doc_id, 1, body)

    def get(self, service_id: str, doc_id: str) -> StoredDoc | None:
        """GET on an individual document (TS 24.546 C.3.3.3.1)."""
        rows = self._select(
            "SELECT version, body FROM docs WHERE service_id = ? AND doc_id = ?", (service_id, doc_id)
        )
        return self._stored(service_id, doc_id, *rows[0]) if rows else None

    def replace(
        self, service_id: str, doc_id: str, doc: dict, expected_version: int | None = None
    ) -> StoredDoc:
        """PUT on an individual document (TS 24.546 C.3.3.3.2); compare-and-set on the version."""
        body = with_id(doc, doc_id)
        with self._tx(write=True) as db:
            seq, version = self._current(db, service_id, doc_id, expected_version)
            db.execute(
                "UPDATE docs SET version = ?, vendor = ?, body = ? WHERE seq = ?",
                (version + 1, vendor_of(body), cbor2.dumps(body), seq),
            )
            db.execute("DELETE FROM doc_keys WHERE seq = ?", (seq,))
            db.executemany(_INSERT_KEY, key_rows(service_id, seq, body))
        return StoredDoc(service_id, doc_id, version + 1, body)

    def delete(self, service_id: str, doc_id: str, expected_version: int | None = None) -> StoredDoc:
        """DELETE on an individual document (TS 24.546 C.3.3.3.3); returns what was deleted."""
        with self._tx(write=True) as db:
            seq, _version = self._current(db, service_id, doc_id, expected_version)
            version, body = db.execute(
                "DELETE FROM docs WHERE seq = ? RETURNING version, body", (seq,)
            ).fetchone()
            db.execute("DELETE FROM doc_keys WHERE seq = ?", (seq,))
        return self._stored(service_id, doc_id, version, body)

    def candidates(self, service_id: str, ue: UeIdentity) -> list[StoredDoc]:
        """Index lookup for one UE (TS 24.546 7.2.5; SPEC D3, D4); applicability decides the rest."""
        return [self._stored(service_id, *row) for row in self._select(*candidates_sql(service_id, ue))]

    def candidates_many(self, service_id: str, ues: list[UeIdentity]) -> list[list[StoredDoc]]:
        """Batched :meth:`candidates` for a bulk GET (SPEC D6): per chunk of UEs one join of a
        json_each list against doc_keys, then one fetch of the distinct documents. Every UE gets
        its own decoded copies, as from :meth:`candidates`."""
        out: list[list[StoredDoc]] = []
        with self._tx(write=False) as db:
            domain = [
                seq
                for (seq,) in db.execute(
                    "SELECT seq FROM doc_keys WHERE service_id = ? AND kind = 'all' AND key = ''",
                    (service_id,),
                )
            ]
            for start in range(0, len(ues), MANY_CHUNK):
                chunk = ues[start : start + MANY_CHUNK]
                hits: list[set[int]] = [set(domain) for _ in chunk]
                q = json.dumps([[ue.uri, ue.tac, ue.snr] for ue in chunk])
                for i, seq in db.execute(MANY_KEYS_SQL, {"s": service_id, "q": q}):
                    hits[i].add(seq)
                wanted = json.dumps(sorted(set().union(*hits)))
                rows = {
                    seq: (doc_id, version, body)
                    for seq, doc_id, version, body in db.execute(
                        "SELECT seq, doc_id, version, body FROM docs "
                        "WHERE seq IN (SELECT value FROM json_each(?))",
                        (wanted,),
                    )
                }
                out.extend([self._stored(service_id, *rows[seq]) for seq in sorted(seqs)] for seqs in hits)
        return out

    def query_any(
        self,
        service_id: str,
        *,
        uri: str | None = None,
        tac: str | None = None,
        snr: int | None = None,
        vendor: str | None = None,
    ) -> list[StoredDoc]:
        """Admin collection GET without ue-uri (Table C.3.1.2.2.3.1-2 literally; SPEC D4): any
        given parameter matches, none → every document. Indexes give a superset, ``matches_any``
        the exact answer."""
        if uri is None and tac is None and snr is None and vendor is None:
            return list(self.iter_all(service_id))
        sql, params = query_any_sql(service_id, uri, tac, snr, vendor)
        with self._tx(write=False) as db:
            rows = db.execute(sql, params).fetchall()
        docs = (self._stored(service_id, *row) for row in rows)
        return [d for d in docs if matches_any(d.doc, uri=uri, tac=tac, snr=snr, vendor=vendor)]

    def iter_all(self, service_id: str) -> Iterator[StoredDoc]:
        """Every document of the service in creation order, fetched page by page (no lock is held
        between pages, so a long iteration never blocks the server)."""
        last = 0
        while True:
            with self._tx(write=False) as db:
                rows = db.execute(
                    "SELECT seq, doc_id, version, body FROM docs WHERE service_id = ? AND seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (service_id, last, PAGE),
                ).fetchall()
            for _seq, doc_id, version, body in rows:
                yield self._stored(service_id, doc_id, version, body)
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    def count(self, service_id: str) -> int:
        with self._tx(write=False) as db:
            return db.execute("SELECT count(*) FROM docs WHERE service_id = ?", (service_id,)).fetchone()[0]

    def import_docs(self, service_id: str, docs: Iterable[dict]) -> list[str]:
        """Bulk provisioning: every document under a fresh id in ONE transaction, all or nothing
        (per-UE documents at scale, SPEC D6). Rows are prepared and written in chunks."""
        ids: list[str] = []
        it = iter(docs)
        with self._tx(write=True) as db:
            seq = self._next_seq(db)
            while True:
                doc_rows: list[tuple] = []
                keys: list[tuple] = []
                for doc in it:
                    doc_id = new_doc_id()
                    body = with_id(doc, doc_id)
                    doc_rows.append((seq, service_id, doc_id, 1, vendor_of(body), cbor2.dumps(body)))
                    keys += key_rows(service_id, seq, body)
                    ids.append(doc_id)
                    seq += 1
                    if len(doc_rows) >= IMPORT_CHUNK:
                        break
                if not doc_rows:
                    break
                db.executemany(_INSERT_DOC, doc_rows)
                db.executemany(_INSERT_KEY, keys)
        return ids

    # -- gateway registry (SPEC D6, D12) ------------------------------------------------------------
    def set_gateway(self, gateway_id: str, coverage: dict) -> None:
        with self._tx(write=True) as db:
            db.execute(
                "INSERT INTO gateways (gateway_id, coverage) VALUES (?, ?) "
                "ON CONFLICT (gateway_id) DO UPDATE SET coverage = excluded.coverage",
                (gateway_id, cbor2.dumps(coverage)),
            )

    def get_gateway(self, gateway_id: str) -> dict | None:
        with self._tx(write=False) as db:
            row = db.execute("SELECT coverage FROM gateways WHERE gateway_id = ?", (gateway_id,)).fetchone()
        return None if row is None else cbor2.loads(row[0])

    def list_gateways(self) -> dict[str, dict]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT gateway_id, coverage FROM gateways ORDER BY gateway_id").fetchall()
        return {gid: cbor2.loads(cov) for gid, cov in rows}

    def delete_gateway(self, gateway_id: str) -> bool:
        with self._tx(write=True) as db:
            return db.execute("DELETE FROM gateways WHERE gateway_id = ?", (gateway_id,)).rowcount > 0

    # -- shared state (SPEC D14; :mod:`.shared`) ------------------------------------------------------
    def change_cursor(self) -> int:
        return self._select(_SHARED["cursor"], ())[0][0]

    def changes_since(self, cursor: int, limit: int = 1000) -> list[shared.DocChange]:
        return [shared.change_of(r) for r in self._select(_SHARED["since"], (cursor, limit))]

    def prune_changes(self, upto: int) -> None:
        with self._tx(write=True) as db:
            db.execute(_SHARED["prune"], (upto,))

    def put_bulk_answer(self, requester: str, flag: str, qhash: bytes, reply: bytes, expires: float) -> None:
        with self._tx(write=True) as db:
            db.execute(_SHARED["expire_answers"], (expires - 3600,))  # stale rows never pile up
            db.execute(_SHARED["put_answer"], (requester, flag, qhash, reply, expires))

    def get_bulk_answer(self, requester: str, flag: str, now: float) -> tuple[bytes, bytes] | None:
        rows = self._select(_SHARED["get_answer"], (requester, flag, now))
        return (bytes(rows[0][0]), bytes(rows[0][1])) if rows else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
