"""The Gateway UE's durable store of constrained UEs' requests (TS 24.538 6.2.2.x "cached/stored
configuration requests"; SPEC D9).

One SQLite file. A request is stored *before* the gateway acknowledges it, with everything
needed to answer it after a crash: the UE's endpoint, the token and message ID, the query, the
urgency and the receive time (wall clock). It stays until its answer has been delivered (the UE
acknowledged the separate response, rejected it, or it was given up), so a gateway killed with
``kill -9`` answers every stored request after its restart (its token and endpoint were stored).

WAL journal with ``synchronous=NORMAL``: a committed transaction survives the process being
killed (only a power failure may lose the last transactions). Writes come in batches — one
transaction per receive burst — so that storing costs little per request.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .wire import UeQuery

STORED, ANSWERED = "stored", "answered"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id          INTEGER PRIMARY KEY,
    host        TEXT    NOT NULL,
    port        INTEGER NOT NULL,
    mid         INTEGER NOT NULL,
    token       BLOB    NOT NULL,
    confirmable INTEGER NOT NULL,
    ue_uri      TEXT    NOT NULL,
    ue_vendor   TEXT,
    ue_type     TEXT,
    ue_snr      TEXT,
    urgent      INTEGER NOT NULL DEFAULT 0,
    block_num   INTEGER NOT NULL DEFAULT 0,
    block_szx   INTEGER NOT NULL DEFAULT 6,
    received    REAL    NOT NULL,
    state       TEXT    NOT NULL DEFAULT 'stored',
    oscore      BLOB,
    requester   TEXT,
    UNIQUE (host, port, mid, token)
);
"""


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """One constrained UE's request as stored (and restored after a restart)."""

    req_id: int
    host: str
    port: int
    mid: int
    token: bytes
    confirmable: bool
    query: UeQuery
    urgent: bool
    block_num: int
    block_szx: int
    received: float  # wall clock (time.time())
    state: str = STORED
    oscore: bytes | None = None  # OSCORE request binding its answer is protected with (SPEC D12)
    requester: str | None = None  # authenticated identity that asked (SPEC D13: who a repeat supersedes)

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request about to be stored (no id yet)."""

    host: str
    port: int
    mid: int
    token: bytes
    confirmable: bool
    query: UeQuery
    urgent: bool = False
    block_num: int = 0
    block_szx: int = 6
    received: float = 0.0
    oscore: bytes | None = None
    requester: str | None = None


class RequestQueue:
    """Durable request store on one SQLite file (one connection, used from the event loop)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(requests)")}
        if "oscore" not in columns:  # a store written before OSCORE support
            self._db.execute("ALTER TABLE requests ADD COLUMN oscore BLOB")
        if "requester" not in columns:  # a store written before SPEC D13
            self._db.execute("ALTER TABLE requests ADD COLUMN requester TEXT")
        # ids are handed out here, so that a whole burst goes in with one executemany
        self._next_id = self._db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM requests").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def add_many(self, requests: Sequence[NewRequest]) -> list[StoredRequest | None]:
        """Store a burst of requests in one transaction. A request already stored (same
        endpoint, message ID and token: a retransmission, possibly from before a restart) gives
        None in its place."""
        now = time.time()
        stored = [
            StoredRequest(
                self._next_id + i, r.host, r.port, r.mid, r.token, r.confirmable, r.query, r.urgent,
                r.block_num, r.block_szx, r.received or now, STORED, r.oscore, r.requester,
            )
            for i, r in enumerate(requests)
        ]  # fmt: skip
        self._next_id += len(stored)
        rows = [
            (
                st.req_id, st.host, st.port, st.mid, st.token, int(st.confirmable), st.query.ue_uri,
                st.query.ue_vendor, st.query.ue_type, st.query.ue_snr, int(st.urgent), st.block_num,
                st.block_szx, st.received, st.oscore, st.requester,
            )
            for st in stored
        ]  # fmt: skip
        cur = self._db.cursor()
        cur.execute("BEGIN")
        try:
            before = self._db.total_changes
            cur.executemany(
                "INSERT OR IGNORE INTO requests (id, host, port, mid, token, confirmable, ue_uri,"
                " ue_vendor, ue_type, ue_snr, urgent, block_num, block_szx, received, oscore, requester)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            inserted = self._db.total_changes - before
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        if inserted == len(stored):
            return list(stored)
        # some were already stored (rare): find out which ones went in
        present = set()
        for i in range(0, len(stored), 500):
            ids = [st.req_id for st in stored[i : i + 500]]
            marks = ",".join("?" * len(ids))
            query = f"SELECT id FROM requests WHERE id IN ({marks})"
            present.update(r[0] for r in self._db.execute(query, ids))
        return [st if st.req_id in present else None for st in stored]

    def mark_answered(self, req_ids: Iterable[int]) -> None:
        """The answer went out (not yet acknowledged): kept until :meth:`remove_many`."""
        self._db.executemany("UPDATE requests SET state='answered' WHERE id=?", ((i,) for i in req_ids))

    def remove_many(self, req_ids: Iterable[int]) -> None:
        """Delivered (or given up): forget these requests."""
        cur = self._db.cursor()
        cur.execute("BEGIN")
        cur.executemany("DELETE FROM requests WHERE id=?", ((i,) for i in req_ids))
        cur.execute("COMMIT")

    def pending(self) -> list[StoredRequest]:
        """Every request not yet delivered, oldest first (restart: each is answered again)."""
        rows = self._db.execute(
            "SELECT id, host, port, mid, token, confirmable, ue_uri, ue_vendor, ue_type, ue_snr, urgent,"
            " block_num, block_szx, received, state, oscore, requester FROM requests ORDER BY received, id"
        ).fetchall()
        return [
            StoredRequest(
                r[0],
                r[1],
                r[2],
                r[3],
                bytes(r[4]),
                bool(r[5]),
                UeQuery(r[6], r[7], r[8], r[9]),
                bool(r[10]),
                r[11],
                r[12],
                r[13],
                r[14],
                None if r[15] is None else bytes(r[15]),
                r[16],
            )
            for r in rows
        ]

    def count(self, state: str | None = None) -> int:
        if state is None:
            return self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM requests WHERE state=?", (state,)).fetchone()[0]
