"""State that every SCM-S process and node must see: the change feed and kept bulk answers (SPEC D14).

Two tables live next to the documents, in the same SQLite file or PostgreSQL database:

- ``doc_changes(seq, api, service_id, doc_id, version, deleted)`` — one row per replaced or deleted
  UeConfigDoc (``api`` ``su-uc``) or ProfileDoc (``su-up``), written **by a database trigger in
  the same transaction as the change**, so no write path can forget it and a change is visible to
  other processes exactly when it commits. Creation needs no row: nobody can observe a document
  before it exists (RFC 7641 observations are on individual documents, TS 24.546 C.2.1.2.3,
  C.3.1.2.3). On PostgreSQL the trigger also issues ``NOTIFY msgin5g_changes`` (delivered at
  commit; identical notifications of one transaction collapse into one), so processes on other
  nodes learn of it at once; notifications are not stored, so a listener re-reads the table from
  its cursor after every (re)connect. On SQLite the processes of one machine poll the table from
  their cursor (an index seek).
- ``bulk_answers(requester, flag, qhash, reply, expires)`` — the rendered answer of a bulk GET kept
  for its (requester, bulk configuration id) (SPEC D6, D7 b), so that a Block2 follow-up or an
  RFC 9177 recovery request naming only the flag is served by whichever process it reaches.
  ``expires`` is wall-clock time (seconds since the epoch) because several nodes compare it;
  on PostgreSQL the table is UNLOGGED (a crash loses only answers a gateway can fetch again).

The SQL here is shared by both back ends (``{mark}`` is the placeholder style); the triggers are
created after the ``docs`` and ``profiles`` tables.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How many change rows to keep; older ones are pruned (a process that fell that far behind
#: re-triggers every observation it has, see :func:`msgin5g.server.changefeed.plan_notifications`).
KEEP_CHANGES = 100_000
NOTIFY_CHANNEL = "msgin5g_changes"


@dataclass(frozen=True, slots=True)
class DocChange:
    """One committed replace or delete of a document, in commit order (``seq``)."""

    seq: int
    api: str  # "su-uc" (UeConfigDoc) or "su-up" (ProfileDoc)
    service_id: str
    doc_id: str
    version: int
    deleted: bool


SQLITE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS doc_changes (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        api        TEXT NOT NULL,
        service_id TEXT NOT NULL,
        doc_id     TEXT NOT NULL,
        version    INTEGER NOT NULL,
        deleted    INTEGER NOT NULL)""",
    *(
        f"""CREATE TRIGGER IF NOT EXISTS {table}_{event.lower()}d AFTER {event} ON {table} BEGIN
            INSERT INTO doc_changes (api, service_id, doc_id, version, deleted)
            VALUES ('{api}', {row}.service_id, {row}.doc_id, {row}.version, {int(event == "DELETE")});
        END"""
        for table, api in (("docs", "su-uc"), ("profiles", "su-up"))
        for event, row in (("UPDATE", "NEW"), ("DELETE", "OLD"))
    ),
    """CREATE TABLE IF NOT EXISTS bulk_answers (
        requester TEXT NOT NULL,
        flag      TEXT NOT NULL,
        qhash     BLOB NOT NULL,
        reply     BLOB NOT NULL,
        expires   REAL NOT NULL,
        PRIMARY KEY (requester, flag))""",
]

POSTGRES_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS doc_changes (
        seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        api        text NOT NULL,
        service_id text NOT NULL,
        doc_id     text NOT NULL,
        version    integer NOT NULL,
        deleted    boolean NOT NULL)""",
    f"""CREATE OR REPLACE FUNCTION msgin5g_doc_changed() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO doc_changes (api, service_id, doc_id, version, deleted)
            VALUES (TG_ARGV[0], OLD.service_id, OLD.doc_id, OLD.version, true);
        ELSE
            INSERT INTO doc_changes (api, service_id, doc_id, version, deleted)
            VALUES (TG_ARGV[0], NEW.service_id, NEW.doc_id, NEW.version, false);
        END IF;
        PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
        RETURN NULL;
    END $$ LANGUAGE plpgsql""",
    *(
        stmt
        for table, api in (("docs", "su-uc"), ("profiles", "su-up"))
        for stmt in (
            f"DROP TRIGGER IF EXISTS {table}_changed ON {table}",
            f"""CREATE TRIGGER {table}_changed AFTER UPDATE OR DELETE ON {table}
                FOR EACH ROW EXECUTE FUNCTION msgin5g_doc_changed('{api}')""",
        )
    ),
    """CREATE UNLOGGED TABLE IF NOT EXISTS bulk_answers (
        requester text NOT NULL,
        flag      text NOT NULL,
        qhash     bytea NOT NULL,
        reply     bytea NOT NULL,
        expires   double precision NOT NULL,
        PRIMARY KEY (requester, flag))""",
]


def sql(mark: str) -> dict[str, str]:
    """The statements of the shared state with ``mark`` as the parameter placeholder."""
    m = mark
    return {
        "cursor": "SELECT coalesce(max(seq), 0) FROM doc_changes",
        "since": (
            "SELECT seq, api, service_id, doc_id, version, deleted FROM doc_changes "
            f"WHERE seq > {m} ORDER BY seq LIMIT {m}"
        ),
        "prune": f"DELETE FROM doc_changes WHERE seq <= {m}",
        "put_answer": (
            "INSERT INTO bulk_answers (requester, flag, qhash, reply, expires) "
            f"VALUES ({m}, {m}, {m}, {m}, {m}) ON CONFLICT (requester, flag) DO UPDATE SET "
            "qhash = excluded.qhash, reply = excluded.reply, expires = excluded.expires"
        ),
        "get_answer": (
            f"SELECT qhash, reply FROM bulk_answers WHERE requester = {m} AND flag = {m} AND expires >= {m}"
        ),
        "expire_answers": f"DELETE FROM bulk_answers WHERE expires < {m}",
    }


def change_of(row) -> DocChange:
    seq, api, service_id, doc_id, version, deleted = row
    return DocChange(int(seq), api, service_id, doc_id, int(version), bool(deleted))
