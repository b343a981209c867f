"""Shared pytest fixtures.

Document stores (SPEC D4, D6): ``store_url`` / ``store`` run a test once per back end — SQLite in a
file under ``tmp_path`` and PostgreSQL in a scratch database created for the session (``pg_url``).
PostgreSQL is reached at ``MSGIN5G_TEST_PG_ADMIN`` (default: postgres on loopback, trust auth); when
it is unreachable the PostgreSQL cases are skipped locally and fail under CI (env var ``CI`` set).
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import NoReturn

import psycopg
import pytest

from msgin5g.store import Store, open_store

# Several tests stop a real process with SIGINT (Ctrl-C) and check that it exits 130 and cleans up.
# A suite started in the background by a shell without job control inherits SIGINT *ignored*, and
# so would every process it starts: the SIGINT would do nothing. Ctrl-C behaviour is what is under
# test, so the suite gives its children the default disposition whatever launched it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

PG_ADMIN_URL = os.environ.get("MSGIN5G_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


# -- document stores ---------------------------------------------------------------------------------
def _pg_unavailable(reason: str) -> NoReturn:
    message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _with_dbname(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a scratch database ``msgin5g_test_<random>``, dropped at the end of the session."""
    dbname = f"msgin5g_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{dbname}"')
    except psycopg.OperationalError as exc:
        _pg_unavailable(str(exc).strip())
    try:
        yield _with_dbname(PG_ADMIN_URL, dbname)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _pg_clean(url: str) -> None:
    """Empty every table of the scratch database so each test starts from a blank store."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        ]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A database URL for an empty store, once per back end."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = request.getfixturevalue("pg_url")
    _pg_clean(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open, empty store (``open_store``), closed after the test."""
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()
