"""OSCORE keys alone in a SQLite file: the Gateway UE's keys for its constrained UEs, in its state
database (TS 24.546 6.2.1.2; SPEC D12).

The gateway keeps its UEs' stored requests in one SQLite file (:mod:`msgin5g.gateway.queue`); its
keys for the MSGin5G-6 leg are rows of the same file — the ``oscore_keys`` table (and the TLS
tables, unused there) of :mod:`.keys`, with the same SQL as the SCM-S's store, so that ``msgin5g
keys import/add/list/revoke`` and the server-side keyring (:class:`msgin5g.security.storekeys.
StoreKeyring`) work on it unchanged. No document tables: the file stays the gateway's.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from .keys import SQLITE_KEYS_DDL, KeyStoreMixin
from .sqlite import BUSY_TIMEOUT_MS, locked_transaction

#: the table that marks a Gateway UE's state database (:mod:`msgin5g.gateway.queue`)
GATEWAY_TABLE = "requests"


def is_gateway_state(path: str | Path) -> bool:
    """Whether ``path`` is an existing SQLite file holding a Gateway UE's stored requests and no
    SCM-S documents (so ``keys --db`` opens it as a key store only)."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return False
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return False
    finally:
        db.close()
    return GATEWAY_TABLE in names and "docs" not in names


class SqliteKeyStore(KeyStoreMixin):
    """The key methods of :class:`~.keys.KeyStoreMixin` on a SQLite file of their own (or shared
    with a gateway's request queue: WAL, busy timeout and ``BEGIN IMMEDIATE`` for writes, like
    :class:`~.sqlite.SqliteStore`)."""

    _mark = "?"

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            for pragma in (f"busy_timeout = {BUSY_TIMEOUT_MS}", "journal_mode = WAL", "synchronous = NORMAL"):
                self._db.execute(f"PRAGMA {pragma}")
            with self._tx(write=True) as db:
                for stmt in SQLITE_KEYS_DDL:
                    db.execute(stmt)
        except BaseException:
            self._db.close()
            raise

    def _tx(self, write: bool):
        return locked_transaction(self._lock, self._db, write)

    def _keys_tx(self, write: bool):
        return self._tx(write=write)

    def close(self) -> None:
        with self._lock:
            self._db.close()
